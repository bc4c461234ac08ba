package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pharos-ha/pharos/internal/pgauth"
	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/proxy"
	"github.com/pharos-ha/pharos/router"
	"github.com/pharos-ha/pharos/wire"
)

// The idle-client measurement runs the proxy in a child process (this test
// binary again, with idleChildEnv set), so that the RSS it reads is the
// proxy's alone and not the clients'.
const (
	idleChildEnv    = "PHAROS_TEST_IDLE_PROXY"    // the primary's address
	idleAuthFileEnv = "PHAROS_TEST_IDLE_AUTHFILE" // the child's auth_file
	idleTLSEnv      = "PHAROS_TEST_IDLE_TLS"      // "cert key" files: the child takes TLS (tls_mode allow)
)

// TestIdleClientMemory measures what an idle authenticated client costs
// the proxy: N clients (2000; PHAROS_IDLE_CLIENTS sets another number;
// PHAROS_IDLE_TLS=1 makes them TLS clients, for which no bound is checked)
// log in with SCRAM and stay idle, the child proxy reports its RSS (after
// a GC, memory returned to the OS) and goroutine count before and after.
// The goal: at most 10 KiB of RSS per client; one goroutine each,
// no server connection (the key's login is known, so they are attached
// lazily).
func TestIdleClientMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("opens thousands of connections")
	}
	n := 2000
	if v := os.Getenv("PHAROS_IDLE_CLIENTS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 || n > 20000 {
			t.Fatalf("PHAROS_IDLE_CLIENTS=%q: want 1..20000", v)
		}
	}
	authFile := writeAuthFile(t)
	useTLS := os.Getenv("PHAROS_IDLE_TLS") == "1"
	tlsFiles := ""
	if useTLS {
		cert, key, err := pglocal.SelfSignedCert()
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		certFile, keyFile := filepath.Join(dir, "proxy.crt"), filepath.Join(dir, "proxy.key")
		if os.WriteFile(certFile, cert, 0o600) != nil || os.WriteFile(keyFile, key, 0o600) != nil {
			t.Fatal("write the certificate")
		}
		tlsFiles = certFile + " " + keyFile
	}
	child := startIdleChild(t, authFile, tlsFiles)
	keys := userKeys(t, pglocal.UserSCRAM, pglocal.PasswordSCRAM)

	// One client first: the pool learns the key's login (one server
	// connection, idle afterwards).
	first := idleLogin(t, child.addr, keys, useTLS)
	_ = first.Close()
	waitFor(t, 10*time.Second, "the first server connection to go idle", func() bool {
		return child.stats(t)["idle_servers"] == 1
	})
	before := child.stats(t)
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	start := time.Now()
	for range n {
		conns = append(conns, idleLogin(t, child.addr, keys, useTLS))
	}
	loginTime := time.Since(start)
	after := child.stats(t)
	perClient := func(k string) float64 { return float64(after[k]-before[k]) / float64(n) }
	rss, goroutines := perClient("rss"), perClient("goroutines")
	t.Logf("TLS %v: %d idle clients (logged in in %v): RSS %.0f B per client (%.2f KiB; %.0f B before returning freed memory), Go heap %.0f B, goroutine stacks %.0f B, goroutines %.2f per client; server connections: %d active, %d idle",
		useTLS, n, loginTime.Round(time.Millisecond), rss, rss/1024, perClient("rss_unscavenged"), perClient("heap"), perClient("stack"), goroutines, after["active_servers"], after["idle_servers"])
	if goroutines > 1.01 {
		t.Errorf("%.2f goroutines per idle client, want 1", goroutines)
	}
	if after["active_servers"] != 0 || after["idle_servers"] != 1 {
		t.Errorf("idle clients hold server connections: %d active, %d idle", after["active_servers"], after["idle_servers"])
	}
	if rss > 10*1024 && !raceEnabled && !useTLS {
		t.Errorf("%.0f B of RSS per idle client, over the 10 KiB goal", rss)
	}
}

// idleChild is the proxy in the child process.
type idleChild struct {
	addr  string
	in    io.WriteCloser
	out   *bufio.Scanner
	cmd   *exec.Cmd
	lines chan string
}

func startIdleChild(t *testing.T, authFile, tlsFiles string) *idleChild {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), idleChildEnv+"="+cluster.Primary().Addr(), idleAuthFileEnv+"="+authFile, idleTLSEnv+"="+tlsFiles)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &idleChild{in: in, cmd: cmd, out: bufio.NewScanner(out), lines: make(chan string)}
	go func() {
		defer close(c.lines)
		for c.out.Scan() {
			c.lines <- c.out.Text()
		}
	}()
	t.Cleanup(func() {
		_ = in.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	c.addr = strings.TrimPrefix(c.line(t), "addr ")
	return c
}

func (c *idleChild) line(t *testing.T) string {
	t.Helper()
	select {
	case l, ok := <-c.lines:
		if !ok {
			t.Fatal("the child proxy exited")
		}
		return l
	case <-time.After(60 * time.Second):
		t.Fatal("no answer from the child proxy")
	}
	return ""
}

// stats asks the child for its figures.
func (c *idleChild) stats(t *testing.T) map[string]int64 {
	t.Helper()
	if _, err := io.WriteString(c.in, "stats\n"); err != nil {
		t.Fatal(err)
	}
	m := map[string]int64{}
	for _, f := range strings.Fields(c.line(t)) {
		k, v, _ := strings.Cut(f, "=")
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("child stats %q", f)
		}
		m[k] = n
	}
	return m
}

