package haagent

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/pharos-ha/pharos/haagent/core"
	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/etcdlocal"
	"github.com/pharos-ha/pharos/internal/pglocal"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// lockedBuffer is a log sink written from exec's output goroutine.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestCloneReportsProgress clones a real primary the way a new member does
// (the clone action, against a real etcd) and checks that the member
// record follows the clone ("creating replica 40%") and that the log shows
// its progress; and that a clone that cannot start fails with all of
// pg_basebackup's error, not only its last line.
func TestCloneReportsProgress(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	pg, err := pglocal.NewCluster(ctx, pglocal.Options{Fast: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := pg.Close(cctx); err != nil {
			t.Error(err)
		}
	})
	etcd, err := etcdlocal.Start(ctx, etcdlocal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { etcd.Close() })
	cli, err := etcd.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	keys, _ := cluster.NewKeys("clone")

	var logs lockedBuffer
	dataDir := filepath.Join(pg.BaseDir(), "n2")
	// Nothing renews the lease here: it must outlast the clone (about 3 s
	// at the rate below, more on a loaded machine), or the record's
	// deletion ends up among the states watched.
	timing := core.DefaultTiming()
	timing.TTL = time.Minute
	a, err := New(Config{
		Rules: core.Rules{Name: "n2", Timing: timing, CrashRestartTimeout: core.DefaultCrashRestartTimeout},
		Postgres: PostgresConfig{
			DataDir: dataDir, BinDir: pg.BinDir(), Port: 1, Owner: pg.Owner(),
			SuperUser: pglocal.SuperUser, ReplicationUser: pglocal.ReplicationUser, ReplicationPassword: "unused",
			// pglocal trusts its superuser and replication logins.
			RequireAuth: "scram-sha-256,none",
			// The database is about 30 MB: the clone lasts long enough
			// for a few progress reports, which pg_basebackup prints
			// once a second.
			CloneMaxRate: "10M",
		},
	}, cli, keys, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.join(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = a.dcs.revoke(cctx, a.lease.ID())
	})
	observe := func(src cluster.Member) core.Observation {
		return core.Observation{Now: time.Now(), DCS: core.DCSView{Reachable: true, Leader: src.Name, LeaderEpoch: 7,
			Members: map[string]cluster.Member{src.Name: src}}}
	}

	t.Run("source down", func(t *testing.T) {
		port, err := pglocal.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		down := cluster.Member{Name: "down", Role: cluster.RolePrimary, Host: "127.0.0.1", Port: port}
		err = a.execute(ctx, core.Action{Kind: core.ActClone, Target: down.Name}, observe(down))
		if err == nil {
			t.Fatal("a clone from a port nobody listens on succeeded")
		}
		// libpq's error has two lines; both reach the operator.
		for _, want := range []string{"clone from down: pg_basebackup: exit status 1", "Connection refused", "Is the server running on that host"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q lacks %q", err, want)
			}
		}
		if left, _ := os.ReadDir(dataDir); len(left) != 0 {
			t.Errorf("the failed clone left %d entries in the data directory", len(left))
		}
	})

	t.Run("progress", func(t *testing.T) {
		rev0, err := etcd.CurrentRevision(ctx)
		if err != nil {
			t.Fatal(err)
		}
		src := cluster.Member{Name: "src", Role: cluster.RolePrimary, Host: "127.0.0.1", Port: pg.Primary().Port}
		t0 := time.Now()
		if err := a.execute(ctx, core.Action{Kind: core.ActClone, Target: src.Name}, observe(src)); err != nil {
			t.Fatalf("clone: %v\nlogs:\n%s", err, logs.String())
		}
		t.Logf("clone took %v", time.Since(t0).Round(time.Millisecond))
		if _, err := os.Stat(filepath.Join(dataDir, "PG_VERSION")); err != nil {
			t.Errorf("the clone made no data directory: %v", err)
		}

		// Every version the record had since the clone started.
		var states []string
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		defer wcancel()
		last, err := cli.Get(wctx, keys.Member("n2"))
		if err != nil || len(last.Kvs) == 0 {
			t.Fatalf("no member record after the clone: %v", err)
		}
		for resp := range cli.Watch(wctx, keys.Member("n2"), clientv3.WithRev(rev0+1)) {
			if resp.Err() != nil {
				t.Fatal(resp.Err())
			}
			done := false
			for _, ev := range resp.Events {
				m, err := cluster.ParseMember(ev.Kv.Value)
				if err != nil {
					t.Fatal(err)
				}
				if m.Role != cluster.RoleStarting || m.Epoch != 7 || m.Host != "127.0.0.1" {
					t.Errorf("record during the clone: %+v", m)
				}
				states = append(states, m.State)
				done = done || ev.Kv.ModRevision >= last.Kvs[0].ModRevision
			}
			if done {
				break
			}
		}
		t.Logf("states: %q", states)
		if len(states) == 0 || states[0] != "creating replica from src" {
			t.Errorf("first state %q, want the clone announced at once", states)
		}
		percent := regexp.MustCompile(`^creating replica \d+%$`)
		if !slices.ContainsFunc(states, percent.MatchString) {
			t.Errorf("no state with a percentage among %q", states)
		}

		out := logs.String()
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "from=src") {
				t.Log(l)
			}
		}
		for _, want := range []*regexp.Regexp{
			regexp.MustCompile(`msg="clone progress" member=n2 from=src done_kb=\d+ total_kb=\d+ percent=100 rate="[0-9.]+ MB/s" eta=0s`),
			regexp.MustCompile(`msg=pg_basebackup member=n2 from=src output="base backup completed"`),
			regexp.MustCompile(`msg=pg_basebackup member=n2 from=src output="checkpoint completed"`),
		} {
			if !want.MatchString(out) {
				t.Errorf("log lacks %s:\n%s", want, out)
			}
		}
	})

	t.Run("reinitialize from a leader that does not answer", func(t *testing.T) {
		if err := pg.Owner().MkdirAll(dataDir, 0o700); err != nil {
			t.Fatal(err)
		}
		marker := filepath.Join(dataDir, "kept")
		if err := os.WriteFile(marker, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		port, err := pglocal.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		down := cluster.Member{Name: "down", Role: cluster.RolePrimary, Host: "127.0.0.1", Port: port}
		rec, err := cluster.MarshalMember(down)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Put(ctx, keys.Member(down.Name), string(rec)); err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Put(ctx, keys.Leader(), down.Name); err != nil {
			t.Fatal(err)
		}
		// An initialized cluster: reinitialize is decided like a round of
		// the loop, and a member of no cluster has nothing to clone again.
		sysid := a.observe(ctx).PG.SystemID
		if sysid == "" {
			t.Fatal("the cloned data directory has no system identifier")
		}
		if _, err := cli.Put(ctx, keys.Initialize(), `{"system_id":"`+sysid+`","by":"down"}`); err != nil {
			t.Fatal(err)
		}
		err = a.serveRequest(ctx, apiRequest{kind: "reinitialize"})
		if !errors.Is(err, core.ErrSourceUnavailable) {
			t.Errorf("reinitialize from a leader nobody answers for: %v, want %v", err, core.ErrSourceUnavailable)
		}
		if _, err := os.Stat(marker); err != nil {
			t.Errorf("the data directory was wiped for a clone that could not start: %v", err)
		}
	})
}
