package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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

// startPoolProxy is a proxy authenticating with SCRAM against the test
// auth_file, pooling in session mode, with cfg's pool settings.
func startPoolProxy(t *testing.T, cfg proxy.Config) *testProxy {
	t.Helper()
	cfg.AuthType = proxy.AuthSCRAM
	cfg.AuthFile = writeAuthFile(t)
	cfg.PoolMode = proxy.PoolSession
	return startProxy(t, proxyOptions{
		Config: cfg,
		Ready:  func(rw string, ro []string) bool { return rw != "" && len(ro) > 0 },
	})
}

// backendPID runs pg_backend_pid() on conn.
func backendPID(t *testing.T, conn *pgx.Conn) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var pid int
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatalf("pg_backend_pid: %v", err)
	}
	return pid
}

// session opens a pooled session, runs f on it and closes it (Terminate),
// returning the server pid it had.
func (p *testProxy) session(t *testing.T, ep router.Endpoint, extra string, f func(*pgx.Conn)) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.DSN(ep, pglocal.UserSCRAM, extra))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	pid := backendPID(t, conn)
	if f != nil {
		f(conn)
	}
	if err := conn.Close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
	return pid
}

// poolCount reads pharos_proxy_pool_server_connections_total.
func (p *testProxy) poolCount(ep router.Endpoint, o metrics.PoolOutcome) float64 {
	return counter(p.Metrics.PoolServerConns, ep.String(), string(o))
}

// waitIdle waits until the endpoint has n idle pooled connections.
func (p *testProxy) waitIdle(t *testing.T, ep router.Endpoint, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := gauge(p.Metrics.PoolServers, ep.String(), metrics.PoolIdle)
		if got == float64(n) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v idle pooled connections, want %d", ep, got, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPoolReuse(t *testing.T) {
	p := startPoolProxy(t, proxy.Config{})
	for _, ep := range []router.Endpoint{router.RW, router.RO} {
		t.Run(ep.String(), func(t *testing.T) {
			first := p.session(t, ep, "", nil)
			p.waitIdle(t, ep, 1)
			second := p.session(t, ep, "", nil)
			if first != second {
				t.Fatalf("second client got server pid %d, first had %d: not reused", second, first)
			}
			p.waitIdle(t, ep, 1)
			if o, r := p.poolCount(ep, metrics.PoolOpened), p.poolCount(ep, metrics.PoolReused); o != 1 || r != 1 {
				t.Fatalf("opened %v reused %v, want 1 and 1", o, r)
			}
		})
	}
}

// gauge reads a gauge with the given labels.
func gauge(g *prometheus.GaugeVec, labels ...string) float64 {
	return testutil.ToFloat64(g.WithLabelValues(labels...))
}

