package localha_test

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/pharos-ha/pharos/bench"
	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/clusterstate"
	"github.com/pharos-ha/pharos/internal/ctl"
	"github.com/pharos-ha/pharos/internal/etcdlocal"
	"github.com/pharos-ha/pharos/internal/localha"
	"github.com/pharos-ha/pharos/internal/pglocal"
)

var pharosBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "pharos-ha-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// Tests build with the race detector: the agents' and the proxy's
	// goroutines run here for real, and a report in their logs fails the
	// test. Benchmarks build without it, to measure what users run.
	flag.Parse()
	benchmarking := flag.Lookup("test.bench") != nil && flag.Lookup("test.bench").Value.String() != ""
	if pharosBin, err = localha.BuildPharos(dir, !benchmarking); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			return 1
		}
	}
	return code
}

// haEnv is a running cluster: embedded etcd, agents as child processes,
// and a pharos proxy process following them.
type haEnv struct {
	t    testing.TB
	etcd *etcdlocal.Cluster
	cli  *clientv3.Client
	keys cluster.Keys
	ha   *localha.Cluster
	rw   string // proxy rw address
}

const clusterName = "e2e"

func startHA(t testing.TB, nodes int, agentArgs ...string) *haEnv {
	t.Helper()
	dir, err := os.MkdirTemp("", "pharos-ha-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() && os.Getenv("PHAROS_KEEP_HA") != "" {
			t.Logf("kept %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	ctx := context.Background()
	e := &haEnv{t: t}
	e.keys, _ = cluster.NewKeys(clusterName)
	e.etcd, err = etcdlocal.Start(ctx, etcdlocal.Options{Dir: filepath.Join(dir, "etcd")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.etcd.Close() })
	e.cli, err = e.etcd.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.cli.Close() })
	e.ha, err = localha.Start(ctx, localha.Options{
		Binary: pharosBin, Dir: filepath.Join(dir, "nodes"), Nodes: nodes, Cluster: clusterName,
		Etcd: e.etcd.Endpoints(), RestartDelay: -1, AgentArgs: append([]string{"--log-level", "debug"}, agentArgs...),
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range e.ha.Nodes() {
				t.Logf("--- agent %s (tail):\n%s", n.Name, n.Tail(6000))
			}
		}
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := e.ha.Close(cctx); err != nil {
			t.Errorf("close cluster: %v", err)
		}
		for _, n := range e.ha.Nodes() {
			if b, _ := os.ReadFile(n.LogPath); strings.Contains(string(b), "DATA RACE") {
				t.Errorf("race detector report in agent %s's log:\n%s", n.Name, lastBytes(string(b), 8000))
			}
		}
	})
	e.startProxy(filepath.Join(dir, "proxy.log"))
	return e
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func freeAddr(t testing.TB) string {
	port, err := pglocal.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

func (e *haEnv) startProxy(logPath string) {
	t := e.t
	e.rw = freeAddr(t)
	proxy, err := localha.StartProxy(pharosBin, logPath, "--source", "pharos", "--etcd", strings.Join(e.etcd.Endpoints(), ","),
		"--cluster", clusterName, "--rw-listen", e.rw, "--ro-listen", freeAddr(t), "--metrics-listen", "",
		"--route-wait", "10s", "--drain-timeout", "1s")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := proxy.Stop(); err != nil {
			t.Error(err)
		}
		b, _ := os.ReadFile(logPath)
		if strings.Contains(string(b), "DATA RACE") {
			t.Errorf("race detector report in the proxy's log:\n%s", lastBytes(string(b), 8000))
		}
		if t.Failed() {
			t.Logf("--- proxy:\n%s", lastBytes(string(b), 4000))
		}
	})
}

