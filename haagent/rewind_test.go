package haagent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pharos-ha/pharos/haagent/core"
	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/internal/pgproc"
	"github.com/pharos-ha/pharos/metrics"
)

// TestRewindOverAKilledUnreapedPostmaster replays what a frozen node met
// when it thawed: its watchdog killed the old postmaster, which stayed an
// unreaped zombie, and the rewind started at once. pg_rewind's single-user
// recovery took the zombie's PID in postmaster.pid for a live postmaster,
// refused, and the agent wiped and re-cloned. Here the former primary of a
// real pair diverged, was killed, and its lock file names a zombie: the
// rewind action must rejoin it by rewind (the diverged row is gone, the
// data directory is the same one), counted as done, with no reclone.
func TestRewindOverAKilledUnreapedPostmaster(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	// pg_rewind needs full_page_writes on the source, which Fast turns off.
	pg, err := pglocal.NewCluster(ctx, pglocal.Options{Fast: true, Replicas: 1, ExtraConf: []string{"full_page_writes = on"}})
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
	old, rep := pg.Primary(), pg.Replicas()[0]
	exec := func(in *pglocal.Instance, sql string) {
		t.Helper()
		conn, err := in.Connect(ctx, pglocal.SuperUser, "", "postgres")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.WithoutCancel(ctx))
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s on %s: %v", sql, in.Name, err)
		}
	}
	exec(old, "CREATE TABLE t (v text)")
	exec(old, "INSERT INTO t VALUES ('common')")
	if err := pg.WaitReplicaCaughtUp(ctx, rep); err != nil {
		t.Fatal(err)
	}
	if err := rep.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	exec(rep, "INSERT INTO t VALUES ('new timeline')")
	exec(old, "INSERT INTO t VALUES ('diverged')") // only the old primary has it
	if err := old.Kill(); err != nil {
		t.Fatal(err)
	}
	// The server's own user: a postmaster checks its lock file with
	// kill(pid, 0) and takes EPERM (another user's process) for no
	// postmaster.
	owner := pg.Owner()
	zombie := zombieOf(t, &owner, "/")
	lock := filepath.Join(old.DataDir, "postmaster.pid")
	b, err := os.ReadFile(lock)
	if err != nil {
		t.Fatalf("the killed postmaster left no lock file: %v", err)
	}
	_, rest, _ := strings.Cut(string(b), "\n")
	if err := os.WriteFile(lock, []byte(strconv.Itoa(zombie)+"\n"+rest), 0o600); err != nil {
		t.Fatal(err)
	}
	var before syscall.Stat_t
	if err := syscall.Stat(old.DataDir, &before); err != nil {
		t.Fatal(err)
	}

	m := metrics.NewAgent(prometheus.NewRegistry())
	a, err := New(Config{
		Rules: core.Rules{Name: old.Name, Timing: core.DefaultTiming(), CrashRestartTimeout: core.DefaultCrashRestartTimeout, AutoReinit: true},
		Postgres: PostgresConfig{
			DataDir: old.DataDir, BinDir: pg.BinDir(), Port: old.Port, SocketDir: old.SocketDir(), Owner: pg.Owner(),
			SuperUser: pglocal.SuperUser, ReplicationUser: pglocal.ReplicationUser,
			// pglocal trusts its superuser.
			RequireAuth: "scram-sha-256,none",
		},
		Metrics: m,
	}, nil, cluster.Keys{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	src := cluster.Member{Name: rep.Name, Role: cluster.RolePrimary, Host: "127.0.0.1", Port: rep.Port}
	o := core.Observation{Now: time.Now(), DCS: core.DCSView{Reachable: true, Leader: src.Name, Members: map[string]cluster.Member{src.Name: src}}}
	if err := a.execute(ctx, core.Action{Kind: core.ActRewind, Target: src.Name}, o); err != nil {
		t.Fatalf("rewind over a zombie's lock file: %v", err)
	}
	if got := testutil.ToFloat64(m.Rewinds.WithLabelValues("done")); got != 1 {
		t.Errorf("rewinds done = %v, want 1", got)
	}
	for _, r := range core.RecloneReasons {
		if got := testutil.ToFloat64(m.Reclones.WithLabelValues(r)); got != 0 {
			t.Errorf("reclones{%s} = %v", r, got)
		}
	}
	if a.mem.RewindFailed != "" {
		t.Errorf("memory says the rewind failed from %s", a.mem.RewindFailed)
	}
	var after syscall.Stat_t
	if err := syscall.Stat(old.DataDir, &after); err != nil || after.Ino != before.Ino {
		t.Errorf("the data directory was replaced (inode %d → %d, %v)", before.Ino, after.Ino, err)
	}

	// The rewound directory is the new timeline's: start it and look.
	if err := old.Start(ctx); err != nil {
		t.Fatal(err)
	}
	conn, err := old.Connect(ctx, pglocal.SuperUser, "", "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var rows []string
	r, err := conn.Query(ctx, "SELECT v FROM t ORDER BY v")
	if err != nil {
		t.Fatal(err)
	}
	for r.Next() {
		var v string
		if err := r.Scan(&v); err != nil {
			t.Fatal(err)
		}
		rows = append(rows, v)
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	if strings.Join(rows, ",") != "common,new timeline" {
		t.Errorf("rewound rows %v, want the new timeline's [common new timeline]", rows)
	}
}

// TestRewindFailureIsRetriedOrRemembered runs the rewind action against
// failures of both kinds and checks what the next round may do: a source
// that does not answer leaves nothing in memory (rewind again), a live
// server of the target is waited for and never rewound over, and neither
// is counted as a reason to re-clone.
func TestRewindFailureIsRetriedOrRemembered(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	dataDir, fake := deadDirs(t)
	if err := os.WriteFile(filepath.Join(dataDir, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bin, err := pgproc.FindBinDir(ctx, "")
	if err != nil {
		t.Skip(err)
	}
	m := metrics.NewAgent(prometheus.NewRegistry())
	self := pgproc.Owner{UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
	a, err := New(Config{
		Rules:    core.Rules{Name: "n1", Timing: core.DefaultTiming(), CrashRestartTimeout: core.DefaultCrashRestartTimeout, AutoReinit: true},
		Postgres: PostgresConfig{DataDir: dataDir, BinDir: bin, Port: 1, Owner: self, SuperUser: "postgres", ReplicationUser: "repl"},
		Metrics:  m,
	}, nil, cluster.Keys{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	a.pg.deadWait = 300 * time.Millisecond
	port, err := pglocal.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	down := cluster.Member{Name: "n2", Role: cluster.RolePrimary, Host: "127.0.0.1", Port: port}
	o := core.Observation{Now: time.Now(), DCS: core.DCSView{Reachable: true, Leader: down.Name, Members: map[string]cluster.Member{down.Name: down}}}

	t.Run("source down", func(t *testing.T) {
		err := a.execute(ctx, core.Action{Kind: core.ActRewind, Target: down.Name}, o)
		if err == nil || !strings.Contains(err.Error(), string(core.RewindSourceUnavailable)) {
			t.Fatalf("rewind from a closed port: %v, want a %s failure", err, core.RewindSourceUnavailable)
		}
		if a.mem.RewindFailed != "" {
			t.Fatalf("a source that did not answer is remembered as a failed rewind (%s/%s): the next round would re-clone",
				a.mem.RewindFailed, a.mem.RewindFailure)
		}
	})

	t.Run("target server still alive", func(t *testing.T) {
		server := spawn(t, dataDir, fake, "30")
		writeLock(t, dataDir, server.Process.Pid)
		err := a.execute(ctx, core.Action{Kind: core.ActRewind, Target: down.Name}, o)
		if !errors.Is(err, errServerAlive) || !strings.Contains(err.Error(), string(core.RewindServerRunning)) {
			t.Fatalf("rewind over a live postmaster: %v, want %s", err, core.RewindServerRunning)
		}
		if a.mem.RewindFailed != "" {
			t.Fatal("a live server is remembered as a failed rewind")
		}
		if !alive(server.Process.Pid) {
			t.Fatal("the live server was killed")
		}
	})

	if got := testutil.ToFloat64(m.Rewinds.WithLabelValues("retry")); got != 2 {
		t.Errorf("rewinds retry = %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.Rewinds.WithLabelValues("failed")); got != 0 {
		t.Errorf("rewinds failed = %v, want 0", got)
	}
	// Decide, fed the memory these failures left, rewinds again.
	o.DCS.Initialized, o.DCS.SystemID = true, "42"
	o.DCS.MemberSeenAt = map[string]time.Time{down.Name: o.Now}
	o.PG = core.PGView{Data: core.DataPresent, Timeline: 1}
	o.Memory = a.mem
	if p := core.Decide(o, a.rules); len(p.Actions) == 0 || p.Actions[0].Kind != core.ActRewind {
		t.Errorf("after transient failures the plan is %v, want another rewind", p)
	}
}