// runIdleChild is the child: a pooled proxy (SCRAM against the auth_file)
// in front of the primary alone, answering "stats" lines on stdin until
// stdin closes.
func runIdleChild(primary, authFile string) int {
	reg := prometheus.NewRegistry()
	m := metrics.NewProxy(reg)
	r := router.New(router.Config{}, nil, m)
	r.Update(router.Snapshot{Primary: "p", Members: []router.Member{{Name: "p", Addr: primary, Role: router.RolePrimary, Healthy: true}}})
	cfg := proxy.Config{RWListen: "127.0.0.1:0", AuthType: proxy.AuthSCRAM, AuthFile: authFile,
		PoolMode: proxy.PoolSession, MaxClientsPerEndpoint: 30000, MaxPendingPerEndpoint: 1000}
	if cert, key, ok := strings.Cut(os.Getenv(idleTLSEnv), " "); ok {
		cfg.TLSMode, cfg.CertFile, cfg.KeyFile = proxy.TLSAllow, cert, key
	}
	srv, err := proxy.New(cfg, r, nil, m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child proxy:", err)
		return 1
	}
	if err := srv.Listen(); err != nil {
		fmt.Fprintln(os.Stderr, "child proxy:", err)
		return 1
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	fmt.Printf("addr %s\n", srv.Addr(router.RW))
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		// Stacks grown at login shrink by half per GC cycle while they
		// use under a quarter: a few cycles, as a long-running proxy has.
		for range 4 {
			runtime.GC()
		}
		unscavenged := selfRSS()
		debug.FreeOSMemory()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if path := os.Getenv("PHAROS_TEST_IDLE_HEAPPROFILE"); path != "" {
			if f, err := os.Create(path); err == nil {
				_ = pprof.WriteHeapProfile(f)
				_ = f.Close()
			}
		}
		fmt.Printf("rss=%d rss_unscavenged=%d heap=%d stack=%d goroutines=%d active_servers=%d idle_servers=%d\n",
			selfRSS(), unscavenged, ms.HeapInuse, ms.StackInuse, runtime.NumGoroutine(),
			int64(testutil.ToFloat64(m.PoolServers.WithLabelValues("rw", metrics.PoolActive))),
			int64(testutil.ToFloat64(m.PoolServers.WithLabelValues("rw", metrics.PoolIdle))))
	}
	stop()
	if err := <-done; err != nil {
		fmt.Fprintln(os.Stderr, "child proxy:", err)
		return 1
	}
	return 0
}

// selfRSS reads VmRSS of this process, in bytes.
func selfRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return -1
}

// userKeys derives a user's SCRAM keys once, from the server's verifier.
func userKeys(t *testing.T, user, password string) pgauth.Keys {
	t.Helper()
	v := serverVerifier(t, user)
	keys, err := pgauth.NewSCRAMKeys(password, v.Salt, v.Iterations)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// idleLogin logs in to the proxy at addr as app_scram with SCRAM (keys
// derived once, so the client side costs no PBKDF2) and returns the
// connection after its ReadyForQuery.
func idleLogin(t *testing.T, addr string, keys pgauth.Keys, useTLS bool) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if useTLS {
		var answer [1]byte
		if _, err := c.Write(wire.AppendSSLRequest(nil)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, answer[:]); err != nil || answer[0] != 'S' {
			t.Fatalf("SSLRequest answered %q, %v", answer, err)
		}
		tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		c = tc
	}
	fe := pgproto3.NewFrontend(c, c)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": pglocal.UserSCRAM, "database": pglocal.AppDB, "application_name": "idle"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var ex *pgauth.ClientExchange
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("login: %v", err)
		}
		switch m := msg.(type) {
		case *pgproto3.AuthenticationSASL:
			ex = pgauth.NewClientExchange(keys, "idle-client-nonce")
			fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: pgauth.Mechanism, Data: ex.First()})
		case *pgproto3.AuthenticationSASLContinue:
			final, err := ex.ServerFirst(m.Data)
			if err != nil {
				t.Fatal(err)
			}
			fe.Send(&pgproto3.SASLResponse{Data: final})
		case *pgproto3.AuthenticationSASLFinal:
			if err := ex.ServerFinal(m.Data); err != nil {
				t.Fatal(err)
			}
			continue
		case *pgproto3.ErrorResponse:
			t.Fatalf("login refused: %s %s", m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			_ = c.SetDeadline(time.Time{})
			return c
		default:
			continue
		}
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
	}
}
