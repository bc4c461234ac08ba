package haagent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pharos-ha/pharos/haagent/core"
	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/etcdlocal"
	"github.com/pharos-ha/pharos/internal/pgproc"
)

// testEtcd starts a one-member etcd for the test and returns a client.
func testEtcd(t *testing.T) *clientv3.Client {
	t.Helper()
	_, cli := etcdlocal.StartForTest(t)
	return cli
}

// testAgent is an agent named name on keys whose PostgreSQL programs are
// those in binDir (none run unless a test makes them). Its logs go to
// logs.
func testAgent(t *testing.T, cli *clientv3.Client, keys cluster.Keys, name, binDir string, logs *lockedBuffer) *Agent {
	t.Helper()
	self := pgproc.Owner{UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
	timing := core.DefaultTiming()
	timing.TTL = time.Minute // nothing renews the lease here
	a, err := New(Config{
		Rules: core.Rules{Name: name, Timing: timing, CrashRestartTimeout: core.DefaultCrashRestartTimeout},
		Postgres: PostgresConfig{
			DataDir: filepath.Join(t.TempDir(), "data"), BinDir: binDir, Port: 1, Owner: self,
			SuperUser: "postgres", ReplicationUser: "repl", ReplicationPassword: "unused",
		},
	}, cli, keys, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestReleaseOnlyOurs: release deletes the leader key only while it has
// this member's epoch, and says whether it did; the agent does not log a
// release that did not happen.
func TestReleaseOnlyOurs(t *testing.T) {
	cli := testEtcd(t)
	ctx := t.Context()
	keys, _ := cluster.NewKeys("release")
	d := &dcs{cli: cli, keys: keys, name: "n1", ttl: time.Minute}
	other := &dcs{cli: cli, keys: keys, name: "n2", ttl: time.Minute}
	lease, err := d.grant(ctx)
	if err != nil {
		t.Fatal(err)
	}
	otherLease, err := other.grant(ctx)
	if err != nil {
		t.Fatal(err)
	}
	holder := func() string {
		t.Helper()
		resp, err := cli.Get(ctx, keys.Leader())
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 0 {
			return ""
		}
		return string(resp.Kvs[0].Value)
	}

	epoch, err := d.acquire(ctx, lease, 0)
	if err != nil || epoch == 0 {
		t.Fatalf("acquire: %d, %v", epoch, err)
	}
	released, err := d.release(ctx, epoch)
	if err != nil || !released || holder() != "" {
		t.Fatalf("release of our own key: released=%v, err=%v, holder %q", released, err, holder())
	}

	t.Run("key gone", func(t *testing.T) {
		released, err := d.release(ctx, epoch)
		if err != nil || released {
			t.Errorf("release of a key that is gone: released=%v, err=%v; want false, nil", released, err)
		}
	})

	t.Run("key another member's", func(t *testing.T) {
		otherEpoch, err := other.acquire(ctx, otherLease, 0)
		if err != nil || otherEpoch == 0 {
			t.Fatalf("acquire by n2: %d, %v", otherEpoch, err)
		}
		released, err := d.release(ctx, epoch)
		if err != nil || released {
			t.Errorf("release of n2's key with n1's old epoch: released=%v, err=%v; want false, nil", released, err)
		}
		if got := holder(); got != "n2" {
			t.Errorf("leader key holds %q after n1's release, want n2's key untouched", got)
		}

		// The agent's action: no error (the epoch is over), no claim
		// that it released anything, and the epoch forgotten.
		var logs lockedBuffer
		a := testAgent(t, cli, keys, "n1", t.TempDir(), &logs)
		a.epoch = epoch
		o := core.Observation{Now: time.Now(), DCS: core.DCSView{Reachable: true, Leader: "n2", LeaderEpoch: otherEpoch}}
		if err := a.execute(ctx, core.Action{Kind: core.ActReleaseLeader}, o); err != nil {
			t.Fatalf("release-leader: %v", err)
		}
		out := logs.String()
		if strings.Contains(out, `msg="leader key released"`) || !strings.Contains(out, "leader key not released") {
			t.Errorf("log after a release that deleted nothing:\n%s", out)
		}
		if a.epoch != 0 {
			t.Errorf("epoch %d kept after the key was found not ours", a.epoch)
		}
		if got := holder(); got != "n2" {
			t.Errorf("leader key holds %q after the agent's release, want n2", got)
		}
	})
}

// TestBootstrapFailureLeavesAnotherClaim: a bootstrap that fails deletes
// the initialize key only while it is still its own claim (on its lease).
// A claim that expired while initdb ran, and was taken by another member
// since, stays.
func TestBootstrapFailureLeavesAnotherClaim(t *testing.T) {
	cli := testEtcd(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	// An initdb that fails once the test lets it: the claim can be
	// changed while it runs.
	bin := t.TempDir()
	gate := filepath.Join(bin, "fail-now")
	script := "#!/bin/sh\nwhile [ ! -e " + gate + " ]; do sleep 0.05; done\necho 'initdb: simulated failure' >&2\nexit 1\n"
	if err := os.WriteFile(filepath.Join(bin, "initdb"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	initialize := func(keys cluster.Keys) (string, clientv3.LeaseID) {
		t.Helper()
		resp, err := cli.Get(ctx, keys.Initialize())
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 0 {
			return "", 0
		}
		return string(resp.Kvs[0].Value), clientv3.LeaseID(resp.Kvs[0].Lease)
	}
	run := func(t *testing.T, keys cluster.Keys, meanwhile func(a *Agent)) (*Agent, *lockedBuffer) {
		t.Helper()
		_ = os.Remove(gate)
		logs := &lockedBuffer{}
		a := testAgent(t, cli, keys, "n1", bin, logs)
		if err := a.join(ctx); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			done <- a.bootstrap(ctx, core.Observation{Now: time.Now(), DCS: core.DCSView{Reachable: true}})
		}()
		if !waitFor(ctx, func() bool { _, l := initialize(keys); return l == a.lease.ID() }) {
			t.Fatal("the bootstrap never claimed the initialize key")
		}
		meanwhile(a)
		if err := os.WriteFile(gate, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		err := <-done
		if err == nil || !strings.Contains(err.Error(), "simulated failure") {
			t.Fatalf("bootstrap with a failing initdb: %v", err)
		}
		return a, logs
	}

	t.Run("own claim is removed", func(t *testing.T) {
		keys, _ := cluster.NewKeys("boot-own")
		run(t, keys, func(*Agent) {})
		if v, _ := initialize(keys); v != "" {
			t.Errorf("initialize key %q left after the failed bootstrap that claimed it", v)
		}
	})

	t.Run("claim taken over by another member stays", func(t *testing.T) {
		keys, _ := cluster.NewKeys("boot-other")
		var theirs string
		_, logs := run(t, keys, func(a *Agent) {
			// n1's lease expires (revoked here), n2 claims and finishes
			// its bootstrap: the key is detached from any lease.
			if _, err := cli.Revoke(ctx, a.lease.ID()); err != nil {
				t.Fatal(err)
			}
			theirs = `{"system_id":"7","by":"n2"}`
			if _, err := cli.Put(ctx, keys.Initialize(), theirs); err != nil {
				t.Fatal(err)
			}
		})
		if v, _ := initialize(keys); v != theirs {
			t.Errorf("initialize key %q after n1's failed bootstrap, want n2's %s untouched", v, theirs)
		}
		if !strings.Contains(logs.String(), "initialize key left alone") {
			t.Errorf("log does not say the key was left:\n%s", logs.String())
		}
	})

	t.Run("claim on another lease stays", func(t *testing.T) {
		keys, _ := cluster.NewKeys("boot-lease")
		var theirs string
		run(t, keys, func(a *Agent) {
			if _, err := cli.Revoke(ctx, a.lease.ID()); err != nil {
				t.Fatal(err)
			}
			g, err := cli.Grant(ctx, 60)
			if err != nil {
				t.Fatal(err)
			}
			theirs = `{"by":"n2"}`
			if _, err := cli.Put(ctx, keys.Initialize(), theirs, clientv3.WithLease(g.ID)); err != nil {
				t.Fatal(err)
			}
		})
		if v, _ := initialize(keys); v != theirs {
			t.Errorf("initialize key %q after n1's failed bootstrap, want n2's claim %s untouched", v, theirs)
		}
	})
}

func waitFor(ctx context.Context, cond func() bool) bool {
	for ctx.Err() == nil {
		if cond() {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// TestJoinRefusesSharedSlotName: an agent whose name maps to the
// replication slot of a member already in etcd refuses to start, naming
// the member's key; its own record (a restart) and other names pass.
func TestJoinRefusesSharedSlotName(t *testing.T) {
	cli := testEtcd(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	keys, _ := cluster.NewKeys("slots")
	rec, err := cluster.MarshalMember(cluster.Member{Name: "node-1", Role: cluster.RoleReplica, Host: "127.0.0.1", Port: 5432})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, keys.Member("node-1"), string(rec)); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"node_1", "Node.1"} {
		t.Run(name, func(t *testing.T) {
			a := testAgent(t, cli, keys, name, t.TempDir(), &lockedBuffer{})
			err := a.join(ctx)
			var conflict *core.NameConflictError
			if !errors.As(err, &conflict) {
				t.Fatalf("join as %s beside node-1: %v, want a NameConflictError", name, err)
			}
			if conflict.Other != "node-1" || conflict.Key != keys.Member("node-1") || conflict.Slot != "node_1" {
				t.Errorf("conflict %+v", conflict)
			}
			want := `name "` + name + `": its replication slot "node_1" is that of member "node-1" (` + keys.Member("node-1") + ")"
			if !strings.HasPrefix(err.Error(), want) {
				t.Errorf("error %q, want it to start with %q", err, want)
			}
			if a.lease.ID() != 0 {
				t.Error("a refused agent took a lease")
			}
		})
	}
	for _, name := range []string{"node-1", "node-2"} {
		t.Run(name, func(t *testing.T) {
			a := testAgent(t, cli, keys, name, t.TempDir(), &lockedBuffer{})
			if err := a.join(ctx); err != nil {
				t.Fatalf("join as %s: %v", name, err)
			}
			_ = a.dcs.revoke(ctx, a.lease.ID())
		})
	}
}
