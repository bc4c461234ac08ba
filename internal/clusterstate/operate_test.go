package clusterstate_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/clusterstate"
	"github.com/pharos-ha/pharos/internal/ctl"
)

// TestRequestSwitchoverLagLimit: a request that leaves the limit to the
// cluster gets the one the leader will apply — the config key's
// maximum_lag_on_failover, else the caller's default — and an explicit
// limit wins over both.
func TestRequestSwitchoverLagLimit(t *testing.T) {
	cli := etcd(t)
	k := keys(t, "lag")
	now := time.Now()
	putMember(t, cli, k, cluster.Member{Name: "n1", Role: cluster.RolePrimary, State: "running", Host: "127.0.0.1", Port: 5432, LagBytes: ptr(int64(0)), UpdatedAt: now})
	putMember(t, cli, k, cluster.Member{Name: "n2", Role: cluster.RoleReplica, State: "streaming from n1", Host: "127.0.0.1", Port: 5433, LagBytes: ptr(int64(2 << 20)), UpdatedAt: now})
	put(t, cli, k.Leader(), "n1")
	ask := func(maxLag int64) error {
		err := clusterstate.RequestSwitchover(t.Context(), cli, k, clusterstate.SwitchoverRequest{Candidate: "n2", MaxLag: maxLag, DefaultMaxLag: 1 << 20}, now)
		if err == nil {
			if err := clusterstate.CancelSwitchover(t.Context(), cli, k); err != nil {
				t.Fatal(err)
			}
		}
		return err
	}
	refusedForLag := func(err error) bool {
		return errors.Is(err, clusterstate.ErrRefused) && strings.Contains(err.Error(), "lags 2097152 bytes")
	}

	if err := ask(-1); !refusedForLag(err) {
		t.Errorf("no cluster setting, default 1MB: err = %v, want a refusal for lag", err)
	}
	put(t, cli, k.Config(), `{"maximum_lag_on_failover": 4194304}`)
	if err := ask(-1); err != nil {
		t.Errorf("cluster allows 4MB: err = %v, want the request accepted", err)
	}
	if err := ask(1 << 20); !refusedForLag(err) {
		t.Errorf("explicit 1MB over the cluster's 4MB: err = %v, want a refusal", err)
	}
	if err := ask(0); err != nil {
		t.Errorf("explicit no limit: err = %v", err)
	}
	put(t, cli, k.Config(), `{"maximum_lag_on_failover": "lots"}`)
	if err := ask(-1); !errors.Is(err, clusterstate.ErrRefused) || !strings.Contains(err.Error(), "not a number of bytes") {
		t.Errorf("malformed cluster setting: err = %v, want a refusal naming it", err)
	}
}

