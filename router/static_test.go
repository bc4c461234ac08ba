package router_test

import (
	"context"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/router"
)

func validStatic() router.StaticConfig {
	return router.StaticConfig{
		Backends: []string{"127.0.0.1:5432", "[::1]:5433", "db.example:6432"},
		Interval: 200 * time.Millisecond,
		Timeout:  150 * time.Millisecond,
		User:     pglocal.UserHealth,
		Password: pglocal.PasswordHealth,
		Database: "postgres",
		SSLMode:  "disable",
	}
}

func TestStaticConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		edit    func(*router.StaticConfig)
		wantKey string // "" when valid
	}{
		{name: "valid", edit: func(*router.StaticConfig) {}},
		{name: "password and database may be empty", edit: func(c *router.StaticConfig) { c.Password, c.Database, c.SSLMode = "", "", "" }},
		{name: "no backends", edit: func(c *router.StaticConfig) { c.Backends = nil }, wantKey: "backends"},
		{name: "backend without port", edit: func(c *router.StaticConfig) { c.Backends = []string{"127.0.0.1"} }, wantKey: "backends"},
		{name: "backend without host", edit: func(c *router.StaticConfig) { c.Backends = []string{":5432"} }, wantKey: "backends"},
		{name: "bad backend after good ones", edit: func(c *router.StaticConfig) { c.Backends = append(c.Backends, "nope") }, wantKey: "backends"},
		{name: "port not a number", edit: func(c *router.StaticConfig) { c.Backends = []string{"127.0.0.1:pg"} }, wantKey: "backends"},
		{name: "port zero", edit: func(c *router.StaticConfig) { c.Backends = []string{"127.0.0.1:0"} }, wantKey: "backends"},
		{name: "port too large", edit: func(c *router.StaticConfig) { c.Backends = []string{"127.0.0.1:65536"} }, wantKey: "backends"},
		{name: "interval zero", edit: func(c *router.StaticConfig) { c.Interval = 0 }, wantKey: "health_check_interval"},
		{name: "timeout zero", edit: func(c *router.StaticConfig) { c.Timeout = 0 }, wantKey: "health_check_timeout"},
		{name: "timeout equal to interval", edit: func(c *router.StaticConfig) { c.Timeout = c.Interval }, wantKey: "health_check_timeout"},
		{name: "timeout above interval", edit: func(c *router.StaticConfig) { c.Timeout = 2 * c.Interval }, wantKey: "health_check_timeout"},
		{name: "missing user", edit: func(c *router.StaticConfig) { c.User = "" }, wantKey: "health_user"},
		{name: "require_auth widened", edit: func(c *router.StaticConfig) { c.RequireAuth = "scram-sha-256,md5" }},
		{name: "require_auth unknown method", edit: func(c *router.StaticConfig) { c.RequireAuth = "scram" }, wantKey: "health_require_auth"},
		{name: "require_auth mixing negations", edit: func(c *router.StaticConfig) { c.RequireAuth = "md5,!password" }, wantKey: "health_require_auth"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := validStatic()
			tc.edit(&cfg)
			err := cfg.Validate()
			_, nerr := router.NewStatic(cfg, nil, metrics.NewProxy(prometheus.NewRegistry()))
			if tc.wantKey == "" {
				if err != nil || nerr != nil {
					t.Fatalf("Validate = %v, NewStatic = %v; want both nil", err, nerr)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate = nil, want an error naming %s", tc.wantKey)
			}
			if !strings.HasPrefix(err.Error(), tc.wantKey+":") {
				t.Errorf("Validate = %q, want it to start with %q", err, tc.wantKey+":")
			}
			if nerr == nil || nerr.Error() != err.Error() {
				t.Errorf("NewStatic error = %v, want the Validate error %q", nerr, err)
			}
			if strings.Contains(err.Error(), pglocal.PasswordHealth) {
				t.Errorf("error %q shows the password", err)
			}
		})
	}
}

// --- static source against real servers ---

const (
	firstBound      = 10 * time.Second // first topology: includes connecting
	transitionBound = 2 * time.Second  // a server change reaches the router
)

// staticRun is a static source feeding a fresh router until the test ends.
type staticRun struct {
	r   *router.Router
	m   *metrics.Proxy
	reg *prometheus.Registry
}

