package ctl_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pharos-ha/pharos/internal/cluster"
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
		err := ctl.RequestSwitchover(t.Context(), cli, k, ctl.SwitchoverRequest{Candidate: "n2", MaxLag: maxLag, DefaultMaxLag: 1 << 20}, now)
		if err == nil {
			if err := ctl.CancelSwitchover(t.Context(), cli, k); err != nil {
				t.Fatal(err)
			}
		}
		return err
	}
	refusedForLag := func(err error) bool {
		return errors.Is(err, ctl.ErrRefused) && strings.Contains(err.Error(), "lags 2097152 bytes")
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
	if err := ask(-1); !errors.Is(err, ctl.ErrRefused) || !strings.Contains(err.Error(), "not a number of bytes") {
		t.Errorf("malformed cluster setting: err = %v, want a refusal naming it", err)
	}
}
