package proxy_test

// Hostile clients: connections that never log in, and sessions that try to
// get a writable transaction out of the ro endpoint. Each test is the
// attack, and asserts the refusal (its SQLSTATE) and that nobody else on
// the proxy noticed.

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/proxy"
	"github.com/pharos-ha/pharos/router"
	"github.com/pharos-ha/pharos/wire"
)

// atOnce bounds what "refused at once" means: far below any timeout the
// proxy under test has, so only an immediate answer passes.
const atOnce = time.Second

// TestSilentSocketsDoNotUseUpMaxClients: sockets that connect and never
// send a startup packet hold pending places, not max_clients places, so
// they lock nobody out of max_clients; once max_pending_clients of them are
// open, the next is closed at once while the sessions already in go on.
func TestSilentSocketsDoNotUseUpMaxClients(t *testing.T) {
	const maxClients, maxPending = 2, 4
	p := startProxy(t, proxyOptions{Config: proxy.Config{
		MaxClientsPerEndpoint: maxClients,
		MaxPendingPerEndpoint: maxPending,
		// Long enough that no silent socket times out during the test.
		StartupPacketTimeout: 30 * time.Second,
	}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rw := router.RW.String()
	pending := p.Metrics.PendingClients.WithLabelValues(rw)
	primarySessions := p.Metrics.BackendSessions.WithLabelValues(cluster.Primary().Addr())

	witness := p.connect(t, router.RW, pglocal.UserSCRAM, "")
	witnessPID := rbBackendPID(t, witness)

	// As many silent sockets as max_clients: before, they alone filled it.
	var silent []*rbConn
	for range maxClients {
		silent = append(silent, rbDial(t, p.Addr(router.RW)))
	}
	// One more that sends half a startup packet and stops.
	half := rbDial(t, p.Addr(router.RW))
	pkt, err := wire.AppendStartupMessage(nil, 3<<16, []wire.Param{{Name: "user", Value: pglocal.UserSCRAM}, {Name: "database", Value: pglocal.AppDB}})
	if err != nil {
		t.Fatal(err)
	}
	half.write(pkt[:len(pkt)/2])
	rbWaitGaugeAtLeast(t, pending, maxClients+1)

	// Connected for the whole test: it holds the second max_clients place.
	second, err := pgx.Connect(ctx, p.DSN(router.RW, pglocal.UserSCRAM, ""))
	if err == nil {
		t.Cleanup(func() { _ = second.Close(context.Background()) })
	}
	t.Run("an authenticated client still gets in", func(t *testing.T) {
		if err != nil {
			t.Fatalf("connect with max_clients silent sockets open: %v", err)
		}
		if _, err := second.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		if got := testutil.ToFloat64(p.Metrics.Clients.WithLabelValues(rw)); got != maxClients {
			t.Errorf("pharos_proxy_clients %v, want %d (the silent sockets must not count)", got, maxClients)
		}
	})
	t.Run("no backend connection before a complete startup packet", func(t *testing.T) {
		// Only the two authenticated sessions hold a route to the primary;
		// the silent and half-sent sockets hold none.
		if got := testutil.ToFloat64(primarySessions); got != maxClients {
			t.Errorf("pharos_backend_sessions{primary} %v, want %d", got, maxClients)
		}
	})

	// Fill the pending places.
	silent = append(silent, rbDial(t, p.Addr(router.RW)))
	rbWaitGaugeAtLeast(t, pending, maxPending)

	t.Run("the socket over max_pending_clients is closed at once", func(t *testing.T) {
		before := counter(p.Metrics.Sessions, rw, string(metrics.OutcomeTooManyPending))
		extra := rbDial(t, p.Addr(router.RW))
		extra.checkFatal(extra.waitEnd(atOnce), wire.CodeTooManyConnections, "too many clients are logging in")
		if d := counter(p.Metrics.Sessions, rw, string(metrics.OutcomeTooManyPending)) - before; d != 1 {
			t.Errorf("outcome too_many_pending moved by %v, want 1", d)
		}
		if got := testutil.ToFloat64(pending); got != maxPending {
			t.Errorf("pharos_proxy_pending_clients %v after the refusal, want %d", got, maxPending)
		}
	})
	t.Run("sessions already in are undisturbed", func(t *testing.T) {
		if pid := rbBackendPID(t, witness); pid != witnessPID {
			t.Errorf("witness moved from backend pid %d to %d", witnessPID, pid)
		}
	})
	t.Run("ro has its own pending places", func(t *testing.T) {
		conn := p.connect(t, router.RO, pglocal.UserSCRAM, "")
		if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("max_clients is checked once the server accepted the login", func(t *testing.T) {
		silent[0].close()
		rbWaitGauge(t, pending, maxPending-1)
		before := counter(p.Metrics.Sessions, rw, string(metrics.OutcomeTooManyClients))
		conn, err := pgx.Connect(ctx, p.DSN(router.RW, pglocal.UserSCRAM, ""))
		if err == nil {
			_ = conn.Close(ctx)
			t.Fatal("a client over max_clients was let in")
		}
		rbCheckPgError(t, err, wire.CodeTooManyConnections, "too many clients")
		if d := counter(p.Metrics.Sessions, rw, string(metrics.OutcomeTooManyClients)) - before; d != 1 {
			t.Errorf("outcome too_many_clients moved by %v, want 1", d)
		}
		// The refused login gave its pending place back and took no
		// client place.
		rbWaitGauge(t, pending, maxPending-1)
		if got := testutil.ToFloat64(p.Metrics.Clients.WithLabelValues(rw)); got != maxClients {
			t.Errorf("pharos_proxy_clients %v, want %d", got, maxClients)
		}
	})
}

// TestStartupPacketTimeout: a socket that sends nothing loses its pending
// place after startup_packet_timeout, while a client that sent its startup
// packet and is in the middle of authentication has the whole
// startup_timeout.
func TestStartupPacketTimeout(t *testing.T) {
	const packetTimeout, startupTimeout = time.Second, 4 * time.Second
	p := startProxy(t, proxyOptions{Config: proxy.Config{
		StartupPacketTimeout: packetTimeout,
		StartupTimeout:       startupTimeout,
	}})
	start := time.Now()
	silent := rbDial(t, p.Addr(router.RW))
	authing := rbDial(t, p.Addr(router.RW))
	pkt, err := wire.AppendStartupMessage(nil, 3<<16, []wire.Param{{Name: "user", Value: pglocal.UserSCRAM}, {Name: "database", Value: pglocal.AppDB}})
	if err != nil {
		t.Fatal(err)
	}
	authing.write(pkt)
	typ, msg, err := authing.next(time.Now().Add(rbWait))
	if err != nil {
		t.Fatal(err)
	}
	if code, err := wire.AuthCode(msg); typ != wire.MsgAuthentication || err != nil || code != wire.AuthSASL {
		t.Fatalf("got %q %v, want AuthenticationSASL", typ, msg)
	}

	t.Run("silent socket is cut at startup_packet_timeout", func(t *testing.T) {
		silent.checkFatal(silent.waitEnd(packetTimeout+rbWait), wire.CodeProtocolViolation, "timeout expired during startup")
		if el := time.Since(start); el < packetTimeout-100*time.Millisecond || el > startupTimeout-time.Second {
			t.Errorf("cut after %v, want about %v", el, packetTimeout)
		}
	})
	t.Run("authentication has the rest of startup_timeout", func(t *testing.T) {
		end := authing.waitEnd(startupTimeout + rbWait)
		authing.checkFatal(end, wire.CodeProtocolViolation, "timeout expired during startup")
		if el := time.Since(start); el < startupTimeout-100*time.Millisecond {
			t.Errorf("authentication cut after %v, before startup_timeout %v", el, startupTimeout)
		}
	})
	rbWaitGauge(t, p.Metrics.PendingClients.WithLabelValues(router.RW.String()), 0)
}

// rbWaitGaugeAtLeast waits (bounded) until g is at least min: the proxy
// counts a connection when its accept loop gets to it.
func rbWaitGaugeAtLeast(t *testing.T, g prometheus.Gauge, min float64) {
	t.Helper()
	deadline := time.Now().Add(rbWait)
	for testutil.ToFloat64(g) < min {
		if time.Now().After(deadline) {
			t.Fatalf("gauge still %v after %v, want at least %v", testutil.ToFloat64(g), rbWait, min)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
