package proxy_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/proxy"
	"github.com/pharos-ha/pharos/router"
)

// cluster is one primary and one streaming replica with SSL on, shared by
// every test in the package. Tests must leave it as they found it (a
// primary and a replica, both up); ones that need to break servers start
// their own with newCluster.
var cluster *pglocal.Cluster

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if primary := os.Getenv(idleChildEnv); primary != "" {
		// The proxy process of TestIdleClientMemory, not a test run.
		return runIdleChild(primary, os.Getenv(idleAuthFileEnv))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pglocal.NewCluster(ctx, pglocal.Options{Replicas: 1, SSL: true, Fast: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start PostgreSQL:", err)
		return 1
	}
	cluster = c
	code := m.Run()
	cctx, ccancel := context.WithTimeout(context.Background(), time.Minute)
	defer ccancel()
	if err := c.Close(cctx); err != nil {
		fmt.Fprintln(os.Stderr, "stop PostgreSQL:", err)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			return 1
		}
	}
	return code
}

// testProxy is a proxy with its own router, static source and metrics,
// running until the test ends.
type testProxy struct {
	*proxy.Server
	Router  *router.Router
	Metrics *metrics.Proxy
	Reg     *prometheus.Registry
	stop    context.CancelFunc
	done    chan error
}

// proxyOptions adjust a test proxy before it starts.
type proxyOptions struct {
	Config   proxy.Config
	Router   router.Config
	Backends []*pglocal.Instance // default: the shared cluster's instances
	Cluster  *pglocal.Cluster    // default: the shared cluster
	// Ready says when the proxy may be used; default: rw has a target.
	Ready func(rw string, ro []string) bool
	// Log also gets the proxy's log lines (the test's log always does).
	Log io.Writer
}

// startProxy starts a proxy on free loopback ports in front of the shared
// cluster (or opts.Backends) and waits until its rw endpoint has a target
// (and ro a replica when any backend is one).
func startProxy(t *testing.T, opts proxyOptions) *testProxy {
	t.Helper()
	if opts.Cluster == nil {
		opts.Cluster = cluster
	}
	if opts.Backends == nil {
		opts.Backends = opts.Cluster.Instances()
	}
	cfg := opts.Config
	if cfg.RWListen == "" {
		cfg.RWListen = "127.0.0.1:0"
	}
	if cfg.ROListen == "" {
		cfg.ROListen = "127.0.0.1:0"
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 2 * time.Second
	}
	if cfg.RouteWait == 0 {
		cfg.RouteWait = time.Second
	}
	log := testLogger(t)
	if opts.Log != nil {
		log = slog.New(slog.NewTextHandler(io.MultiWriter(tWriter{t}, opts.Log), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	reg := prometheus.NewRegistry()
	m := metrics.NewProxy(reg)
	r := router.New(opts.Router, log, m)
	var addrs []string
	for _, in := range opts.Backends {
		addrs = append(addrs, in.Addr())
	}
	src, err := router.NewStatic(router.StaticConfig{
		Backends: addrs,
		Interval: 500 * time.Millisecond,
		Timeout:  400 * time.Millisecond,
		User:     pglocal.UserHealth,
		Password: pglocal.PasswordHealth,
		Database: "postgres",
		SSLMode:  "disable",
	}, log, m)
	if err != nil {
		t.Fatalf("static source: %v", err)
	}
	srv, err := proxy.New(cfg, r, log, m)
	if err != nil {
		t.Fatalf("proxy.New: %v", err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	srcCtx, stopSrc := context.WithCancel(context.Background())
	tp := &testProxy{Server: srv, Router: r, Metrics: m, Reg: reg, stop: stop, done: make(chan error, 1)}
	srcDone := make(chan struct{})
	go func() {
		defer close(srcDone)
		_ = src.Run(srcCtx, r)
	}()
	go func() {
		err := srv.Serve(ctx)
		stopSrc()
		<-srcDone
		tp.done <- err
	}()
	t.Cleanup(func() { tp.Stop(t) })

	ready := opts.Ready
	if ready == nil {
		ready = func(rw string, _ []string) bool { return rw != "" }
	}
	wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		changed := r.Changed()
		if ready(r.Current()) {
			break
		}
		select {
		case <-changed:
		case <-wctx.Done():
			t.Fatalf("proxy never became ready with backends %v", addrs)
		}
	}
	return tp
}

// Stop drains the proxy and waits for Serve to return; safe to call twice.
func (p *testProxy) Stop(t *testing.T) {
	t.Helper()
	p.stop()
	if p.done == nil {
		return
	}
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Errorf("proxy did not stop within 15s")
	}
	p.done = nil
}

// DSN returns a connection string for an endpoint of the proxy, for user
// (with its pglocal password) on the app database. extra is appended
// (e.g. "sslmode=require").
func (p *testProxy) DSN(ep router.Endpoint, user, extra string) string {
	addr := p.Addr(ep).String()
	host, port, _ := strings.Cut(addr, ":")
	pw := map[string]string{pglocal.UserMD5: pglocal.PasswordMD5, pglocal.UserSCRAM: pglocal.PasswordSCRAM, pglocal.UserHealth: pglocal.PasswordHealth}[user]
	dsn := fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=disable connect_timeout=10", host, port, user, pglocal.AppDB)
	if pw != "" {
		dsn += " password=" + pw
	}
	if extra != "" {
		dsn += " " + extra
	}
	return dsn
}

// connect opens a pgx connection through the proxy, closed at test end.
func (p *testProxy) connect(t *testing.T, ep router.Endpoint, user, extra string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.DSN(ep, user, extra))
	if err != nil {
		t.Fatalf("connect through proxy %s as %s: %v", ep, user, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(ctx)
	})
	return conn
}

// counter reads a counter or gauge with the given labels.
func counter(c interface {
	WithLabelValues(...string) prometheus.Counter
}, labels ...string) float64 {
	return testutil.ToFloat64(c.WithLabelValues(labels...))
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// privateCluster starts a cluster of the test's own (one it may break),
// closed when the test ends.
func privateCluster(ctx context.Context, t *testing.T, opts pglocal.Options) *pglocal.Cluster {
	t.Helper()
	c, err := pglocal.NewCluster(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		if err := c.Close(cctx); err != nil {
			t.Errorf("close private cluster: %v", err)
		}
	})
	return c
}
