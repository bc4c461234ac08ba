package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/clusterstate"

	"github.com/pharos-ha/pharos/internal/pglocal"
)

// TestDemoRunsAndStops runs `pharos demo` as `make demo` does: it must
// write demo.env, serve rw on the primary and ro on a replica through the
// proxy, fail over when the leader's node is killed and bring that node
// back as a replica by itself, and stop everything on Ctrl-C.
func TestDemoRunsAndStops(t *testing.T) {
	bin := pharosBinary(t)
	dir, err := os.MkdirTemp("", "pharos-demo-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// The servers run as postgres when the test is root: the directory must
	// be reachable for them.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	base, err := pglocal.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "demo", "--dir", dir, "--nodes", "3", "--base-port", strconv.Itoa(base), "--log-level", "warn")
	out, err := os.Create(filepath.Join(dir, "demo.out"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = cmd.Process.Signal(syscall.SIGINT)
			<-exited
		}
	})

	envPath := filepath.Join(dir, "demo.env")
	env := map[string]string{}
	for deadline := time.Now().Add(2 * time.Minute); len(env) == 0; {
		if time.Now().After(deadline) {
			logs, _ := os.ReadFile(out.Name())
			t.Fatalf("no demo.env after 2 minutes; output:\n%s", logs)
		}
		select {
		case err := <-exited:
			stopped = true
			logs, _ := os.ReadFile(out.Name())
			t.Fatalf("demo exited early (%v); output:\n%s", err, logs)
		case <-time.After(200 * time.Millisecond):
		}
		if f, err := os.Open(envPath); err == nil {
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				if k, v, ok := strings.Cut(sc.Text(), "="); ok {
					env[k] = v
				}
			}
			f.Close()
		}
	}
	for _, tc := range []struct {
		key          string
		wantRecovery bool
	}{
		{"PHAROS_RW_DSN", false},
		{"PHAROS_RO_DSN", true},
	} {
		conn, err := pgx.Connect(ctx, env[tc.key])
		if err != nil {
			t.Fatalf("%s: %v", tc.key, err)
		}
		var inRecovery bool
		err = conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery)
		conn.Close(ctx)
		if err != nil || inRecovery != tc.wantRecovery {
			t.Errorf("%s: in recovery %v (err %v), want %v", tc.key, inRecovery, err, tc.wantRecovery)
		}
	}

	for _, key := range []string{"PHAROS_ETCD", "PHAROS_CLUSTER", "PHAROS_METRICS_URL"} {
		if env[key] == "" {
			t.Errorf("demo.env lacks %s", key)
		}
	}
	// While it waited, it said what each node was doing, up to the state
	// it is up in.
	logs, _ := os.ReadFile(out.Name())
	progress := regexp.MustCompile(`(?m)^ +\d+\.\ds  n1 .+ · n2 .+ · n3 .+$`)
	up := regexp.MustCompile(`(?m)^ +\d+\.\ds  (n\d (primary running|replica streaming from n\d)( · |$)){3}\n +cluster up in`)
	if lines := progress.FindAll(logs, -1); len(lines) < 2 || !up.Match(logs) {
		t.Errorf("no progress lines naming every node, ending with all up; output:\n%s", logs)
	} else {
		t.Logf("progress:\n%s", bytes.Join(lines, []byte("\n")))
	}
	demoProxyAuth(t, ctx, env)
	demoConsole(t, ctx, env, logs)
	demoFailover(t, ctx, dir, env)

	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			logs, _ := os.ReadFile(out.Name())
			t.Fatalf("demo exited with %v after Ctrl-C; output:\n%s", err, logs)
		}
	case <-time.After(45 * time.Second):
		t.Fatal("demo did not stop within 45s of Ctrl-C")
	}
	// Every server it started is gone: nothing runs from its data directories.
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), dir) {
			t.Errorf("a process still runs from the demo directory: %s", strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
}

func TestStatusLine(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	s := statusLine{every: time.Second}
	for _, step := range []struct {
		at    time.Duration
		line  string
		final bool
		want  bool
	}{
		{0, "n1 no data directory yet", false, true},
		{200 * time.Millisecond, "n1 no data directory yet", false, false}, // unchanged
		{400 * time.Millisecond, "n1 bootstrapping: initdb", false, false}, // changed, too soon
		{time.Second, "n1 bootstrapping: first start", false, true},        // changed, a second later
		{3 * time.Second, "n1 bootstrapping: first start", false, false},   // unchanged, however long
		{3200 * time.Millisecond, "n1 primary running", true, true},        // the final state at once
		{3400 * time.Millisecond, "n1 primary running", true, false},       // but once
	} {
		if got := s.due(t0.Add(step.at), step.line, step.final); got != step.want {
			t.Errorf("+%v %q (final %v): due = %v, want %v", step.at, step.line, step.final, got, step.want)
		}
	}
}

// demoFailover kills the leader's agent and PostgreSQL together and checks
// that rw reaches another primary and that the supervisor brings the
// killed node back as a replica.
func demoFailover(t *testing.T, ctx context.Context, dir string, env map[string]string) {
	t.Helper()
	status := func() clusterstate.ClusterStatus {
		cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(env["PHAROS_ETCD"], ","), DialTimeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		keys, _ := cluster.NewKeys(env["PHAROS_CLUSTER"])
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		st, err := clusterstate.Status(cctx, cli, keys)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	st := status()
	if st.Leader == nil {
		t.Fatal("no leader in the running demo")
	}
	if len(st.Proxies) != 1 || st.Proxies[0].Name != "demo-proxy" || st.Proxies[0].CancelID == 0 {
		t.Errorf("proxies registered by the demo: %+v, want demo-proxy with a cancel ID", st.Proxies)
	}
	old := st.Leader.Name
	nodeDir := filepath.Join(dir, "nodes", old)
	// The agent is the process whose command line names its data dir.
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), filepath.Join(nodeDir, "data")) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil {
			pids = append(pids, pid)
		}
	}
	if len(pids) < 2 {
		t.Fatalf("found %d processes of node %s, want its agent and PostgreSQL", len(pids), old)
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	killed := time.Now()
	var newPrimary string
	for deadline := time.Now().Add(30 * time.Second); newPrimary == ""; {
		if time.Now().After(deadline) {
			t.Fatalf("no write reached a new primary within 30s of killing %s", old)
		}
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		conn, err := pgx.Connect(cctx, env["PHAROS_RW_DSN"])
		if err == nil {
			var name string
			if _, err := conn.Exec(cctx, "CREATE TEMP TABLE w(x int)"); err == nil {
				if err := conn.QueryRow(cctx, "SELECT current_setting('cluster_name')").Scan(&name); err == nil && name != old {
					newPrimary = name
				}
			}
			conn.Close(cctx)
		}
		cancel()
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("writes reached %s %v after %s was killed", newPrimary, time.Since(killed).Round(time.Millisecond), old)
	for deadline := time.Now().Add(90 * time.Second); ; {
		st := status()
		m, ok := st.Member(old)
		if ok && m.StreamsFrom(newPrimary) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not come back as a replica of %s: %+v", old, newPrimary, m)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// demoProxyAuth checks that the demo's proxy authenticates logins itself
// (auth_type scram-sha-256, verifiers from pharos.get_auth): a wrong
// password gets 28P01 on both endpoints without the proxy ever opening a
// backend connection for it, which in passthrough it would, to let the
// server refuse.
func demoProxyAuth(t *testing.T, ctx context.Context, env map[string]string) {
	t.Helper()
	dials := func() float64 {
		resp, err := http.Get(env["PHAROS_METRICS_URL"])
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		var sum float64
		for _, line := range strings.Split(string(body), "\n") {
			if rest, ok := strings.CutPrefix(line, "pharos_proxy_backend_connect_seconds_count{"); ok {
				_, v, _ := strings.Cut(rest, "} ")
				f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				if err != nil {
					t.Fatalf("metrics line %q: %v", line, err)
				}
				sum += f
			}
		}
		return sum
	}
	before := dials()
	for _, key := range []string{"PHAROS_RW_DSN", "PHAROS_RO_DSN"} {
		cc, err := pgx.ParseConfig(env[key])
		if err != nil {
			t.Fatal(err)
		}
		cc.Password = "not-" + cc.Password
		conn, err := pgx.ConnectConfig(ctx, cc)
		if err == nil {
			conn.Close(ctx)
			t.Fatalf("%s with a wrong password logged in", key)
		}
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "28P01" {
			t.Errorf("%s with a wrong password: %v, want 28P01", key, err)
		}
	}
	if after := dials(); after != before {
		t.Errorf("backend connections opened for logins with a wrong password: %v, then %v; the proxy should refuse them itself", before, after)
	}
}

// demoConsole checks that the banner shows the admin console's command and
// that its superuser gets the console with it.
func demoConsole(t *testing.T, ctx context.Context, env map[string]string, banner []byte) {
	t.Helper()
	dsn := env["PHAROS_ADMIN_DSN"]
	if dsn == "" {
		t.Fatal("demo.env lacks PHAROS_ADMIN_DSN")
	}
	if line := "  console:     psql '" + dsn + "' -c 'SHOW POOLS'"; !bytes.Contains(banner, []byte(line)) {
		t.Errorf("the banner lacks %q:\n%s", line, banner)
	}
	cc, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	if cc.Database != "pharos" {
		t.Fatalf("PHAROS_ADMIN_DSN is for database %q", cc.Database)
	}
	cc.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		t.Fatalf("console: %v", err)
	}
	defer conn.Close(ctx)
	var v string
	if err := conn.QueryRow(ctx, "SHOW VERSION").Scan(&v); err != nil || !strings.HasPrefix(v, "pharos ") {
		t.Fatalf("SHOW VERSION on the demo's console: %q, %v", v, err)
	}
}
