package proxy_test

// Hostile clients: connections that never log in, and sessions that try to
// get a writable transaction out of the ro endpoint. Each test is the
// attack, and asserts the refusal (its SQLSTATE) and that nobody else on
// the proxy noticed.

import (
	"bytes"
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
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
	const packetTimeout, startupTimeout = time.Second, 6 * time.Second
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
		if el := time.Since(start); el < packetTimeout-100*time.Millisecond {
			t.Errorf("cut after %v, before startup_packet_timeout %v", el, packetTimeout)
		}
		// The cut came from the packet deadline, not the startup one:
		// the client in authentication, which started with it, is still
		// connected (told by order, not by how long it took).
		if _, _, err := authing.next(time.Now().Add(50 * time.Millisecond)); !isTimeout(err) {
			t.Errorf("the authenticating client ended together with the silent one (%v): the packet deadline is not its own", err)
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

// TestROStartupCannotTurnOffReadOnly: a client on the ro endpoint tries to
// start its session writable, in every way the server would read a
// setting from the startup packet. The ro endpoint here falls back to the
// primary (the only backend), so default_transaction_read_only is all that
// stands between the client and a write: each attempt must still see
// "on", get 25006 for a write, and keep its other options (search_path).
func TestROStartupCannotTurnOffReadOnly(t *testing.T) {
	p := startProxy(t, proxyOptions{
		Backends: []*pglocal.Instance{cluster.Primary()},
		Router:   router.Config{ROFallbackToPrimary: true},
	})
	const searchPath = "hostile_sp"
	keep := wire.Param{Name: "options", Value: "-c search_path=" + searchPath}
	off := func(name string) wire.Param { return wire.Param{Name: name, Value: "off"} }
	for _, tc := range []struct {
		name   string
		params []wire.Param
	}{
		{"both spellings as parameters (the last wins in PostgreSQL)", []wire.Param{keep, off(readOnlyGUC), off("DEFAULT_TRANSACTION_READ_ONLY")}},
		{"mixed case parameter", []wire.Param{keep, off("Default_Transaction_Read_Only")}},
		{"options -c name=value", []wire.Param{{Name: "options", Value: "-c search_path=" + searchPath + " -c " + readOnlyGUC + "=off"}}},
		{"options -cname=value", []wire.Param{{Name: "options", Value: "-c" + readOnlyGUC + "=off -c search_path=" + searchPath}}},
		{"options --name=value", []wire.Param{{Name: "options", Value: "--" + readOnlyGUC + "=off --search_path=" + searchPath}}},
		{"options --name-with-dashes=value", []wire.Param{{Name: "options", Value: "--default-transaction-read-only=off --search-path=" + searchPath}}},
		{"options -c upper case", []wire.Param{{Name: "options", Value: "-c DEFAULT_TRANSACTION_READ_ONLY=off -c search_path=" + searchPath}}},
		{"options clustered -ec name=value", []wire.Param{{Name: "options", Value: "-ec " + readOnlyGUC + "=off -c search_path=" + searchPath}}},
		{"options clustered -e- name=value", []wire.Param{{Name: "options", Value: "-e- " + readOnlyGUC + "=off -c search_path=" + searchPath}}},
		{"options twice (the server keeps the last)", []wire.Param{{Name: "options", Value: "-c search_path=" + searchPath}, {Name: "options", Value: "-c search_path=" + searchPath + " -c " + readOnlyGUC + "=off"}}},
		{"options and parameters at once", []wire.Param{{Name: "options", Value: "-c " + readOnlyGUC + "=off -c search_path=" + searchPath}, off("DEFAULT_transaction_read_ONLY")}},
		// Never reaches the server: were it passed on, the server would
		// refuse the value and the login would fail with 22023.
		{"options with an invalid value", []wire.Param{{Name: "options", Value: "-c " + readOnlyGUC + "=bogus -c search_path=" + searchPath}}},
		// Not dropped, and harmless: every transaction starts from the
		// default.
		{"transaction_read_only", []wire.Param{keep, off("transaction_read_only"), {Name: "options", Value: "-c search_path=" + searchPath + " -c transaction_read_only=off"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := rbDial(t, p.Addr(router.RO))
			defer c.close()
			params := append([]wire.Param{{Name: "user", Value: pglocal.UserTrust}, {Name: "database", Value: pglocal.AppDB}}, tc.params...)
			pkt, err := wire.AppendStartupMessage(nil, 3<<16, params)
			if err != nil {
				t.Fatal(err)
			}
			c.write(pkt)
			c.untilReady("login")
			if v, code := c.queryValue("SHOW " + readOnlyGUC); code != "" || v != "on" {
				t.Errorf("%s = %q (error %q), want on", readOnlyGUC, v, code)
			}
			if v, code := c.queryValue("SHOW search_path"); code != "" || v != searchPath {
				t.Errorf("search_path = %q (error %q), want %q from the client's options", v, code, searchPath)
			}
			if _, code := c.queryValue("CREATE TEMP TABLE hostile_ro_probe (id int)"); code != codeReadOnlySQLTx {
				t.Errorf("write on ro: SQLSTATE %q, want %s (read-only transaction)", code, codeReadOnlySQLTx)
			}
			if v, code := c.queryValue("SELECT pg_is_in_recovery()::text"); code != "" || v != "false" {
				t.Errorf("pg_is_in_recovery() = %q (error %q): the session is not on the primary, so this proves nothing", v, code)
			}
			c.terminate()
		})
	}
}

// readOnlyGUC is the setting the ro endpoint forces.
const readOnlyGUC = "default_transaction_read_only"

// queryValue runs a simple query and returns the first column of its first
// row (the command tag when it has none), or the SQLSTATE of its error.
func (c *rbConn) queryValue(sql string) (value, code string) {
	c.t.Helper()
	q, err := (&pgproto3.Query{String: sql}).Encode(nil)
	if err != nil {
		c.t.Fatal(err)
	}
	c.write(q)
	deadline := time.Now().Add(rbWait)
	gotRow := false
	for {
		typ, msg, err := c.next(deadline)
		if err != nil {
			c.t.Fatalf("%s: %v", sql, err)
		}
		switch typ {
		case 'D':
			var dr pgproto3.DataRow
			if err := dr.Decode(msg[wire.HeaderLen:]); err != nil {
				c.t.Fatalf("%s: DataRow: %v", sql, err)
			}
			if !gotRow && len(dr.Values) > 0 {
				value, gotRow = string(dr.Values[0]), true
			}
		case 'C':
			if !gotRow {
				value = string(bytes.TrimRight(msg[wire.HeaderLen:], "\x00"))
			}
		case wire.MsgErrorResponse:
			_, code, _, _ = wire.ErrorFields(msg)
		case wire.MsgReadyForQuery:
			return value, code
		}
	}
}

// TestROSessionOnPromotedReplicaIsCut: the replica an ro session is on is
// promoted (a real pg_promote; the static source sees it leave recovery).
// The session would now be on a writable server, so the proxy cuts it with
// 57P01 saying why, unless ro_fallback_to_primary allows ro on a primary:
// then it goes on, still read-only by default.
func TestROSessionOnPromotedReplicaIsCut(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	private := privateCluster(ctx, t, pglocal.Options{Replicas: 1, Fast: true})
	rep := private.Replicas()[0]
	both := func(rw string, ro []string) bool { return rw != "" && len(ro) > 0 }
	strict := startProxy(t, proxyOptions{Cluster: private, Ready: both})
	lenient := startProxy(t, proxyOptions{Cluster: private, Ready: both, Router: router.Config{ROFallbackToPrimary: true}})

	onReplica := func(p *testProxy) *rbConn {
		c := rbDial(t, p.Addr(router.RO))
		c.login(pglocal.UserTrust)
		if v, code := c.queryValue("SELECT pg_is_in_recovery()::text"); code != "" || v != "true" {
			t.Fatalf("ro session: in recovery %q (error %q), want true", v, code)
		}
		return c
	}
	strictRO, lenientRO := onReplica(strict), onReplica(lenient)
	fenced := string(metrics.ReasonFenced)
	strictBefore, lenientBefore := counter(strict.Metrics.Terminated, fenced), counter(lenient.Metrics.Terminated, fenced)

	if err := rep.Promote(ctx); err != nil {
		t.Fatalf("promote %s: %v", rep.Name, err)
	}

	t.Run("cut with 57P01 saying the backend was promoted", func(t *testing.T) {
		strictRO.checkFatal(strictRO.waitEnd(rbWait), wire.CodeAdminShutdown, "promoted to primary")
		if d := counter(strict.Metrics.Terminated, fenced) - strictBefore; d != 1 {
			t.Errorf("reason fenced moved by %v, want 1", d)
		}
	})
	t.Run("with ro_fallback_to_primary it goes on, read-only by default", func(t *testing.T) {
		// Once the lenient proxy's source has reported the promotion, the
		// revocation (if any) has happened: it is part of the update.
		rbWaitGaugeAtLeast(t, lenient.Metrics.BackendRole.WithLabelValues(rep.Addr(), string(router.RolePrimary)), 1)
		if v, code := lenientRO.queryValue("SELECT pg_is_in_recovery()::text"); code != "" || v != "false" {
			t.Fatalf("session after the promotion: in recovery %q (error %q), want false (alive, on the new primary)", v, code)
		}
		if _, code := lenientRO.queryValue("CREATE TEMP TABLE promoted_probe (id int)"); code != codeReadOnlySQLTx {
			t.Errorf("write: SQLSTATE %q, want %s", code, codeReadOnlySQLTx)
		}
		if d := counter(lenient.Metrics.Terminated, fenced) - lenientBefore; d != 0 {
			t.Errorf("reason fenced moved by %v, want 0", d)
		}
	})
	t.Run("limit: a client's own BEGIN READ WRITE on a primary is not stopped", func(t *testing.T) {
		// What the README says ro cannot promise once a session is on a
		// primary by ro_fallback_to_primary.
		if st := lenientRO.simpleQuery("BEGIN READ WRITE"); st != wire.TxInTransaction {
			t.Fatalf("status %q after BEGIN READ WRITE", st)
		}
		if _, code := lenientRO.queryValue("CREATE TEMP TABLE promoted_probe (id int)"); code != "" {
			t.Errorf("write in a READ WRITE transaction on a primary: SQLSTATE %q, want it accepted", code)
		}
		lenientRO.simpleQuery("ROLLBACK")
		lenientRO.terminate()
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
