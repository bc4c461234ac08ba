package restapi_test

import (
	"bufio"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/freeport"
	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/internal/restapi"
)

// pgBackend derives its node's status from the PostgreSQL instance itself
// on every call, so what HAProxy sees is real: running or not, and
// pg_is_in_recovery(). There is no etcd in this test; the instance out of
// recovery plays the leader-key holder.
type pgBackend struct {
	in *pglocal.Instance
}

func (b *pgBackend) Status() restapi.NodeStatus {
	st := restapi.NodeStatus{Name: b.in.Name, Role: cluster.RoleStopped, State: "stopped", LagBytes: -1, LoopAt: time.Now()}
	if !b.in.Running() {
		return st
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, b.in.DSN(pglocal.SuperUser, "", "postgres"))
	if err != nil {
		return st
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var inRecovery bool
	var receiver string
	var lsn string
	err = conn.QueryRow(ctx, `SELECT pg_is_in_recovery(),
		coalesce((SELECT status FROM pg_stat_wal_receiver), ''),
		CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text`).
		Scan(&inRecovery, &receiver, &lsn)
	if err != nil {
		return st
	}
	st.Running = true
	st.LSN, _ = cluster.ParseLSN(lsn)
	if inRecovery {
		st.Role, st.State, st.Streaming = cluster.RoleReplica, "running", receiver == "streaming"
		if st.Streaming {
			st.State = "streaming"
		}
	} else {
		st.Role, st.State, st.Leader, st.LagBytes = cluster.RolePrimary, "running", true, 0
	}
	return st
}

var errNotInTest = errors.New("not part of the HAProxy test")

func (b *pgBackend) Cluster(context.Context, bool) (any, error) { return nil, errNotInTest }
func (b *pgBackend) History(context.Context) (cluster.History, error) {
	return nil, errNotInTest
}
func (b *pgBackend) Switchover(context.Context, restapi.SwitchoverRequest) error { return errNotInTest }
func (b *pgBackend) Failover(context.Context, restapi.SwitchoverRequest) error   { return errNotInTest }
func (b *pgBackend) Restart(context.Context) error                               { return errNotInTest }
func (b *pgBackend) Reinitialize(context.Context) error                          { return errNotInTest }

// findHAProxy returns the haproxy binary. It skips the test only when
// haproxy is absent and we are not root; as root (CI) scripts/ensure-deps.sh
// installs it, so its absence is a failure.
func findHAProxy(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/haproxy", "/sbin/haproxy"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Geteuid() == 0 {
		t.Fatal("haproxy is not installed; run `bash scripts/ensure-deps.sh` (it installs it as root)")
	}
	t.Skip("haproxy is not installed and we are not root: skipping the real-HAProxy test " +
		"(install it with `sudo bash scripts/ensure-deps.sh`)")
	return ""
}

// haproxyConfig is Patroni's documented HAProxy configuration (a primary
// listener checking OPTIONS /primary, a replicas listener checking
// /replica). Only inter differs: 200ms instead of 3s, to make the test
// fast; fall/rise count checks, so the semantics are the same.
const haproxyConfig = `global
	maxconn 100
	stats socket {{dir}}/haproxy.sock mode 600 level admin
	stats timeout 10s

defaults
	mode tcp
	retries 2
	timeout client 30m
	timeout connect 4s
	timeout server 30m
	timeout check 5s

listen primary
	bind 127.0.0.1:{{primary}}
	option httpchk OPTIONS /primary
	http-check expect status 200
	default-server inter 200ms fall 3 rise 2 on-marked-down shutdown-sessions
{{servers}}
listen replicas
	bind 127.0.0.1:{{replicas}}
	option httpchk OPTIONS /replica
	http-check expect status 200
	default-server inter 200ms fall 3 rise 2 on-marked-down shutdown-sessions
{{servers}}`