func lastBytes(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (e *haEnv) status(ctx context.Context) (clusterstate.ClusterStatus, error) {
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return clusterstate.Status(cctx, e.cli, e.keys)
}

// waitHealthy waits until a leader runs as primary and every one of the
// members named (all nodes when none are) is the primary or a replica
// streaming from it on the leader's timeline, with a record published
// after since; it returns the leader's name.
func (e *haEnv) waitHealthy(t testing.TB, since time.Time, timeout time.Duration, members ...string) string {
	t.Helper()
	if len(members) == 0 {
		for _, n := range e.ha.Nodes() {
			members = append(members, n.Name)
		}
	}
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		st, err := e.status(context.Background())
		if err == nil && st.Leader != nil {
			leader, ok := st.Member(st.Leader.Name)
			good := ok && leader.Role == cluster.RolePrimary
			var parts []string
			for _, name := range members {
				m, ok := st.Member(name)
				if !ok {
					parts = append(parts, name+"=absent")
					good = false
					continue
				}
				parts = append(parts, fmt.Sprintf("%s=%s/%s/tl%d", m.Name, m.Role, m.State, m.Timeline))
				if m.UpdatedAt.Before(since) {
					good = false
				}
				if m.Name != st.Leader.Name && (!m.StreamsFrom(st.Leader.Name) || m.Timeline != leader.Timeline) {
					good = false
				}
			}
			last = strings.Join(parts, " ")
			if good {
				return st.Leader.Name
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("cluster not healthy within %v; last: %s", timeout, last)
	return ""
}

// checkTruth compares what ctl list shows with what each server says over
// SQL: the leader is the only node out of recovery, timelines match.
func (e *haEnv) checkTruth(t testing.TB, ctx context.Context, members ...string) {
	t.Helper()
	st, err := e.status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var table strings.Builder
	_ = ctl.WriteTable(&table, st)
	t.Logf("ctl list:\n%s", table.String())
	for _, n := range e.ha.Nodes() {
		if len(members) > 0 && !slices.Contains(members, n.Name) {
			continue
		}
		m, ok := st.Member(n.Name)
		if !ok {
			t.Errorf("ctl list lacks %s", n.Name)
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := pgx.Connect(cctx, n.DSN())
		if err != nil {
			cancel()
			t.Errorf("%s: %v", n.Name, err)
			continue
		}
		var recovery bool
		var tl int64
		err = conn.QueryRow(cctx, `SELECT pg_is_in_recovery(),
			CASE WHEN pg_is_in_recovery() THEN (SELECT received_tli FROM pg_stat_wal_receiver)
			ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END`).Scan(&recovery, &tl)
		conn.Close(cctx)
		cancel()
		if err != nil {
			t.Errorf("%s: %v", n.Name, err)
			continue
		}
		isLeader := st.Leader != nil && st.Leader.Name == n.Name
		if isLeader == recovery {
			t.Errorf("%s: ctl says leader=%v, server says in recovery=%v", n.Name, isLeader, recovery)
		}
		if (m.Role == cluster.RolePrimary) != !recovery {
			t.Errorf("%s: ctl says role %s, server says in recovery=%v", n.Name, m.Role, recovery)
		}
		if m.Timeline != tl {
			t.Errorf("%s: ctl says timeline %d, server says %d", n.Name, m.Timeline, tl)
		}
	}
}

// probe runs the failover probe through the proxy around fault.
func (e *haEnv) probe(t testing.TB, name string, fault func(context.Context) error) *bench.FailoverReport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	rep, err := bench.RunFailover(ctx, bench.FailoverOptions{
		DSN: e.ha.SuperDSN(e.rw), Before: 500 * time.Millisecond, After: 40 * time.Second, Settle: time.Second,
		Fault: fault,
	})
	if err != nil {
		t.Fatalf("%s: probe: %v", name, err)
	}
	var out strings.Builder
	_ = rep.WriteText(&out)
	t.Logf("%s:\n%s", name, out.String())
	if !rep.Settled {
		t.Fatalf("%s: writes never settled after the fault", name)
	}
	return rep
}

func (e *haEnv) replicas(leader string) []*localha.Node {
	var out []*localha.Node
	for _, n := range e.ha.Nodes() {
		if n.Name != leader {
			out = append(out, n)
		}
	}
	return out
}

// TestFailoverEndToEnd drives a three-node cluster through the faults of
// issue 4 with writes through the proxy, checking after each that the
// writes resume, the old primary comes back as a replica, and ctl list
// tells the truth.
func TestFailoverEndToEnd(t *testing.T) {
	e := startHA(t, 3)
	ctx := context.Background()

	leader := e.waitHealthy(t, time.Time{}, 2*time.Minute)
	e.checkTruth(t, ctx)
	hist, err := clusterstate.History(ctx, e.cli, e.keys)
	if err != nil || len(hist) != 1 || hist[0].Reason != "bootstrap" || hist[0].NewLeader != leader {
		t.Fatalf("history after bootstrap: %+v, %v", hist, err)
	}

	t.Run("replica lost and back", func(t *testing.T) {
		victim := e.replicas(leader)[0]
		rep := e.probe(t, "replica node lost", func(context.Context) error { return victim.KillNode() })
		if len(rep.Lost) != 0 {
			t.Errorf("acknowledged writes lost: %v", rep.Lost)
		}
		if rep.NewPrimary != "" {
			t.Errorf("losing a replica moved the primary to %s", rep.NewPrimary)
		}
		restarted := time.Now()
		if err := victim.StartAgent(); err != nil {
			t.Fatal(err)
		}
		if got := e.waitHealthy(t, restarted, time.Minute); got != leader {
			t.Fatalf("leader changed from %s to %s", leader, got)
		}
		e.checkTruth(t, ctx)
	})

	t.Run("postmaster crash under a live agent", func(t *testing.T) {
		old := e.ha.Node(leader)
		rep := e.probe(t, "postmaster SIGKILL", func(context.Context) error { return old.KillPostmaster() })
		if len(rep.Lost) != 0 {
			t.Errorf("acknowledged writes lost after an in-place restart: %v", rep.Lost)
		}
		if rep.RecoveredAfter <= 0 {
			t.Errorf("the probe saw no outage: was the postmaster killed?")
		}
		if got := e.waitHealthy(t, time.Now(), time.Minute); got != leader {
			t.Fatalf("a crash under a live agent must restart in place; leader moved %s → %s", leader, got)
		}
		e.checkTruth(t, ctx)
	})

	t.Run("primary node lost, rejoins with rewind", func(t *testing.T) {
		old := e.ha.Node(leader)
		rep := e.probe(t, "primary node SIGKILL", func(context.Context) error { return old.KillNode() })
		if rep.NewPrimary == "" || rep.NewPrimary == leader {
			t.Fatalf("no new primary took the writes (before %s, after %q)", leader, rep.NewPrimary)
		}
		// Asynchronous replication: the last commits of the killed
		// primary may not have reached any replica. Synchronous mode
		// (issue 6) is what makes this zero; here it is reported.
		t.Logf("acknowledged writes missing on the new primary (async replication): %d", len(rep.Lost))
		var survivors []string
		for _, n := range e.replicas(leader) {
			survivors = append(survivors, n.Name)
		}
		newLeader := e.waitHealthy(t, time.Now(), 30*time.Second, survivors...)
		if newLeader != rep.NewPrimary {
			t.Fatalf("etcd names %s, the writes went to %s", newLeader, rep.NewPrimary)
		}
		e.checkTruth(t, ctx, survivors...)
		restarted := time.Now()
		if err := old.StartAgent(); err != nil {
			t.Fatal(err)
		}
		if got := e.waitHealthy(t, restarted, time.Minute); got != newLeader {
			t.Fatalf("the old primary took the lead back: %s", got)
		}
		e.checkTruth(t, ctx)
		hist, err := clusterstate.History(ctx, e.cli, e.keys)
		if err != nil || len(hist) < 2 {
			t.Fatalf("history: %+v, %v", hist, err)
		}
		lastEntry := hist[len(hist)-1]
		if lastEntry.Reason != "failover" || lastEntry.NewLeader != newLeader || lastEntry.OldLeader != leader || lastEntry.LSN == 0 {
			t.Errorf("last history entry %+v, want a failover %s → %s with a switch LSN", lastEntry, leader, newLeader)
		}
		leader = newLeader
	})

	t.Run("leader cut off from etcd fences itself", func(t *testing.T) {
		// One etcd member: stopping it cuts every agent off. The leader
		// must stop accepting writes before its lease could expire, and
		// no replica may promote meanwhile.
		primary := e.ha.Node(leader)
		stoppedAt := time.Now()
		if err := e.etcd.StopMember(0); err != nil {
			t.Fatal(err)
		}
		// Fenced means seen read-only or seen stopped: a server that
		// merely does not answer proves nothing.
		var why string
		fenced := waitUntil(10*time.Second, func() bool {
			var ok bool
			ok, why = notWritable(primary)
			return ok
		})
		took := time.Since(stoppedAt)
		if !fenced {
			t.Fatalf("the leader is not seen fenced 10 s after losing etcd; last: %s", why)
		}
		t.Logf("leader fenced (%s) %v after etcd stopped (ttl 4s, safety margin 1s)", why, took.Round(time.Millisecond))
		if took >= 4*time.Second {
			t.Errorf("fenced after %v: not before its 4 s lease could expire", took)
		}
		for _, n := range e.replicas(leader) {
			if ok, why := notWritable(n); !ok {
				t.Errorf("%s while etcd is down: %s; want it seen read-only (not promoted)", n.Name, why)
			}
		}
		if err := e.etcd.StartMember(ctx, 0); err != nil {
			t.Fatal(err)
		}
		e.waitHealthy(t, time.Now(), time.Minute)
		e.checkTruth(t, ctx)
	})
}

func waitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// acceptsWrites reports whether the node's server takes a write now. Its
// false is no evidence of fencing (the node may be unreachable): claims
// that a node does not take writes use notWritable or tryWrite.
func acceptsWrites(n *localha.Node) bool {
	o, _ := tryWrite(n, time.Second)
	return o == writeAccepted
}

// BenchmarkFailover measures the write outage seen through the proxy for
// each fault (node loss with asynchronous and with synchronous
// replication, postmaster crash, planned switchover through `pharos
// ctl`), one fault per iteration, with pharos's default timing:
//
//	go test -run '^$' -bench Failover -benchtime 5x ./internal/localha
//
// It reports the median and the worst outage (from the last acknowledged
// write before the fault to the first after it), the median time from the
// fault to the first write acknowledged again, and the acknowledged writes
// missing from the final primary: with asynchronous replication a node
// loss can lose the last commits, in synchronous mode it must not.
func BenchmarkFailover(b *testing.B) {
	for _, kind := range []string{"node-loss", "node-loss-sync", "postmaster-crash", "switchover"} {
		b.Run(kind, func(b *testing.B) {
			e := startHA(b, 3)
			leader := e.waitHealthy(b, time.Time{}, 2*time.Minute)
			sync := kind == "node-loss-sync"
			if sync {
				if code, out := e.ctlRun(b, "edit-config", "synchronous_mode=true", "--force"); code != 0 {
					b.Fatalf("exit %d: %s", code, out)
				}
			}
			var outages, recoveries []float64
			lost, readOnly := 0, 0
			for b.Loop() {
				old := e.ha.Node(leader)
				if sync {
					// Only a named synchronous standby may take over:
					// fault a leader whose commits wait for one.
					b.StopTimer()
					if !waitUntil(30*time.Second, func() bool {
						st := e.syncState(b)
						return st != nil && st.Leader == leader && len(st.Standbys) == 1
					}) {
						b.Fatalf("leader %s names no synchronous standby: %+v", leader, e.syncState(b))
					}
					b.StartTimer()
				}
				fault := old.KillPostmaster
				switch kind {
				case "node-loss", "node-loss-sync":
					fault = old.KillNode
				case "switchover":
					fault = func() error {
						if code, out := e.ctlRun(b, "switchover", "--force"); code != 0 {
							return fmt.Errorf("ctl switchover: exit %d: %s", code, out)
						}
						return nil
					}
				}
				rep := e.probe(b, kind, func(context.Context) error { return fault() })
				if rep.FaultErr != "" {
					b.Fatal(rep.FaultErr)
				}
				saveFailoverRun(b, kind, len(outages)+1, rep)
				readOnly += rep.Errors["25006"]
				outages = append(outages, float64(rep.MaxOutage.Milliseconds()))
				recoveries = append(recoveries, float64(rep.RecoveredAfter.Milliseconds()))
				lost += len(rep.Lost)
				b.StopTimer()
				if kind == "node-loss" || sync {
					var survivors []string
					for _, n := range e.replicas(leader) {
						survivors = append(survivors, n.Name)
					}
					leader = e.waitHealthy(b, time.Now(), time.Minute, survivors...)
					restarted := time.Now()
					if err := old.StartAgent(); err != nil {
						b.Fatal(err)
					}
					leader = e.waitHealthy(b, restarted, 2*time.Minute)
				} else {
					leader = e.waitHealthy(b, time.Now(), time.Minute)
				}
				b.StartTimer()
			}
			slices.Sort(outages)
			slices.Sort(recoveries)
			b.ReportMetric(outages[len(outages)/2], "outage-ms-median")
			b.ReportMetric(outages[len(outages)-1], "outage-ms-max")
			b.ReportMetric(recoveries[len(recoveries)/2], "recovered-ms-median")
			b.ReportMetric(float64(lost), "lost-writes")
			b.ReportMetric(float64(readOnly), "writes-on-read-only")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// saveFailoverRun writes run n's report to $PHAROS_BENCH_RESULTS, where
// `make bench` collects it for `pharos bench report`; without the
// variable it does nothing.
func saveFailoverRun(b *testing.B, kind string, n int, rep *bench.FailoverReport) {
	dir := os.Getenv("PHAROS_BENCH_RESULTS")
	if dir == "" {
		return
	}
	f, err := os.Create(filepath.Join(dir, bench.FailoverFile(kind, n)))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := rep.WriteJSON(f); err != nil {
		b.Fatal(err)
	}
	// make bench waits minutes for these runs: one line each as they end
	// (the benchmark's own output comes only when all are done).
	fmt.Fprintf(os.Stderr, "bench: failover %s run %d: outage %s, %d acknowledged writes lost\n",
		kind, n, rep.MaxOutage.Round(time.Millisecond), len(rep.Lost))
}

// ctlRun runs `pharos ctl` against the cluster and returns its exit code
// and output.
func (e *haEnv) ctlRun(t testing.TB, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	full := append([]string{"ctl", "--etcd", strings.Join(e.etcd.Endpoints(), ","), "--cluster", clusterName}, args...)
	out, err := exec.CommandContext(ctx, pharosBin, full...).CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("pharos %v: %v", full, err)
	}
	return code, string(out)
}

// TestOperationsEndToEnd: switchover under a write load through the proxy,
// failover to a named replica, pause, and dynamic parameters, all driven
// through `pharos ctl`.
func TestOperationsEndToEnd(t *testing.T) {
	cbDir := t.TempDir()
	calls := filepath.Join(cbDir, "calls")
	script := filepath.Join(cbDir, "on_role_change.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho \"$PHAROS_MEMBER $*\" >> "+calls+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	e := startHA(t, 3, "--on-role-change", script)
	ctx := context.Background()
	leader := e.waitHealthy(t, time.Time{}, 2*time.Minute)

	t.Run("switchover under load", func(t *testing.T) {
		target := e.replicas(leader)[0].Name
		rep := e.probe(t, "switchover", func(context.Context) error {
			code, out := e.ctlRun(t, "switchover", "--to", target, "--force")
			if code != 0 {
				return fmt.Errorf("ctl switchover: exit %d: %s", code, out)
			}
			t.Logf("ctl switchover: %s", strings.TrimSpace(out))
			return nil
		})
		if rep.FaultErr != "" {
			t.Fatal(rep.FaultErr)
		}
		if len(rep.Lost) != 0 {
			t.Errorf("acknowledged writes lost in a switchover: %v", rep.Lost)
		}
		if n := rep.Errors["25006"]; n != 0 {
			t.Errorf("%d writes reached a read-only server", n)
		}
		if rep.NewPrimary != target {
			t.Errorf("writes went to %q, want %s", rep.NewPrimary, target)
		}
		got := e.waitHealthy(t, time.Now(), time.Minute)
		if got != target {
			t.Fatalf("leader %s, want %s", got, target)
		}
		e.checkTruth(t, ctx)
		hist, err := clusterstate.History(ctx, e.cli, e.keys)
		if err != nil {
			t.Fatal(err)
		}
		if last := hist[len(hist)-1]; last.Reason != "switchover" || last.NewLeader != target || last.OldLeader != leader {
			t.Errorf("history entry %+v, want a switchover %s → %s", last, leader, target)
		}
		// on_role_change ran on both sides, with Patroni's arguments.
		for _, want := range []string{target + " on_role_change primary " + clusterName, leader + " on_role_change replica " + clusterName} {
			if !waitUntil(5*time.Second, func() bool { b, _ := os.ReadFile(calls); return strings.Contains(string(b), want) }) {
				b, _ := os.ReadFile(calls)
				t.Errorf("callback %q not run; calls:\n%s", want, b)
			}
		}
		leader = target
	})

	t.Run("switchover refused for an unknown or lagging target", func(t *testing.T) {
		code, out := e.ctlRun(t, "switchover", "--to", "n9", "--force")
		if code != 1 || !strings.Contains(out, "n9 is not a member") {
			t.Errorf("exit %d: %s", code, out)
		}
		code, out = e.ctlRun(t, "switchover", "--to", leader, "--force")
		if code != 1 || !strings.Contains(out, "already leads") {
			t.Errorf("exit %d: %s", code, out)
		}
		code, out = e.ctlRun(t, "switchover", "--to", e.replicas(leader)[0].Name)
		if code != 2 || !strings.Contains(out, "pass --force") {
			t.Errorf("without a terminal or --force: exit %d: %s", code, out)
		}
	})

	t.Run("scheduled switchover is listed and cancelled", func(t *testing.T) {
		code, out := e.ctlRun(t, "switchover", "--at", "+1h", "--force")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, out)
		}
		_, out = e.ctlRun(t, "list")
		if !strings.Contains(out, "scheduled at") {
			t.Errorf("ctl list does not show the scheduled switchover:\n%s", out)
		}
		if code, out := e.ctlRun(t, "switchover", "--cancel", "--force"); code != 0 {
			t.Fatalf("cancel: exit %d: %s", code, out)
		}
		if _, out = e.ctlRun(t, "list"); strings.Contains(out, "scheduled") {
			t.Errorf("still scheduled after cancel:\n%s", out)
		}
	})

	t.Run("failover to a named replica", func(t *testing.T) {
		// The replica that is not first in name order, so the choice is
		// not what an election would pick anyway.
		reps := e.replicas(leader)
		target := reps[len(reps)-1].Name
		code, out := e.ctlRun(t, "failover", "--to", target, "--force")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, out)
		}
		if got := e.waitHealthy(t, time.Now(), time.Minute); got != target {
			t.Fatalf("leader %s, want %s", got, target)
		}
		leader = target
	})

	t.Run("paused cluster does not fail over until resumed", func(t *testing.T) {
		if code, out := e.ctlRun(t, "pause", "--force"); code != 0 {
			t.Fatalf("pause: exit %d: %s", code, out)
		}
		if _, out := e.ctlRun(t, "list"); !strings.Contains(out, "PAUSED") {
			t.Errorf("ctl list does not show the pause:\n%s", out)
		}
		old := e.ha.Node(leader)
		if err := old.KillNode(); err != nil {
			t.Fatal(err)
		}
		// Twice the lease: the key is long gone, nobody may promote.
		deadline := time.Now().Add(8 * time.Second)
		for time.Now().Before(deadline) {
			for _, n := range e.replicas(leader) {
				if ok, why := notWritable(n); !ok {
					t.Fatalf("%s while the cluster is paused with its primary dead: %s; want it seen read-only (not promoted)", n.Name, why)
				}
			}
			time.Sleep(200 * time.Millisecond)
		}
		st, err := e.status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Leader != nil {
			t.Fatalf("leader %s while paused with the primary dead", st.Leader.Name)
		}
		resumed := time.Now()
		if code, out := e.ctlRun(t, "resume", "--force"); code != 0 {
			t.Fatalf("resume: exit %d: %s", code, out)
		}
		var survivors []string
		for _, n := range e.replicas(leader) {
			survivors = append(survivors, n.Name)
		}
		newLeader := e.waitHealthy(t, resumed, 30*time.Second, survivors...)
		t.Logf("%s leads %v after resume", newLeader, time.Since(resumed).Round(time.Millisecond))
		if err := old.StartAgent(); err != nil {
			t.Fatal(err)
		}
		leader = e.waitHealthy(t, time.Now(), time.Minute)
	})

	t.Run("dynamic parameters", func(t *testing.T) {
		if code, out := e.ctlRun(t, "edit-config", "postgresql.parameters.work_mem=12MB", "--force"); code != 0 {
			t.Fatalf("exit %d: %s", code, out)
		}
		for _, n := range e.ha.Nodes() {
			ok := waitUntil(15*time.Second, func() bool { return show(n, "work_mem") == "12MB" })
			if !ok {
				t.Errorf("%s: work_mem %q, want 12MB after a reload", n.Name, show(n, "work_mem"))
			}
		}
		if code, out := e.ctlRun(t, "edit-config", "postgresql.parameters.max_connections=123", "--force"); code != 0 {
			t.Fatalf("exit %d: %s", code, out)
		}
		pending := waitUntil(15*time.Second, func() bool {
			st, err := e.status(ctx)
			if err != nil {
				return false
			}
			for _, m := range st.Members {
				if !m.PendingRestart {
					return false
				}
			}
			return true
		})
		if !pending {
			_, out := e.ctlRun(t, "list")
			t.Errorf("max_connections change not flagged as pending a restart:\n%s", out)
		}
		code, out := e.ctlRun(t, "edit-config", "postgresql.port=1", "--force")
		if code != 1 || !strings.Contains(out, "only postgresql.parameters") {
			t.Errorf("exit %d: %s", code, out)
		}
		_, out = e.ctlRun(t, "show-config")
		if !strings.Contains(out, `postgresql.parameters.work_mem = "12MB"`) {
			t.Errorf("show-config:\n%s", out)
		}
	})
}

// show returns a setting of n's server ("" on error).
func show(n *localha.Node, name string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, n.DSN())
	if err != nil {
		return ""
	}
	defer conn.Close(ctx)
	var v string
	if err := conn.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v); err != nil {
		return ""
	}
	return v
}

// TestWatchdogEndToEnd: with the software watchdog required, a primary
// whose agent hangs (SIGSTOP) or dies (SIGKILL) has its postmaster killed
// before any other member is promoted; a member that cannot arm its
// required watchdog never leads; the REST API answers load balancers and
// refuses unauthenticated changes.
func TestWatchdogEndToEnd(t *testing.T) {
	e := startHA(t, 3, "--watchdog", "required", "--watchdog-driver", "software")
	ctx := context.Background()
	leader := e.waitHealthy(t, time.Time{}, 2*time.Minute)

	t.Run("REST API health and auth", func(t *testing.T) {
		for _, n := range e.ha.Nodes() {
			wantPrimary, wantReplica := 503, 200
			if n.Name == leader {
				wantPrimary, wantReplica = 200, 503
			}
			for path, want := range map[string]int{"/primary": wantPrimary, "/replica": wantReplica, "/health": 200, "/liveness": 200} {
				for _, method := range []string{"GET", "OPTIONS"} {
					if got := httpStatus(t, method, n.APIURL+path, "", ""); got != want {
						t.Errorf("%s %s %s: %d, want %d", n.Name, method, path, got, want)
					}
				}
			}
		}
		url := e.ha.Node(leader).APIURL + "/restart"
		if got := httpStatus(t, "POST", url, "", ""); got != 401 {
			t.Errorf("unauthenticated POST /restart: %d, want 401", got)
		}
		if got := httpStatus(t, "POST", url, e.ha.APIUser, "wrong"); got != 401 {
			t.Errorf("POST /restart with a wrong password: %d, want 401", got)
		}
		metrics := httpBody(t, e.ha.Node(leader).APIURL+"/metrics")
		for _, want := range []string{"pharos_agent_is_leader 1", "pharos_agent_watchdog_armed 1"} {
			if !strings.Contains(metrics, want) {
				t.Errorf("leader's /metrics lacks %q", want)
			}
		}
	})

	for _, tc := range []struct {
		name  string
		fault func(n *localha.Node) error
	}{
		{"agent frozen (SIGSTOP)", func(n *localha.Node) error { return n.SignalAgent(syscall.SIGSTOP) }},
		{"agent killed (SIGKILL)", func(n *localha.Node) error { return n.KillAgent() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old := e.ha.Node(leader)
			pid := old.PostmasterPid()
			if pid == 0 {
				t.Fatalf("no postmaster on %s", leader)
			}
			faultAt := time.Now()
			if err := tc.fault(old); err != nil {
				t.Fatal(err)
			}
			var killedAt, promotedAt time.Time
			deadline := time.Now().Add(30 * time.Second)
			for (killedAt.IsZero() || promotedAt.IsZero()) && time.Now().Before(deadline) {
				if killedAt.IsZero() && !processAlive(pid) {
					killedAt = time.Now()
				}
				if promotedAt.IsZero() {
					if st, err := e.status(ctx); err == nil && st.Leader != nil && st.Leader.Name != leader {
						promotedAt = time.Now()
					}
				}
				time.Sleep(10 * time.Millisecond)
			}
			if killedAt.IsZero() {
				t.Fatalf("the watchdog did not kill %s's postmaster", leader)
			}
			if promotedAt.IsZero() {
				t.Fatal("no other member took the lead")
			}
			t.Logf("postmaster killed %v after the fault, new leader %v after it", killedAt.Sub(faultAt).Round(time.Millisecond), promotedAt.Sub(faultAt).Round(time.Millisecond))
			if !killedAt.Before(promotedAt) {
				t.Errorf("another member led before the hung primary was killed")
			}
			if b, _ := os.ReadFile(old.WatchdogLog()); !strings.Contains(string(b), "watchdog fired") {
				t.Errorf("watchdog log does not say it fired:\n%s", b)
			}
			if err := old.SignalAgent(syscall.SIGKILL); err == nil {
				_ = old.KillAgent()
			}
			var survivors []string
			for _, n := range e.replicas(leader) {
				survivors = append(survivors, n.Name)
			}
			newLeader := e.waitHealthy(t, time.Now(), time.Minute, survivors...)
			restarted := time.Now()
			if err := old.StartAgent(); err != nil {
				t.Fatal(err)
			}
			e.waitHealthy(t, restarted, time.Minute)
			e.checkTruth(t, ctx)
			leader = newLeader
		})
	}
}

// TestRequiredWatchdogWithoutDeviceNeverLeads: a lone member whose
// required watchdog device does not exist never bootstraps or leads.
func TestRequiredWatchdogWithoutDeviceNeverLeads(t *testing.T) {
	e := startHA(t, 1, "--watchdog", "required", "--watchdog-driver", "device", "--watchdog-device", "/nonexistent/watchdog")
	n := e.ha.Nodes()[0]
	time.Sleep(6 * time.Second)
	st, err := e.status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Leader != nil || st.Initialize != nil {
		t.Fatalf("a member without its required watchdog leads or bootstrapped: leader %+v", st.Leader)
	}
	if b, _ := os.ReadFile(n.LogPath); !strings.Contains(string(b), "required watchdog cannot be armed") {
		t.Errorf("the agent does not say why it does not lead:\n%s", lastBytes(string(b), 3000))
	}
}

func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

func httpStatus(t testing.TB, method, url, user, password string) int {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if method == http.MethodPost {
		// The API refuses operator calls declared as anything else.
		req.Header.Set("Content-Type", "application/json")
	}
	if user != "" {
		req.SetBasicAuth(user, password)
	}
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func httpBody(t testing.TB, url string) string {
	t.Helper()
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// syncState reads the sync key.
func (e *haEnv) syncState(t testing.TB) *cluster.SyncState {
	st, err := e.status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st.Sync
}

// TestSynchronousModeEndToEnd: with synchronous_mode on, the leader names a
// synchronous standby, a node loss loses no acknowledged write and
// promotes that standby; without standbys, non-strict mode goes
// asynchronous and strict mode blocks writes until one is back.
func TestSynchronousModeEndToEnd(t *testing.T) {
	e := startHA(t, 3)
	ctx := context.Background()
	leader := e.waitHealthy(t, time.Time{}, 2*time.Minute)
	if code, out := e.ctlRun(t, "edit-config", "synchronous_mode=true", "--force"); code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	var syncStandby string
	if !waitUntil(15*time.Second, func() bool {
		st := e.syncState(t)
		if st != nil && st.Leader == leader && len(st.Standbys) == 1 {
			syncStandby = st.Standbys[0]
			return true
		}
		return false
	}) {
		t.Fatalf("no synchronous standby named: %+v", e.syncState(t))
	}
	if got := show(e.ha.Node(leader), "synchronous_standby_names"); got != `FIRST 1 ("`+syncStandby+`")` {
		t.Errorf("synchronous_standby_names %q", got)
	}
	_, out := e.ctlRun(t, "list")
	t.Logf("ctl list:\n%s", out)
	if !strings.Contains(out, "synchronous mode: "+leader+" wait(s) for "+syncStandby) {
		t.Errorf("ctl list does not show the synchronous standby")
	}

	t.Run("node loss loses nothing and promotes the synchronous standby", func(t *testing.T) {
		old := e.ha.Node(leader)
		rep := e.probe(t, "sync node loss", func(context.Context) error { return old.KillNode() })
		if len(rep.Lost) != 0 {
			t.Errorf("synchronous mode lost acknowledged writes: %v", rep.Lost)
		}
		if rep.NewPrimary != syncStandby {
			t.Errorf("writes went to %q, want the synchronous standby %s", rep.NewPrimary, syncStandby)
		}
		var survivors []string
		for _, n := range e.replicas(leader) {
			survivors = append(survivors, n.Name)
		}
		leader = e.waitHealthy(t, time.Now(), time.Minute, survivors...)
		restarted := time.Now()
		if err := old.StartAgent(); err != nil {
			t.Fatal(err)
		}
		leader = e.waitHealthy(t, restarted, time.Minute)
		if !waitUntil(15*time.Second, func() bool {
			st := e.syncState(t)
			return st != nil && st.Leader == leader && len(st.Standbys) == 1
		}) {
			t.Fatalf("the new leader named no synchronous standby: %+v", e.syncState(t))
		}
	})

	t.Run("without standbys non-strict goes asynchronous", func(t *testing.T) {
		reps := e.replicas(leader)
		for _, n := range reps {
			if err := n.KillNode(); err != nil {
				t.Fatal(err)
			}
		}
		primary := e.ha.Node(leader)
		if !waitUntil(20*time.Second, func() bool { return acceptsWrites(primary) }) {
			t.Fatal("non-strict synchronous mode blocks writes with no standby left")
		}
		if st := e.syncState(t); st == nil || len(st.Standbys) != 0 {
			t.Errorf("sync key still names standbys that are gone: %+v", st)
		}
		if m := httpBody(t, primary.APIURL+"/metrics"); !strings.Contains(m, "pharos_agent_sync_degraded 1") {
			t.Errorf("degraded synchronous mode not visible in the metrics")
		}

		t.Run("strict blocks writes until a standby is back", func(t *testing.T) {
			if code, out := e.ctlRun(t, "edit-config", "synchronous_mode_strict=true", "--force"); code != 0 {
				t.Fatalf("exit %d: %s", code, out)
			}
			if !waitUntil(15*time.Second, func() bool { return show(primary, "synchronous_standby_names") == "FIRST 1 (*)" }) {
				t.Fatalf("strict mode without standbys: synchronous_standby_names %q", show(primary, "synchronous_standby_names"))
			}
			if o, err := tryWrite(primary, 2*time.Second); o != writeBlocked {
				t.Errorf("strict synchronous mode with no standby: write %s (%v), want it sent to the primary and not acknowledged", o, err)
			}
			restarted := time.Now()
			for _, n := range reps {
				if err := n.StartAgent(); err != nil {
					t.Fatal(err)
				}
			}
			e.waitHealthy(t, restarted, time.Minute)
			if !waitUntil(20*time.Second, func() bool { return acceptsWrites(primary) }) {
				t.Error("writes still blocked with standbys back")
			}
		})
	})
	e.checkTruth(t, ctx)
}