// TestRequestsRefused: every reason a switchover or failover is refused
// is one ErrRefused naming it, and a refused request writes nothing.
func TestRequestsRefused(t *testing.T) {
	cli := etcd(t)
	k := keys(t, "refusals")
	now := time.Now()
	putMember(t, cli, k, cluster.Member{Name: "n1", Role: cluster.RolePrimary, State: "running", Host: "127.0.0.1", Port: 5432, LagBytes: ptr(int64(0)), UpdatedAt: now})
	putMember(t, cli, k, cluster.Member{Name: "n2", Role: cluster.RoleReplica, State: "streaming from n1", Host: "127.0.0.1", Port: 5433, LagBytes: ptr(int64(0)), UpdatedAt: now})
	putMember(t, cli, k, cluster.Member{Name: "n3", Role: cluster.RoleReplica, State: "streaming from n1", Host: "127.0.0.1", Port: 5434, LagBytes: ptr(int64(0)), UpdatedAt: now.Add(-time.Minute)})
	putMember(t, cli, k, cluster.Member{Name: "n4", Role: cluster.RoleStarting, State: "cloning", Host: "127.0.0.1", Port: 5435, UpdatedAt: now})
	past := now.Add(-time.Hour)

	noSwitchoverKey := func(t *testing.T) {
		t.Helper()
		resp, err := cli.Get(t.Context(), k.Switchover())
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) != 0 {
			t.Errorf("a refused request wrote %s: %s", k.Switchover(), resp.Kvs[0].Value)
		}
	}
	refusedWith := func(t *testing.T, err error, want string) {
		t.Helper()
		if !errors.Is(err, clusterstate.ErrRefused) || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want a refusal with %q", err, want)
		}
		noSwitchoverKey(t)
	}

	t.Run("switchover without a leader", func(t *testing.T) {
		err := clusterstate.RequestSwitchover(t.Context(), cli, k, clusterstate.SwitchoverRequest{Candidate: "n2"}, now)
		refusedWith(t, err, "no leader")
	})
	put(t, cli, k.Leader(), "n1")
	for _, tc := range []struct {
		name string
		req  clusterstate.SwitchoverRequest
		want string
	}{
		{"another leader named", clusterstate.SwitchoverRequest{Leader: "n2"}, "n2 is not the leader, n1 is"},
		{"unknown candidate", clusterstate.SwitchoverRequest{Candidate: "n9"}, "n9 is not a member"},
		{"the leader as candidate", clusterstate.SwitchoverRequest{Candidate: "n1"}, "n1 already leads"},
		{"a stale candidate", clusterstate.SwitchoverRequest{Candidate: "n3"}, "n3's record is 1m0s old"},
		{"a starting candidate", clusterstate.SwitchoverRequest{Candidate: "n4"}, "n4 is not a healthy replica of n1"},
		{"a time in the past", clusterstate.SwitchoverRequest{Candidate: "n2", ScheduledAt: &past}, "in the past"},
	} {
		t.Run("switchover: "+tc.name, func(t *testing.T) {
			refusedWith(t, clusterstate.RequestSwitchover(t.Context(), cli, k, tc.req, now), tc.want)
		})
	}
	for _, tc := range []struct {
		name, candidate, want string
	}{
		{"no candidate", "", "needs a candidate"},
		{"unknown candidate", "n9", "n9 is not a member"},
		{"the leader as candidate", "n1", "n1 already leads"},
		{"a stale candidate", "n3", "n3's record is 1m0s old"},
		{"a starting candidate", "n4", "n4 is starting, not a running replica"},
	} {
		t.Run("failover: "+tc.name, func(t *testing.T) {
			refusedWith(t, clusterstate.RequestFailover(t.Context(), cli, k, tc.candidate, now), tc.want)
		})
	}
	t.Run("cancel with nothing pending", func(t *testing.T) {
		refusedWith(t, clusterstate.CancelSwitchover(t.Context(), cli, k), "no switchover is pending")
	})
	t.Run("a second request while one is pending", func(t *testing.T) {
		if err := clusterstate.RequestSwitchover(t.Context(), cli, k, clusterstate.SwitchoverRequest{Candidate: "n2"}, now); err != nil {
			t.Fatal(err)
		}
		err := clusterstate.RequestFailover(t.Context(), cli, k, "n2", now)
		if !errors.Is(err, clusterstate.ErrRefused) || !strings.Contains(err.Error(), "another switchover is pending") {
			t.Errorf("err = %v, want a refusal naming the pending request", err)
		}
		if err := clusterstate.CancelSwitchover(t.Context(), cli, k); err != nil {
			t.Fatal(err)
		}
		noSwitchoverKey(t)
	})
}