// haproxy is a running haproxy child process.
type haproxy struct {
	dir              string
	primary, replica int // listener ports
	cmd              *exec.Cmd
	out              *syncBuffer
	done             chan struct{}
}

func startHAProxy(t *testing.T, bin string, servers []*pglocal.Instance, apiPorts []int) *haproxy {
	t.Helper()
	ports, err := freeport.Distinct(2)
	if err != nil {
		t.Fatal(err)
	}
	h := &haproxy{dir: t.TempDir(), primary: ports[0], replica: ports[1], out: &syncBuffer{}, done: make(chan struct{})}
	var lines strings.Builder
	for i, in := range servers {
		fmt.Fprintf(&lines, "\tserver %s 127.0.0.1:%d maxconn 100 check port %d\n", in.Name, in.Port, apiPorts[i])
	}
	cfg := strings.NewReplacer(
		"{{dir}}", h.dir,
		"{{primary}}", strconv.Itoa(h.primary),
		"{{replicas}}", strconv.Itoa(h.replica),
		"{{servers}}", lines.String(),
	).Replace(haproxyConfig)
	path := filepath.Join(h.dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Logf("haproxy.cfg:\n%s", cfg)
	if out, err := exec.Command(bin, "-c", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	h.cmd = exec.Command(bin, "-f", path, "-db")
	h.cmd.Stdout, h.cmd.Stderr = h.out, h.out
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := h.cmd.Start(); err != nil {
		t.Fatalf("start haproxy: %v", err)
	}
	go func() {
		_ = h.cmd.Wait()
		close(h.done)
	}()
	t.Cleanup(func() { h.stop(t) })
	return h
}

// stop ends haproxy (SIGTERM, then SIGKILL after 10 s) and waits for it.
func (h *haproxy) stop(t *testing.T) {
	select {
	case <-h.done:
	default:
		_ = h.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-h.done:
		case <-time.After(10 * time.Second):
			_ = h.cmd.Process.Kill()
			<-h.done
		}
	}
	t.Logf("haproxy output:\n%s", h.out.String())
}

// states reads the servers' check states from the stats socket:
// "primary/pg0" → "UP", "DOWN", "UP 1/3" (going down)…
func (h *haproxy) states() (map[string]string, error) {
	conn, err := net.DialTimeout("unix", filepath.Join(h.dir, "haproxy.sock"), time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte("show stat\n")); err != nil {
		return nil, err
	}
	r := bufio.NewReader(conn)
	header, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	cols := strings.Split(strings.TrimPrefix(strings.TrimSpace(header), "# "), ",")
	statusCol := -1
	for i, c := range cols {
		if c == "status" {
			statusCol = i
		}
	}
	if statusCol < 0 {
		return nil, fmt.Errorf("no status column in %q", header)
	}
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	out := map[string]string{}
	for {
		rec, err := cr.Read()
		if err != nil {
			break // the stats output ends with an empty line and EOF
		}
		if len(rec) <= statusCol || rec[1] == "FRONTEND" || rec[1] == "BACKEND" {
			continue
		}
		out[rec[0]+"/"+rec[1]] = rec[statusCol]
	}
	return out, nil
}

// waitStates waits until every server in want has exactly its state.
func (h *haproxy) waitStates(t *testing.T, want map[string]string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var got map[string]string
	var err error
	for {
		select {
		case <-h.done:
			t.Fatalf("haproxy exited: %v\n%s", h.cmd.ProcessState, h.out.String())
		default:
		}
		got, err = h.states()
		if err == nil {
			match := true
			for k, v := range want {
				if got[k] != v {
					match = false
				}
			}
			if match {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("HAProxy server states after %v: %v (err %v), want %v", timeout, got, err, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// through connects through a HAProxy listener and reports which instance
// answered and whether it is in recovery.
func through(ctx context.Context, port int) (name string, inRecovery bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, fmt.Sprintf(
		"host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=disable connect_timeout=3", port, pglocal.SuperUser))
	if err != nil {
		return "", false, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	err = conn.QueryRow(ctx, "SELECT current_setting('cluster_name'), pg_is_in_recovery()").Scan(&name, &inRecovery)
	return name, inRecovery, err
}

// TestHAProxy runs the real HAProxy with Patroni's configuration in front
// of a real primary and streaming replica, each with its REST API, and
// checks it routes by our answers, then follows a promotion.
func TestHAProxy(t *testing.T) {
	bin := findHAProxy(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))

	pg, err := pglocal.NewCluster(ctx, pglocal.Options{Replicas: 1, Fast: true, Logger: log})
	if err != nil {
		t.Fatalf("start PostgreSQL: %v", err)
	}
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), time.Minute)
		defer ccancel()
		if err := pg.Close(cctx); err != nil {
			t.Errorf("stop PostgreSQL: %v", err)
		}
	})
	primary, replica := pg.Primary(), pg.Replicas()[0]
	instances := []*pglocal.Instance{primary, replica}

	var apiPorts []int
	for _, in := range instances {
		srv, err := restapi.New(restapi.Config{Listen: "127.0.0.1:0", LoopStale: time.Minute},
			&pgBackend{in: in}, log.With("api", in.Name))
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Listen(); err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(srv.Addr())
		p, _ := strconv.Atoi(port)
		apiPorts = append(apiPorts, p)
		sctx, stop := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- srv.Serve(sctx) }()
		t.Cleanup(func() {
			stop()
			if err := <-done; err != nil {
				t.Errorf("Serve %s: %v", in.Name, err)
			}
		})
	}

	h := startHAProxy(t, bin, instances, apiPorts)
	p0, p1 := "primary/"+primary.Name, "primary/"+replica.Name
	r0, r1 := "replicas/"+primary.Name, "replicas/"+replica.Name
	h.waitStates(t, map[string]string{p0: "UP", p1: "DOWN", r0: "DOWN", r1: "UP"}, 20*time.Second)

	for range 4 {
		name, rec, err := through(ctx, h.primary)
		if err != nil || name != primary.Name || rec {
			t.Fatalf("through the primary listener: %s in_recovery=%v err=%v, want %s out of recovery", name, rec, err, primary.Name)
		}
		name, rec, err = through(ctx, h.replica)
		if err != nil || name != replica.Name || !rec {
			t.Fatalf("through the replicas listener: %s in_recovery=%v err=%v, want %s in recovery", name, rec, err, replica.Name)
		}
	}

	// Fail over: the old primary stops, the replica is promoted.
	t0 := time.Now()
	if err := primary.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := replica.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	promoted := time.Since(t0)
	const bound = 15 * time.Second
	deadline := time.Now().Add(bound)
	for {
		name, rec, err := through(ctx, h.primary)
		if err == nil && name == replica.Name && !rec {
			break
		}
		if time.Now().After(deadline) {
			st, _ := h.states()
			t.Fatalf("primary listener not on %s %v after the promotion: last %s in_recovery=%v err=%v; states %v",
				replica.Name, bound, name, rec, err, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("primary listener reached the new primary %v after the old one was stopped (%v of it stopping and promoting)",
		time.Since(t0).Round(time.Millisecond), promoted.Round(time.Millisecond))
	h.waitStates(t, map[string]string{p0: "DOWN", p1: "UP", r0: "DOWN", r1: "DOWN"}, bound)
	// The new primary is the only one: every connection lands there.
	for range 4 {
		name, rec, err := through(ctx, h.primary)
		if err != nil || name != replica.Name || rec {
			t.Fatalf("through the primary listener after failover: %s in_recovery=%v err=%v", name, rec, err)
		}
	}
	// No replica is left: the replicas listener has no server.
	if name, _, err := through(ctx, h.replica); err == nil {
		t.Errorf("replicas listener still routes to %s with no replica left", name)
	}
}