// TestPoolSettingsSeparate: a server connection is reused only for the
// same startup parameters, and what a client SETs does not reach the
// next one (server_reset_query).
func TestPoolSettingsSeparate(t *testing.T) {
	p := startPoolProxy(t, proxy.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t.Run("other application_name, other connection", func(t *testing.T) {
		a := p.session(t, router.RW, "application_name=pool_a", nil)
		b := p.session(t, router.RW, "application_name=pool_b", nil)
		if a == b {
			t.Fatalf("application_name pool_a and pool_b shared server pid %d", a)
		}
		// Each is reused for its own parameters, written in any order.
		if again := p.session(t, router.RW, "application_name=pool_a", nil); again != a {
			t.Fatalf("pool_a got pid %d, had %d", again, a)
		}
	})
	t.Run("a SET is not seen by the next client", func(t *testing.T) {
		var tz string
		first := p.session(t, router.RW, "application_name=pool_set", func(c *pgx.Conn) {
			tz = c.PgConn().ParameterStatus("TimeZone")
			for _, q := range []string{"SET TimeZone = 'Asia/Tokyo'", "SET work_mem = '77MB'",
				"CREATE TEMP TABLE pool_tmp (x int)", "PREPARE pool_stmt AS SELECT 1", "LISTEN pool_chan",
				"SELECT pg_advisory_lock(4242)"} {
				if _, err := c.Exec(ctx, q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			if got := c.PgConn().ParameterStatus("TimeZone"); got != "Asia/Tokyo" {
				t.Fatalf("TimeZone reported %q after SET", got)
			}
		})
		p.waitIdle(t, router.RW, 3)
		conn := p.connect(t, router.RW, pglocal.UserSCRAM, "application_name=pool_set")
		if pid := backendPID(t, conn); pid != first {
			t.Fatalf("not reused (pid %d, had %d): the test proves nothing", pid, first)
		}
		if got := conn.PgConn().ParameterStatus("TimeZone"); got != tz {
			t.Errorf("second client was told TimeZone %q, want the login's %q", got, tz)
		}
		var workMem, tzNow string
		var tmp, stmts, listens, locks int
		err := conn.QueryRow(ctx, `SELECT current_setting('work_mem'), current_setting('TimeZone'),
			(SELECT count(*) FROM pg_class WHERE relname = 'pool_tmp' AND relpersistence = 't'),
			(SELECT count(*) FROM pg_prepared_statements WHERE name = 'pool_stmt'),
			(SELECT count(*) FROM pg_listening_channels()),
			(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())`).
			Scan(&workMem, &tzNow, &tmp, &stmts, &listens, &locks)
		if err != nil {
			t.Fatal(err)
		}
		if workMem == "77MB" || tzNow == "Asia/Tokyo" || tmp != 0 || stmts != 0 || listens != 0 || locks != 0 {
			t.Errorf("the first client's state reached the second: work_mem %s TimeZone %s temp %d prepared %d listening %d advisory locks %d",
				workMem, tzNow, tmp, stmts, listens, locks)
		}
	})
	t.Run("startup settings are the client's own", func(t *testing.T) {
		var seen string
		p.session(t, router.RW, "application_name=pool_opt options='-c work_mem=5MB'", func(c *pgx.Conn) {
			if err := c.QueryRow(ctx, "SHOW work_mem").Scan(&seen); err != nil {
				t.Fatal(err)
			}
		})
		if seen != "5MB" {
			t.Fatalf("work_mem %s, want the options' 5MB", seen)
		}
		p.session(t, router.RW, "application_name=pool_opt", func(c *pgx.Conn) {
			if err := c.QueryRow(ctx, "SHOW work_mem").Scan(&seen); err != nil {
				t.Fatal(err)
			}
		})
		if seen == "5MB" {
			t.Fatal("a client without the options got the other's work_mem")
		}
	})
}

// TestPoolUncleanLeave: a client leaving mid-transaction, mid-query, with
// an extended query left without Sync, or with Terminate sent behind a
// query leaves a connection that is closed, never reused; one leaving idle
// without Terminate (a dropped socket) leaves it reusable.
func TestPoolUncleanLeave(t *testing.T) {
	p := startPoolProxy(t, proxy.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	open := func(app string) *pgx.Conn {
		return p.connect(t, router.RW, pglocal.UserSCRAM, "application_name="+app)
	}
	t.Run("in a transaction", func(t *testing.T) {
		c := open("pool_tx")
		pid := backendPID(t, c)
		if _, err := c.Exec(ctx, "BEGIN"); err != nil {
			t.Fatal(err)
		}
		before := p.poolCount(router.RW, metrics.PoolDiscarded)
		_ = c.Close(ctx)
		waitCount(t, func() float64 { return p.poolCount(router.RW, metrics.PoolDiscarded) }, before+1)
		if again := backendPID(t, open("pool_tx")); again == pid {
			t.Fatalf("the connection left in a transaction was reused (pid %d)", pid)
		}
	})
	t.Run("mid-query", func(t *testing.T) {
		c := open("pool_busy")
		pid := backendPID(t, c)
		before := p.poolCount(router.RW, metrics.PoolDiscarded)
		go func() { _, _ = c.Exec(context.Background(), "SELECT pg_sleep(5)") }()
		waitActive(t, cluster.Primary(), "pid = $1 AND query LIKE '%pg_sleep(5)%'", int32(pid))
		_ = c.PgConn().Conn().Close()
		waitCount(t, func() float64 { return p.poolCount(router.RW, metrics.PoolDiscarded) }, before+1)
		if again := backendPID(t, open("pool_busy")); again == pid {
			t.Fatalf("the connection left mid-query was reused (pid %d)", pid)
		}
	})
	// The client's last words, written raw after its login, then its socket
	// closed: neither ends at a sync point the server has answered.
	for _, tc := range []struct {
		name, app string
		last      []interface{ Encode([]byte) ([]byte, error) }
	}{
		{"after a Parse without Sync", "pool_nosync", []interface{ Encode([]byte) ([]byte, error) }{&pgproto3.Parse{Query: "SELECT 1"}}},
		{"a query and Terminate in one write", "pool_pipequit", []interface{ Encode([]byte) ([]byte, error) }{&pgproto3.Query{String: "SELECT 1"}, &pgproto3.Terminate{}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := open(tc.app)
			pid := backendPID(t, c)
			before := p.poolCount(router.RW, metrics.PoolDiscarded)
			var out []byte
			for _, m := range tc.last {
				var err error
				if out, err = m.Encode(out); err != nil {
					t.Fatal(err)
				}
			}
			raw := c.PgConn().Conn()
			if _, err := raw.Write(out); err != nil {
				t.Fatal(err)
			}
			_ = raw.Close()
			waitCount(t, func() float64 { return p.poolCount(router.RW, metrics.PoolDiscarded) }, before+1)
			if again := backendPID(t, open(tc.app)); again == pid {
				t.Fatalf("the connection was reused (pid %d)", pid)
			}
		})
	}
	t.Run("idle, socket dropped", func(t *testing.T) {
		c := open("pool_drop")
		pid := backendPID(t, c)
		_ = c.PgConn().Conn().Close()
		p.waitIdle(t, router.RW, 1) // the other subtests' second clients are still connected
		if again := backendPID(t, open("pool_drop")); again != pid {
			t.Fatalf("idle connection of a dropped client not reused: pid %d, had %d", again, pid)
		}
	})
}

// waitCount waits until read returns want.
func waitCount(t *testing.T, read func() float64, want float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for read() != want {
		if time.Now().After(deadline) {
			t.Fatalf("count %v, want %v", read(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPoolSizeWait: at pool_size a client's first query waits for a
// connection to come back (and gets it), and past query_wait_timeout it
// gets PgBouncer's 08P01 with a message that names the limit.
func TestPoolSizeWait(t *testing.T) {
	p := startPoolProxy(t, proxy.Config{PoolSize: 1, QueryWaitTimeout: 1500 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	first := p.session(t, router.RW, "", nil) // the pool learns the login
	holder := p.connect(t, router.RW, pglocal.UserSCRAM, "")
	if pid := backendPID(t, holder); pid != first {
		t.Fatalf("pid %d, want the pooled %d", pid, first)
	}
	// A client of the same key logs in at once (from the pool's memory)
	// and waits at its first query.
	waiter := p.connect(t, router.RW, pglocal.UserSCRAM, "")
	t.Run("waits, then gets the connection given back", func(t *testing.T) {
		got := make(chan int, 1)
		go func() {
			var pid int
			_ = waiter.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid)
			got <- pid
		}()
		waitCount(t, func() float64 { return gauge(p.Metrics.PoolClients, "rw", metrics.PoolWaiting) }, 1)
		if err := holder.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if pid := <-got; pid != first {
			t.Fatalf("waiter got pid %d, want the returned %d", pid, first)
		}
		waitCount(t, func() float64 { return gauge(p.Metrics.PoolClients, "rw", metrics.PoolWaiting) }, 0)
		holder = waiter // it holds the one connection now
	})
	t.Run("query_wait_timeout", func(t *testing.T) {
		late := p.connect(t, router.RW, pglocal.UserSCRAM, "")
		start := time.Now()
		_, err := late.Exec(ctx, "SELECT 1")
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "08P01" || !strings.Contains(pe.Message, "query_wait_timeout") || !strings.Contains(pe.Message, "pool_size 1") {
			t.Fatalf("got %v, want FATAL 08P01 naming query_wait_timeout and pool_size 1", err)
		}
		if d := time.Since(start); d < 1400*time.Millisecond || d > 5*time.Second {
			t.Errorf("refused after %v, want about query_wait_timeout (1.5s)", d)
		}
		if n := testutil.CollectAndCount(p.Metrics.PoolWait); n != 1 {
			t.Errorf("pool wait histogram has %d series", n)
		}
	})
	if _, err := holder.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("the holder lost its connection: %v", err)
	}
}

// TestPoolMaxDBConnections: the limit spans the pools of a database: a
// second user waits for the first user's connection to be closed.
func TestPoolMaxDBConnections(t *testing.T) {
	p := startPoolProxy(t, proxy.Config{MaxDBConnections: 1, QueryWaitTimeout: 10 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	holder := p.connect(t, router.RW, pglocal.UserSCRAM, "")
	backendPID(t, holder)
	got := make(chan error, 1)
	go func() {
		// app_trust's pool is another pool of the same database: its
		// login waits (no memory of it yet, so at its connect).
		conn, err := pgx.Connect(ctx, p.DSN(router.RW, pglocal.UserTrust, "password="+authTrustPassword))
		if err == nil {
			_, err = conn.Exec(ctx, "SELECT 1")
			_ = conn.Close(ctx)
		}
		got <- err
	}()
	waitCount(t, func() float64 { return gauge(p.Metrics.PoolClients, "rw", metrics.PoolWaiting) }, 1)
	if err := holder.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// app_scram's connection goes back idle; at the limit it is closed to
	// make room for the waiting app_trust.
	if err := <-got; err != nil {
		t.Fatalf("second user: %v", err)
	}
}

// TestPoolServerKilledWhileIdle: a pooled connection whose server process
// was terminated is never handed out: the next client gets a fresh one
// and does not see an error.
func TestPoolServerKilledWhileIdle(t *testing.T) {
	p := startPoolProxy(t, proxy.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pid := p.session(t, router.RW, "application_name=pool_kill", nil)
	p.waitIdle(t, router.RW, 1)
	super := superConnect(t, cluster.Primary(), "postgres")
	if _, err := super.Exec(ctx, "SELECT pg_terminate_backend($1, 5000)", pid); err != nil {
		t.Fatal(err)
	}
	before := p.poolCount(router.RW, metrics.PoolCheckFailed)
	again := p.session(t, router.RW, "application_name=pool_kill", nil)
	if again == pid {
		t.Fatalf("got the terminated server pid %d", pid)
	}
	if d := p.poolCount(router.RW, metrics.PoolCheckFailed) - before; d != 1 {
		t.Errorf("check_failed moved by %v, want 1", d)
	}
}

// TestPoolServerCheckDelay: a connection idle past server_check_delay is
// checked with an empty query before reuse, and reused when it passes.
func TestPoolServerCheckDelay(t *testing.T) {
	p := startPoolProxy(t, proxy.Config{ServerCheckDelay: 100 * time.Millisecond})
	pid := p.session(t, router.RW, "", nil)
	time.Sleep(200 * time.Millisecond)
	if again := p.session(t, router.RW, "", nil); again != pid {
		t.Fatalf("a connection that passes its check was not reused: %d, had %d", again, pid)
	}
}

// TestPoolFencingClosesIdle: when the rw route is revoked, the idle
// connections opened for it close at once (not at server_idle_timeout),
// and a lazily attached idle client is cut with 57P01.
func TestPoolFencingClosesIdle(t *testing.T) {
	p := startPoolProxy(t, proxy.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pid := p.session(t, router.RW, "application_name=pool_fence", nil)
	p.session(t, router.RW, "application_name=pool_fence2", nil)
	p.waitIdle(t, router.RW, 2)
	// A client answered from the pool's memory, without a server
	// connection yet.
	lazy := p.connect(t, router.RW, pglocal.UserSCRAM, "application_name=pool_fence2")
	replica := cluster.Replicas()[0]
	p.Router.Update(router.Snapshot{Members: []router.Member{
		{Name: replica.Addr(), Addr: replica.Addr(), Role: router.RoleReplica, Healthy: true},
	}})
	p.waitIdle(t, router.RW, 0)
	if d := p.poolCount(router.RW, metrics.PoolFenced); d != 2 {
		t.Errorf("fenced %v connections, want 2", d)
	}
	// The server sees the connection go.
	waitGone(t, cluster.Primary(), pid)
	if _, err := lazy.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("a client of the fenced route ran a query")
	} else if code := sqlStateOf(err); code != "" && code != wire.CodeAdminShutdown {
		t.Fatalf("lazy client: %v, want 57P01 or a closed connection", err)
	}
	rbWaitRW(t, p.Router, true)
	if again := p.session(t, router.RW, "application_name=pool_fence", nil); again == pid {
		t.Fatalf("a connection of the revoked route was handed out (pid %d)", pid)
	}
}

// waitGone waits until pid is no longer a backend of in.
func waitGone(t *testing.T, in *pglocal.Instance, pid int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	super := superConnect(t, in, "postgres")
	for {
		var n int
		if err := super.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("server pid %d still there", pid)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestPoolExpiry: server_idle_timeout closes an idle connection,
// server_lifetime one that outlived it when its client leaves.
func TestPoolExpiry(t *testing.T) {
	t.Run("server_idle_timeout", func(t *testing.T) {
		p := startPoolProxy(t, proxy.Config{ServerIdleTimeout: 300 * time.Millisecond})
		pid := p.session(t, router.RW, "", nil)
		p.waitIdle(t, router.RW, 0)
		waitGone(t, cluster.Primary(), pid)
		if n := p.poolCount(router.RW, metrics.PoolExpired); n != 1 {
			t.Errorf("expired %v, want 1", n)
		}
	})
	t.Run("server_lifetime", func(t *testing.T) {
		p := startPoolProxy(t, proxy.Config{ServerLifetime: 500 * time.Millisecond})
		pid := p.session(t, router.RW, "", func(*pgx.Conn) { time.Sleep(600 * time.Millisecond) })
		// Counted once the proxy has seen the client go.
		waitCount(t, func() float64 { return p.poolCount(router.RW, metrics.PoolExpired) }, 1)
		if again := p.session(t, router.RW, "", nil); again == pid {
			t.Fatal("a connection past server_lifetime was reused")
		}
	})
}

// TestPoolLazyAttach: once a key's login is known, idle clients of that
// key cost no server connection; each gets one at its first message.
func TestPoolLazyAttach(t *testing.T) {
	p := startPoolProxy(t, proxy.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const clients = 20
	p.session(t, router.RW, "application_name=pool_lazy", nil)
	p.waitIdle(t, router.RW, 1)
	opened := p.poolCount(router.RW, metrics.PoolOpened)
	var conns []*pgx.Conn
	for range clients {
		conns = append(conns, p.connect(t, router.RW, pglocal.UserSCRAM, "application_name=pool_lazy"))
	}
	if d := p.poolCount(router.RW, metrics.PoolOpened) - opened; d != 0 {
		t.Fatalf("%v server connections opened for %d idle clients", d, clients)
	}
	if got := gauge(p.Metrics.PoolClients, "rw", metrics.PoolActive); got != clients {
		t.Errorf("pool clients active %v, want %d", got, clients)
	}
	// The router counts sessions, with or without a server connection,
	// and not the idle pooled one.
	if got := gauge(p.Metrics.BackendSessions, cluster.Primary().Addr()); got != clients {
		t.Errorf("the router counts %v sessions on the primary, want %d", got, clients)
	}
	// What the client was told at connect is what the server says.
	direct, err := cluster.Primary().Connect(ctx, pglocal.UserSCRAM, pglocal.PasswordSCRAM, pglocal.AppDB)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(ctx)
	for _, name := range []string{"server_version", "TimeZone", "DateStyle", "integer_datetimes", "client_encoding", "is_superuser"} {
		if got, want := conns[0].PgConn().ParameterStatus(name), direct.PgConn().ParameterStatus(name); got != want {
			t.Errorf("lazy client told %s=%q, the server says %q", name, got, want)
		}
	}
	pids := map[int]bool{}
	for _, c := range conns {
		pids[backendPID(t, c)] = true
	}
	if len(pids) != clients {
		t.Fatalf("%d clients at once share %d server connections", clients, len(pids))
	}
	if d := p.poolCount(router.RW, metrics.PoolOpened) - opened; d != clients-1 {
		t.Errorf("%v opened for %d clients and one idle connection, want %d", d, clients, clients-1)
	}
}

// TestPoolCancel: a CancelRequest with the key the proxy issued reaches
// the server connection the session uses.
func TestPoolCancel(t *testing.T) {
	p := startPoolProxy(t, proxy.Config{})
	p.session(t, router.RW, "", nil) // known login: the next client attaches lazily
	conn := connectConfig(t, p.DSN(router.RW, pglocal.UserSCRAM, ""), cancelByRequest)
	pid := backendPID(t, conn)
	if int(conn.PgConn().PID()) == pid {
		t.Logf("issued pid equals the server's %d by chance", pid)
	}
	qctx, qcancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(qctx, "SELECT pg_sleep(30)")
		done <- err
	}()
	waitActive(t, cluster.Primary(), "pid = $1 AND query LIKE '%pg_sleep%'", int32(pid))
	qcancel()
	select {
	case err := <-done:
		checkCancelled(t, conn, err)
	case <-time.After(15 * time.Second):
		t.Fatal("the cancel did not reach the server")
	}
}

// TestPoolConsoleKill: the console's KILL also closes the database's idle
// pooled connections, and only that database's.
func TestPoolConsoleKill(t *testing.T) {
	p := startConsoleProxy(t, proxy.Config{}, nil)
	p.session(t, router.RW, "", nil)
	p.session(t, router.RW, "dbname=postgres", nil)
	p.waitIdle(t, router.RW, 2)
	mustExec(t, consoleConnect(t, p, router.RW, consoleAdmin), "KILL "+pglocal.AppDB)
	p.waitIdle(t, router.RW, 1)
}

// TestPoolLoginStorm: many new clients of one key at once cost one
// server login; the rest are answered from what it learnt.
func TestPoolLoginStorm(t *testing.T) {
	p := startPoolProxy(t, proxy.Config{})
	const clients = 40
	errs := make(chan error, clients)
	conns := make(chan *pgx.Conn, clients)
	for range clients {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := pgx.Connect(ctx, p.DSN(router.RW, pglocal.UserSCRAM, "application_name=pool_storm"))
			errs <- err
			conns <- c
		}()
	}
	for range clients {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		c := <-conns
		t.Cleanup(func() { _ = c.Close(context.Background()) })
	}
	if n := p.poolCount(router.RW, metrics.PoolOpened); n != 1 {
		t.Fatalf("%v server logins for %d clients of one key connecting at once, want 1", n, clients)
	}
}

// TestPoolDrain: on shutdown a lazily attached idle client is told 57P01,
// and the idle pooled connections are closed once the sessions are gone.
func TestPoolDrain(t *testing.T) {
	p := startPoolProxy(t, proxy.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pid := p.session(t, router.RW, "application_name=pool_drain", nil)
	p.waitIdle(t, router.RW, 1)
	lazy := p.connect(t, router.RW, pglocal.UserSCRAM, "application_name=pool_drain")
	p.Stop(t)
	waitGone(t, cluster.Primary(), pid)
	if _, err := lazy.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("a client of a stopped proxy ran a query")
	} else if code := sqlStateOf(err); code != "" && code != wire.CodeAdminShutdown {
		t.Fatalf("idle client after the drain: %v, want 57P01 or a closed connection", err)
	}
}

// TestPoolProtocolNegotiation: a client asking for protocol 3.2 (which
// the test servers negotiate down) gets the server's
// NegotiateProtocolVersion before its AuthenticationOk, from a fresh login
// and from the pool's memory of it alike, and 3.0 and 3.2 clients never
// share a connection.
func TestPoolProtocolNegotiation(t *testing.T) {
	p := startProxy(t, proxyOptions{
		Config: proxy.Config{AuthType: proxy.AuthTrust, AuthFile: writeAuthFile(t), PoolMode: proxy.PoolSession},
		Ready:  func(rw string, ro []string) bool { return rw != "" && len(ro) > 0 },
	})
	login := func(version uint32) (negotiated bool, pid int32) {
		t.Helper()
		c, err := net.DialTimeout("tcp", p.Addr(router.RW).String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		startup, err := wire.AppendStartupMessage(nil, version, []wire.Param{{Name: "user", Value: pglocal.UserTrust}, {Name: "database", Value: pglocal.AppDB}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(startup); err != nil {
			t.Fatal(err)
		}
		fe := pgproto3.NewFrontend(c, c)
		authOK := false
		for {
			msg, err := fe.Receive()
			if err != nil {
				t.Fatal(err)
			}
			switch m := msg.(type) {
			case *pgproto3.NegotiateProtocolVersion:
				if authOK || m.NewestMinorProtocol != 3<<16 {
					t.Fatalf("NegotiateProtocolVersion %+v after AuthenticationOk %v", m, authOK)
				}
				negotiated = true
			case *pgproto3.AuthenticationOk:
				authOK = true
			case *pgproto3.ErrorResponse:
				t.Fatalf("%s %s", m.Code, m.Message)
			case *pgproto3.DataRow:
				v, _ := strconv.Atoi(string(m.Values[0]))
				pid = int32(v)
			case *pgproto3.ReadyForQuery:
				if pid != 0 {
					fe.Send(&pgproto3.Terminate{})
					_ = fe.Flush()
					return negotiated, pid
				}
				fe.Send(&pgproto3.Query{String: "SELECT pg_backend_pid()"})
				if err := fe.Flush(); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	var pids [2][]int32
	for round := range 2 { // a fresh login, then the pool's memory of it
		for i, v := range []uint32{3 << 16, 3<<16 | 2} {
			nego, pid := login(v)
			if nego != (v != 3<<16) {
				t.Errorf("round %d, protocol %x: NegotiateProtocolVersion %v", round, v, nego)
			}
			pids[i] = append(pids[i], pid)
			idle := 2 // one connection per protocol version, back in the pool
			if round == 0 && i == 0 {
				idle = 1
			}
			p.waitIdle(t, router.RW, idle)
		}
	}
	if pids[0][0] != pids[0][1] || pids[1][0] != pids[1][1] || pids[0][0] == pids[1][0] {
		t.Errorf("server pids 3.0 %v, 3.2 %v: want each reused and the two apart", pids[0], pids[1])
	}
}

// BenchmarkConnectPerQuery is a new connection per query (pgbench -C's
// pattern) with trust at both ends, so no password hashing: directly to
// the primary, through the proxy without pooling, and pooled.
//
//	go test -run '^$' -bench BenchmarkConnectPerQuery -benchtime 2s ./proxy/
func BenchmarkConnectPerQuery(b *testing.B) {
	run := func(b *testing.B, dsn string) {
		ctx := context.Background()
		for b.Loop() {
			c, err := pgx.Connect(ctx, dsn)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
				b.Fatal(err)
			}
			_ = c.Close(ctx)
		}
	}
	b.Run("direct", func(b *testing.B) {
		run(b, cluster.Primary().DSN(pglocal.UserTrust, "", pglocal.AppDB))
	})
	for _, mode := range []proxy.PoolMode{proxy.PoolNone, proxy.PoolSession} {
		b.Run("proxy pool_mode "+string(mode), func(b *testing.B) {
			p := startBenchProxy(b, proxy.Config{AuthType: proxy.AuthTrust, PoolMode: mode})
			run(b, p.DSN(router.RW, pglocal.UserTrust, ""))
		})
	}
}

// benchProxy is a proxy for benchmarks: a static route to the primary,
// the proxy's own trust authentication for app_trust.
type benchProxy struct{ addr string }

func (p benchProxy) DSN(_ router.Endpoint, user, _ string) string {
	host, port, _ := net.SplitHostPort(p.addr)
	return fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=disable", host, port, user, pglocal.AppDB)
}

func startBenchProxy(b *testing.B, cfg proxy.Config) benchProxy {
	b.Helper()
	v, err := pgauth.NewSCRAMVerifier("unused", []byte("bench-salt"), 4096)
	if err != nil {
		b.Fatal(err)
	}
	cfg.AuthFile = filepath.Join(b.TempDir(), "userlist.txt")
	if err := os.WriteFile(cfg.AuthFile, []byte(pgauth.FormatUserlistLine(pglocal.UserTrust, v)), 0o600); err != nil {
		b.Fatal(err)
	}
	cfg.RWListen = "127.0.0.1:0"
	m := metrics.NewProxy(prometheus.NewRegistry())
	r := router.New(router.Config{}, nil, m)
	r.Update(router.Snapshot{Primary: "p", Members: []router.Member{{Name: "p", Addr: cluster.Primary().Addr(), Role: router.RolePrimary, Healthy: true}}})
	srv, err := proxy.New(cfg, r, nil, m)
	if err != nil {
		b.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		b.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	b.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			b.Error(err)
		}
	})
	return benchProxy{addr: srv.Addr(router.RW).String()}
}

// TestPoolResetFailure: a server_reset_query that fails, or outlasts its
// deadline (connect_timeout), leaves the connection closed, not reused.
func TestPoolResetFailure(t *testing.T) {
	for _, tc := range []struct{ name, query string }{
		{"fails", "SELECT 1/0"},
		{"too slow", "SELECT pg_sleep(10)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startPoolProxy(t, proxy.Config{ServerResetQuery: tc.query, ConnectTimeout: 500 * time.Millisecond})
			pid := p.session(t, router.RW, "", nil)
			waitCount(t, func() float64 { return p.poolCount(router.RW, metrics.PoolResetFailed) }, 1)
			if gauge(p.Metrics.PoolServers, "rw", metrics.PoolIdle) != 0 {
				t.Fatal("a connection whose reset failed is idle in the pool")
			}
			if again := p.session(t, router.RW, "", nil); again == pid {
				t.Fatalf("a connection whose reset failed was reused (pid %d)", pid)
			}
		})
	}
}