func runStatic(t *testing.T, backends []string, password string) *staticRun {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := metrics.NewProxy(reg)
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	r := router.New(router.Config{}, log, m)
	src, err := router.NewStatic(router.StaticConfig{
		Backends: backends,
		Interval: 500 * time.Millisecond,
		Timeout:  400 * time.Millisecond,
		User:     pglocal.UserHealth,
		Password: password,
		Database: "postgres",
		SSLMode:  "disable",
	}, log, m)
	if err != nil {
		t.Fatalf("NewStatic: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, r) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("static source Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("static source Run did not return within 5s of its context ending")
		}
	})
	return &staticRun{r: r, m: m, reg: reg}
}

// waitTopology waits, at most bound, until the router's rw target and ro
// set (in any order) are as wanted.
func (s *staticRun) waitTopology(t *testing.T, bound time.Duration, what, wantRW string, wantRO []string) {
	t.Helper()
	timer := time.NewTimer(bound)
	defer timer.Stop()
	wantRO = sorted(wantRO)
	for {
		ch := s.r.Changed()
		rw, ro := s.r.Current()
		if rw == wantRW && slices.Equal(sorted(ro), wantRO) {
			return
		}
		select {
		case <-ch:
		case <-timer.C:
			t.Fatalf("%s: after %v rw = %q, ro = %v; want rw = %q, ro = %v", what, bound, rw, ro, wantRW, wantRO)
		}
	}
}

// waitMetric polls, at most bound, until cond holds for the value of c.
func waitMetric(t *testing.T, bound time.Duration, what string, c prometheus.Collector, cond func(float64) bool) float64 {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		v := testutil.ToFloat64(c)
		if cond(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %v after %v", what, v, bound)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// series returns the value of the metric name with label backend=addr as
// the registry exports it, and whether that series exists at all (reading
// through a *Vec would create it).
func (s *staticRun) series(t *testing.T, name, addr string) (float64, bool) {
	t.Helper()
	mfs, err := s.reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "backend" && l.GetValue() == addr {
					return m.GetGauge().GetValue(), true
				}
			}
		}
	}
	return 0, false
}

