package ctl_test

import (
	"testing"

	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/clusterstate"
	"github.com/pharos-ha/pharos/internal/ctl"
)

func TestSummary(t *testing.T) {
	member := func(name string, role cluster.Role, state string) cluster.Member {
		return cluster.Member{Name: name, Role: role, State: state, Host: "127.0.0.1", Port: 5432}
	}
	tests := []struct {
		name    string
		members []cluster.Member
		expect  []string
		want    string
	}{
		{name: "nothing yet", expect: []string{"n1", "n2"}, want: "n1 (no record yet) · n2 (no record yet)"},
		{
			name: "forming",
			members: []cluster.Member{
				member("n2", cluster.RoleStarting, "creating replica 62%"),
				member("n1", cluster.RolePrimary, "running"),
				member("n3", cluster.RoleStarting, "waiting: leader n1 is not a running primary yet"),
			},
			expect: []string{"n1", "n2", "n3"},
			want:   "n1 primary running · n2 creating replica 62% · n3 waiting: leader n1 is not a running primary yet",
		},
		{
			name: "one not published, one unexpected",
			members: []cluster.Member{
				member("n1", cluster.RoleReplica, "streaming from n4"),
				member("n4", cluster.RolePrimary, "running"),
			},
			expect: []string{"n1", "n2"},
			want:   "n1 replica streaming from n4 · n2 (no record yet) · n4 primary running",
		},
		{
			name: "role alone when the state adds nothing",
			members: []cluster.Member{
				member("n1", cluster.RoleStopped, "stopped"),
				member("n2", cluster.RoleDemoted, ""),
				member("n3", cluster.RoleStarting, ""),
			},
			want: "n1 stopped · n2 demoted · n3 starting",
		},
		{name: "empty", want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := clusterstate.ClusterStatus{Members: tt.members}
			if got := ctl.Summary(st, tt.expect...); got != tt.want {
				t.Errorf("Summary = %q\nwant      %q", got, tt.want)
			}
		})
	}
}