// TestEditConfig: settings are merged into the config key and null
// removes one; a bad setting is refused naming it and changes nothing,
// and a config key that is not JSON is reported, not overwritten.
func TestEditConfig(t *testing.T) {
	cli := etcd(t)
	k := keys(t, "edit")
	edit := func(settings ...string) (string, error) {
		cfg, err := clusterstate.EditConfig(t.Context(), cli, k, settings)
		if err != nil {
			return "", err
		}
		var b strings.Builder
		if err := ctl.WriteConfig(&b, cfg); err != nil {
			t.Fatal(err)
		}
		return b.String(), nil
	}
	got, err := edit("pause=true", "postgresql.parameters.work_mem=64MB", "maximum_lag_on_failover=1048576")
	if want := "maximum_lag_on_failover = 1048576\npause = true\npostgresql.parameters.work_mem = \"64MB\"\n"; err != nil || got != want {
		t.Fatalf("edit: %v, config\n%s\nwant\n%s", err, got, want)
	}
	got, err = edit("pause=null")
	if want := "maximum_lag_on_failover = 1048576\npostgresql.parameters.work_mem = \"64MB\"\n"; err != nil || got != want {
		t.Fatalf("remove pause: %v, config\n%s\nwant\n%s", err, got, want)
	}
	stored := func() string {
		resp, err := cli.Get(t.Context(), k.Config())
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("get %s: %v", k.Config(), err)
		}
		return string(resp.Kvs[0].Value)
	}
	before := stored()

	for _, tc := range []struct {
		name     string
		settings []string
		want     string
	}{
		{"nothing", nil, "nothing to change"},
		{"no equals sign", []string{"pause"}, `"pause" is not key=value`},
		{"empty key", []string{"=true"}, `"=true" is not key=value`},
		{"empty path element", []string{"postgresql..work_mem=1"}, "empty path element"},
		{"pause not a bool", []string{"pause=yes"}, "pause: true or false"},
		{"sync node count zero", []string{"synchronous_node_count=0"}, "synchronous_node_count"},
		{"negative lag", []string{"maximum_lag_on_failover=-1"}, "maximum_lag_on_failover"},
		{"parameter not a scalar", []string{`postgresql.parameters.work_mem={"a":1}`}, "a scalar value"},
		{"static postgresql key", []string{"postgresql.data_dir=/tmp"}, "only postgresql.parameters"},
		{"unknown key", []string{"ttl=30"}, "ttl: unknown key"},
		{"a parameter name smuggling an assignment", []string{"postgresql.parameters.port '6001' #=x"}, "parameter name \"port '6001' #\""},
		{"a parameter name with two dots", []string{"postgresql.parameters.a.b.c=1"}, `parameter name "a.b.c"`},
		{"an include directive", []string{"postgresql.parameters.include_dir=/tmp"}, "include directive"},
		{"a line feed in a value", []string{"postgresql.parameters.work_mem=1MB\nport = '6001'"}, `"\n" at byte 3`},
		{"a JSON-escaped line feed in a value", []string{`postgresql.parameters.work_mem="1MB\nport = '6001'"`}, `"\n" at byte 3`},
		{"a carriage return in a value", []string{"postgresql.parameters.work_mem=1MB\r"}, `"\r" at byte 3`},
		{"a NUL in a value", []string{`postgresql.parameters.application_name="a\u0000b"`}, `"\x00" at byte 1`},
		{"a protected parameter", []string{"postgresql.parameters.port=6001"}, "the agent sets port itself"},
		{"a protected parameter in capitals", []string{"postgresql.parameters.PORT=6001"}, "the agent sets port itself"},
		{"the agent's pg_hba.conf", []string{"postgresql.parameters.hba_file=/tmp/trust.conf"}, "the agent sets hba_file itself"},
		{"one bad among good ones", []string{"pause=true", "bogus=1"}, "bogus: unknown key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := edit(tc.settings...)
			if !errors.Is(err, clusterstate.ErrRefused) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want a refusal with %q", err, tc.want)
			}
			if after := stored(); after != before {
				t.Errorf("config changed by a refused edit: %s, was %s", after, before)
			}
		})
	}

	t.Run("extension parameters and other spellings", func(t *testing.T) {
		got, err := edit("postgresql.parameters.shared_preload_libraries=pg_stat_statements",
			"postgresql.parameters.pg_stat_statements.max=10000", "postgresql.parameters.WORK_MEM=32MB")
		want := "maximum_lag_on_failover = 1048576\n" +
			"postgresql.parameters.pg_stat_statements.max = 10000\n" +
			"postgresql.parameters.shared_preload_libraries = \"pg_stat_statements\"\n" +
			"postgresql.parameters.work_mem = \"32MB\"\n"
		if err != nil || got != want {
			t.Fatalf("edit: %v, config\n%s\nwant\n%s", err, got, want)
		}
		// A spelling written by hand (or by an older ctl) goes too.
		put(t, cli, k.Config(), `{"postgresql":{"parameters":{"Work_Mem":"1MB","work_mem":"2MB","port '1' #":"x"}}}`)
		got, err = edit("postgresql.parameters.work_mem=null", "postgresql.parameters.port '1' #=null")
		if err != nil || got != "(empty: every agent uses its local settings)\n" {
			t.Fatalf("remove: %v, config\n%s", err, got)
		}
	})

	t.Run("a half-written config key", func(t *testing.T) {
		put(t, cli, k.Config(), `{"pause": tr`)
		if _, err := edit("pause=true"); err == nil || errors.Is(err, clusterstate.ErrRefused) || !strings.Contains(err.Error(), "config:") {
			t.Errorf("err = %v, want the config key reported as unreadable", err)
		}
		if after := stored(); after != `{"pause": tr` {
			t.Errorf("the unreadable key was overwritten with %s", after)
		}
	})
}

// TestStatusConfigAsTheAgentsReadIt: the status's typed view of the config
// key is the agents' (cluster.ParseConfig): a key with a mistyped value is
// shown as written, listed as invalid, and pauses nothing, since the
// agents ignore it whole; Config can still read it for a repair.
func TestStatusConfigAsTheAgentsReadIt(t *testing.T) {
	cli := etcd(t)
	k := keys(t, "cfg")
	put(t, cli, k.Config(), `{"pause":true,"synchronous_mode":"yes"}`)
	st := status(t, cli, k)
	if st.Config["pause"] != true || st.Paused() || len(st.Invalid) != 1 || !strings.Contains(st.Invalid[0].Error, `synchronous_mode "yes"`) {
		t.Errorf("config %v, paused %v, invalid %+v; want it shown, not paused, listed as invalid", st.Config, st.Paused(), st.Invalid)
	}
	if cfg, _, err := clusterstate.Config(t.Context(), cli, k); err != nil || cfg["synchronous_mode"] != "yes" {
		t.Errorf("Config = %v, %v; want the key as written", cfg, err)
	}
	if _, err := clusterstate.EditConfig(t.Context(), cli, k, []string{"synchronous_mode=true"}); err != nil {
		t.Fatal(err)
	}
	if st := status(t, cli, k); !st.Paused() || !st.Dynamic.SyncMode || len(st.Invalid) != 0 {
		t.Errorf("after the repair: paused %v, %+v, invalid %+v", st.Paused(), st.Dynamic, st.Invalid)
	}
}