// freeAddr is a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	port, err := pglocal.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// TestStatic runs the static source against the shared cluster. The
// subtests run one after another: one of them stops and restarts the
// primary.
func TestStatic(t *testing.T) {
	t.Parallel()
	c := sharedCluster(t)
	p, rep := c.Primary(), c.Replicas()[0]
	pa, ra := p.Addr(), rep.Addr()

	t.Run("roles detected", func(t *testing.T) {
		s := runStatic(t, []string{pa, ra}, pglocal.PasswordHealth)
		s.waitTopology(t, firstBound, "startup", pa, []string{ra})
		wantGauge(t, "RWAvailable", s.m.RWAvailable, 1)
		wantGauge(t, "ROBackends", s.m.ROBackends, 1)
		for _, tc := range []struct {
			addr string
			role router.Role
		}{{pa, router.RolePrimary}, {ra, router.RoleReplica}} {
			wantGauge(t, "BackendUp "+tc.addr, s.m.BackendUp.WithLabelValues(tc.addr), 1)
			wantGauge(t, "BackendRole "+tc.addr+" "+string(tc.role), s.m.BackendRole.WithLabelValues(tc.addr, string(tc.role)), 1)
		}
		rw := mustAcquire(t, s.r, router.RW)
		ro := mustAcquire(t, s.r, router.RO)
		if rw.Backend.Addr != pa || ro.Backend.Addr != ra {
			t.Errorf("rw route dials %s, ro route %s; want %s and %s", rw.Backend.Addr, ro.Backend.Addr, pa, ra)
		}
	})

	t.Run("lag measured", func(t *testing.T) {
		s := runStatic(t, []string{pa, ra}, pglocal.PasswordHealth)
		s.waitTopology(t, firstBound, "startup", pa, []string{ra})
		// Some WAL so there is something to replay.
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		conn, err := p.Connect(ctx, pglocal.SuperUser, "", "postgres")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(ctx, "CREATE TABLE lag_probe AS SELECT g FROM generate_series(1, 1000) g; DROP TABLE lag_probe"); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(transitionBound)
		for {
			if v, ok := s.series(t, "pharos_backend_lag_bytes", ra); ok {
				if v < 0 {
					t.Errorf("lag of replica %s = %v, want >= 0", ra, v)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no pharos_backend_lag_bytes series for replica %s after %v", ra, transitionBound)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if v, ok := s.series(t, "pharos_backend_lag_bytes", pa); ok {
			t.Errorf("primary %s has a lag series (%v); lag is a replica's", pa, v)
		}
	})

	t.Run("wrong password", func(t *testing.T) {
		s := runStatic(t, []string{pa, ra}, "not-"+pglocal.PasswordHealth)
		changed := s.r.Changed()
		// Several rounds of failures on both.
		for _, addr := range []string{pa, ra} {
			waitMetric(t, firstBound, "health check failures of "+addr,
				s.m.HealthCheckError.WithLabelValues(addr), func(v float64) bool { return v >= 3 })
		}
		select {
		case <-changed:
			rw, ro := s.r.Current()
			t.Errorf("routing changed although every check failed: rw = %q, ro = %v", rw, ro)
		default:
		}
		if rw, ro := s.r.Current(); rw != "" || len(ro) != 0 {
			t.Errorf("rw = %q, ro = %v; want none", rw, ro)
		}
		wantGauge(t, "RWAvailable", s.m.RWAvailable, 0)
		wantGauge(t, "ROBackends", s.m.ROBackends, 0)
		for _, addr := range []string{pa, ra} {
			wantGauge(t, "BackendUp "+addr, s.m.BackendUp.WithLabelValues(addr), 0)
			wantGauge(t, "BackendRole "+addr+" unknown", s.m.BackendRole.WithLabelValues(addr, string(router.RoleUnknown)), 1)
		}
		wantNoRoute(t, s.r, router.RW)
		wantNoRoute(t, s.r, router.RO)
	})

	t.Run("unreachable address", func(t *testing.T) {
		dead := freeAddr(t)
		s := runStatic(t, []string{pa, ra, dead}, pglocal.PasswordHealth)
		s.waitTopology(t, firstBound, "startup", pa, []string{ra})
		waitMetric(t, firstBound, "health check failures of "+dead,
			s.m.HealthCheckError.WithLabelValues(dead), func(v float64) bool { return v >= 2 })
		if rw, ro := s.r.Current(); rw != pa || !slices.Equal(ro, []string{ra}) {
			t.Errorf("rw = %q, ro = %v; want %q, [%s]", rw, ro, pa, ra)
		}
		wantGauge(t, "BackendUp "+dead, s.m.BackendUp.WithLabelValues(dead), 0)
		wantGauge(t, "BackendRole "+dead+" unknown", s.m.BackendRole.WithLabelValues(dead, string(router.RoleUnknown)), 1)
		wantGauge(t, "BackendUp "+pa, s.m.BackendUp.WithLabelValues(pa), 1)
		wantGauge(t, "BackendUp "+ra, s.m.BackendUp.WithLabelValues(ra), 1)
		for range 4 {
			rt := mustAcquire(t, s.r, router.RO)
			if rt.Backend.Addr == dead {
				t.Fatalf("ro route to the unreachable %s", dead)
			}
		}
	})

	t.Run("primary stopped and started", func(t *testing.T) {
		s := runStatic(t, []string{pa, ra}, pglocal.PasswordHealth)
		s.waitTopology(t, firstBound, "startup", pa, []string{ra})
		rw := mustAcquire(t, s.r, router.RW)
		ro := mustAcquire(t, s.r, router.RO)
		t.Cleanup(func() {
			// Leave the shared cluster as found, whatever happened.
			if !p.Running() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				if err := p.Start(ctx); err != nil {
					t.Errorf("restart primary: %v", err)
				}
			}
		})

		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		if err := p.Stop(ctx); err != nil {
			t.Fatalf("stop primary: %v", err)
		}
		s.waitTopology(t, transitionBound, "primary stopped", "", []string{ra})
		if !revoked(rw) {
			t.Errorf("rw route on the stopped primary not revoked")
		}
		if revoked(ro) {
			t.Errorf("ro route on the replica revoked by the primary's stop")
		}
		wantGauge(t, "RWAvailable", s.m.RWAvailable, 0)
		wantGauge(t, "BackendUp "+pa, s.m.BackendUp.WithLabelValues(pa), 0)
		wantNoRoute(t, s.r, router.RW)

		if err := p.Start(ctx); err != nil {
			t.Fatalf("start primary: %v", err)
		}
		s.waitTopology(t, transitionBound, "primary started", pa, []string{ra})
		wantGauge(t, "RWAvailable", s.m.RWAvailable, 1)
		if next := mustAcquire(t, s.r, router.RW); next.Backend.Addr != pa || revoked(next) {
			t.Errorf("rw route after restart: %s revoked=%v, want %s live", next.Backend.Addr, revoked(next), pa)
		}
	})
}

// TestStaticSplitBrain promotes the replica while the primary still runs,
// so it needs a cluster of its own.
func TestStaticSplitBrain(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	p, rep := c.Primary(), c.Replicas()[0]
	pa, ra := p.Addr(), rep.Addr()
	s := runStatic(t, []string{pa, ra}, pglocal.PasswordHealth)
	s.waitTopology(t, firstBound, "startup", pa, []string{ra})
	oldRW := mustAcquire(t, s.r, router.RW)
	ro := mustAcquire(t, s.r, router.RO)
	wantGauge(t, "split-brain total before", s.m.SplitBrain, 0)

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := rep.Promote(ctx); err != nil {
		t.Fatalf("promote %s: %v", rep.Name, err)
	}
	s.waitTopology(t, transitionBound, "replica promoted beside the primary", "", nil)
	wantGauge(t, "split-brain total", s.m.SplitBrain, 1)
	wantGauge(t, "RWAvailable", s.m.RWAvailable, 0)
	if !revoked(oldRW) {
		t.Errorf("rw route on the old primary not revoked at split-brain")
	}
	// A promoted replica is writable: its ro sessions end (the ro
	// endpoint promises read-only ones), unless ro_fallback_to_primary.
	if !revoked(ro) {
		t.Errorf("ro route on the promoted node not revoked")
	} else if why := ro.RevokedBecause(); !strings.Contains(why, "promoted to primary") {
		t.Errorf("ro route on the promoted node revoked because %q, want it to say it was promoted", why)
	}
	wantNoRoute(t, s.r, router.RW)
	for _, addr := range []string{pa, ra} {
		wantGauge(t, "BackendRole "+addr+" primary", s.m.BackendRole.WithLabelValues(addr, string(router.RolePrimary)), 1)
	}
	// It lasts over more rounds and is counted once.
	time.Sleep(500 * time.Millisecond) // two more rounds at 200ms
	if rw, _ := s.r.Current(); rw != "" {
		t.Errorf("rw = %q during split-brain, want none", rw)
	}
	wantGauge(t, "split-brain total while it lasts", s.m.SplitBrain, 1)

	if err := p.Stop(ctx); err != nil {
		t.Fatalf("stop old primary: %v", err)
	}
	s.waitTopology(t, transitionBound, "old primary stopped", ra, nil)
	wantGauge(t, "split-brain total after", s.m.SplitBrain, 1)
	wantGauge(t, "RWAvailable", s.m.RWAvailable, 1)
	next := mustAcquire(t, s.r, router.RW)
	if next.Backend.Addr != ra || revoked(next) {
		t.Errorf("rw route after the old primary stopped: %s revoked=%v, want %s live", next.Backend.Addr, revoked(next), ra)
	}
	if !revoked(oldRW) {
		t.Errorf("rw route on the old primary not revoked")
	}
}

// TestHealthCheckSendsNoPasswordToAServerThatAsksForIt: a host at a
// backend's address that asks for the password itself (cleartext, md5)
// fails the check with the reason in the log and never receives a
// PasswordMessage; with the method allowed it would have.
func TestHealthCheckSendsNoPasswordToAServerThatAsksForIt(t *testing.T) {
	for _, method := range []string{"password", "md5"} {
		t.Run(method, func(t *testing.T) {
			srv, err := pglocal.NewHostileServer(method)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			var logs strings.Builder
			log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			m := metrics.NewProxy(prometheus.NewRegistry())
			cfg := validStatic()
			cfg.SSLMode = "prefer"
			round := func(cfg router.StaticConfig) map[string]bool {
				h, err := router.NewHealthChecker(cfg, log, m)
				if err != nil {
					t.Fatal(err)
				}
				defer h.Close()
				return h.Round(t.Context(), []router.HealthTarget{{Name: srv.Addr, Addr: srv.Addr}})
			}
			if failed := round(cfg); !failed[srv.Addr] {
				t.Errorf("the hostile backend passed the check: %v", failed)
			}
			want := `authentication method requirement \"scram-sha-256\" failed: server requested ` + method + ` authentication`
			if !strings.Contains(logs.String(), want) {
				t.Errorf("log lacks %s:\n%s", want, logs.String())
			}
			if got := testutil.ToFloat64(m.HealthCheckError.WithLabelValues(srv.Addr)); got != 1 {
				t.Errorf("health check errors %v, want 1", got)
			}
			if len(srv.Startups()) == 0 {
				t.Fatal("the check never reached the hostile server")
			}
			if pw := srv.Passwords(); len(pw) != 0 {
				t.Fatalf("the hostile server received %d PasswordMessage(s): %q", len(pw), pw)
			}

			cfg.RequireAuth = "scram-sha-256," + method
			round(cfg)
			if len(srv.Passwords()) == 0 {
				t.Fatal("with the method allowed the fake server saw no password: the test cannot see a leak")
			}
		})
	}
}
