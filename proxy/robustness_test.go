package proxy_test

// Robustness: what the proxy does with clients that misbehave, with limits,
// with routes that go away and with its own shutdown. Clients here are raw
// TCP connections that write exactly the bytes a case needs and read whole
// messages back, so each case can say what went over the wire: before a
// backend is attached every failure is a FATAL ErrorResponse with a
// SQLSTATE; afterwards a FATAL at a message boundary or a close.

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/proxy"
	"github.com/pharos-ha/pharos/router"
	"github.com/pharos-ha/pharos/wire"
)

// rbWait bounds every read in this file that is not itself about a timeout:
// it only says "did not hang".
const rbWait = 5 * time.Second

func TestMalformedClientInputIsRefusedAlone(t *testing.T) {
	const startupTimeout = 2 * time.Second
	p := startProxy(t, proxyOptions{Config: proxy.Config{
		MaxMessageSize: 64 << 10,
		StartupTimeout: startupTimeout,
	}})
	// The witness is a healthy session that lives through every case: a
	// broken client must never disturb another one.
	witness := p.connect(t, router.RW, pglocal.UserSCRAM, "")
	witnessPID := rbBackendPID(t, witness)

	for _, tc := range []struct {
		name string
		// run drives one bad client and checks what it was told.
		run func(t *testing.T, c *rbConn)
		// outcome and reason are the metrics the case must move by one
		// ("" for none).
		outcome metrics.Outcome
		reason  metrics.TerminateReason
	}{
		{
			name: "truncated startup packet then EOF",
			run: func(t *testing.T, c *rbConn) {
				// Announces 100 bytes, sends 10, then half-closes: the
				// proxy has nobody to answer and must simply close.
				pkt := binary.BigEndian.AppendUint32(nil, 100)
				pkt = binary.BigEndian.AppendUint32(pkt, 3<<16)
				pkt = append(pkt, "us"...)
				c.write(pkt)
				c.closeWrite()
				if end := c.waitEnd(rbWait); end.code != "" || !end.closed {
					t.Errorf("got %+v, want a plain close", end)
				}
			},
			outcome: metrics.OutcomeClientGone,
		},
		{
			name: "startup length word of 1 GiB",
			run: func(t *testing.T, c *rbConn) {
				c.write(binary.BigEndian.AppendUint32(nil, 1<<30))
				c.expectFatal(wire.CodeProtocolViolation, "invalid length of startup packet")
			},
			outcome: metrics.OutcomeProtocolError,
		},
		{
			name: "startup length word below 8",
			run: func(t *testing.T, c *rbConn) {
				c.write(binary.BigEndian.AppendUint32(nil, 4))
				c.expectFatal(wire.CodeProtocolViolation, "invalid length of startup packet")
			},
			outcome: metrics.OutcomeProtocolError,
		},
		{
			name: "negative startup length word",
			run: func(t *testing.T, c *rbConn) {
				c.write([]byte{0xff, 0xff, 0xff, 0xf0})
				c.expectFatal(wire.CodeProtocolViolation, "invalid length of startup packet")
			},
			outcome: metrics.OutcomeProtocolError,
		},
		{
			name: "garbage: an HTTP request",
			run: func(t *testing.T, c *rbConn) {
				c.write([]byte("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"))
				c.expectFatal(wire.CodeProtocolViolation, "")
			},
			outcome: metrics.OutcomeProtocolError,
		},
		{
			name: "unsupported protocol 2.0",
			run: func(t *testing.T, c *rbConn) {
				pkt, err := wire.AppendStartupMessage(nil, 2<<16, []wire.Param{{Name: "user", Value: pglocal.UserTrust}})
				if err != nil {
					t.Fatal(err)
				}
				c.write(pkt)
				c.expectFatal(wire.CodeFeatureNotSupported, "unsupported frontend protocol 2.0")
			},
			outcome: metrics.OutcomeProtocolError,
		},
		{
			name: "startup without a user",
			run: func(t *testing.T, c *rbConn) {
				pkt, err := wire.AppendStartupMessage(nil, 3<<16, []wire.Param{{Name: "database", Value: pglocal.AppDB}})
				if err != nil {
					t.Fatal(err)
				}
				c.write(pkt)
				c.expectFatal(wire.CodeInvalidAuthSpec, "no PostgreSQL user name")
			},
			outcome: metrics.OutcomeProtocolError,
		},
		{
			name: "message length below 4 after login",
			run: func(t *testing.T, c *rbConn) {
				c.login(pglocal.UserTrust)
				c.write([]byte{'Q', 0, 0, 0, 2})
				c.expectFatal(wire.CodeProtocolViolation, "invalid message length 2")
			},
			outcome: metrics.OutcomeOK,
			reason:  metrics.ReasonProtocolViolation,
		},
		{
			name: "100 KiB query over a 64 KiB limit",
			run: func(t *testing.T, c *rbConn) {
				c.login(pglocal.UserTrust)
				q, err := (&pgproto3.Query{String: "SELECT '" + strings.Repeat("x", 100<<10) + "'"}).Encode(nil)
				if err != nil {
					t.Fatal(err)
				}
				// The proxy stops reading at the header, so the rest may
				// never be taken: write from the side, errors expected.
				written := make(chan struct{})
				go func() {
					defer close(written)
					_ = c.conn.SetWriteDeadline(time.Now().Add(rbWait))
					_, _ = c.conn.Write(q)
				}()
				c.expectFatal(wire.CodeProtocolViolation, "over the limit")
				<-written
			},
			outcome: metrics.OutcomeOK,
			reason:  metrics.ReasonMessageTooLarge,
		},
		{
			name: "client that stops reading a large result",
			run: func(t *testing.T, c *rbConn) {
				c.login(pglocal.UserTrust)
				q, err := (&pgproto3.Query{String: "SELECT repeat('x', 1000) FROM generate_series(1, 100000)"}).Encode(nil)
				if err != nil {
					t.Fatal(err)
				}
				c.write(q)
				if typ, _, err := c.next(time.Now().Add(rbWait)); err != nil || typ != 'T' {
					t.Fatalf("first result message %q, %v; want RowDescription", typ, err)
				}
				// Buffers fill and the proxy blocks writing to this
				// client; the witness must not notice.
				rbBackendPID(t, witness)
			},
			outcome: metrics.OutcomeOK,
		},
		{
			name: "slowloris: one byte a second",
			run: func(t *testing.T, c *rbConn) {
				pkt, err := wire.AppendStartupMessage(nil, 3<<16, []wire.Param{{Name: "user", Value: pglocal.UserTrust}, {Name: "database", Value: pglocal.AppDB}})
				if err != nil {
					t.Fatal(err)
				}
				stop := make(chan struct{})
				dripped := make(chan struct{})
				go func() {
					defer close(dripped)
					tick := time.NewTicker(time.Second)
					defer tick.Stop()
					for _, b := range pkt {
						if _, err := c.conn.Write([]byte{b}); err != nil {
							return
						}
						select {
						case <-stop:
							return
						case <-tick.C:
						}
					}
				}()
				end := c.waitEnd(startupTimeout + rbWait)
				close(stop)
				<-dripped
				c.checkFatal(end, wire.CodeProtocolViolation, "timeout expired during startup")
			},
			outcome: metrics.OutcomeTimeout,
		},
		{
			name: "connects and says nothing",
			run: func(t *testing.T, c *rbConn) {
				end := c.waitEnd(startupTimeout + rbWait)
				c.checkFatal(end, wire.CodeProtocolViolation, "timeout expired during startup")
			},
			outcome: metrics.OutcomeTimeout,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			outcomes := rbSnapshot(p.Metrics.Sessions, router.RW.String())
			reasons := rbSnapshot(p.Metrics.Terminated)
			c := rbDial(t, p.Addr(router.RW))
			tc.run(t, c)
			c.close()

			// The proxy counts after it answered; wait for the session to
			// be gone so the counters are final.
			rbWaitGauge(t, p.Metrics.Clients.WithLabelValues(router.RW.String()), 1)
			rbWaitGauge(t, p.Metrics.PendingClients.WithLabelValues(router.RW.String()), 0)
			for _, o := range rbOutcomes {
				want := 0.0
				if o == tc.outcome {
					want = 1
				}
				if d := counter(p.Metrics.Sessions, router.RW.String(), string(o)) - outcomes[string(o)]; d != want {
					t.Errorf("pharos_proxy_sessions_total{outcome=%q} moved by %v, want %v", o, d, want)
				}
			}
			for _, r := range rbReasons {
				want := 0.0
				if r == tc.reason {
					want = 1
				}
				if d := counter(p.Metrics.Terminated, string(r)) - reasons[string(r)]; d != want {
					t.Errorf("pharos_proxy_sessions_terminated_total{reason=%q} moved by %v, want %v", r, d, want)
				}
			}
			if pid := rbBackendPID(t, witness); pid != witnessPID {
				t.Errorf("witness session moved from backend pid %d to %d", witnessPID, pid)
			}
		})
	}
}

func TestClientLimitPerEndpoint(t *testing.T) {
	p := startProxy(t, proxyOptions{Config: proxy.Config{MaxClientsPerEndpoint: 2}})
	ctx, cancel := context.WithTimeout(context.Background(), rbWait)
	defer cancel()

	first := p.connect(t, router.RW, pglocal.UserSCRAM, "")
	p.connect(t, router.RW, pglocal.UserSCRAM, "")

	t.Run("third client gets 53300", func(t *testing.T) {
		before := counter(p.Metrics.Sessions, router.RW.String(), string(metrics.OutcomeTooManyClients))
		conn, err := pgx.Connect(ctx, p.DSN(router.RW, pglocal.UserSCRAM, ""))
		if err == nil {
			_ = conn.Close(ctx)
			t.Fatal("third client was let in")
		}
		rbCheckPgError(t, err, wire.CodeTooManyConnections, "too many clients")
		if d := counter(p.Metrics.Sessions, router.RW.String(), string(metrics.OutcomeTooManyClients)) - before; d != 1 {
			t.Errorf("outcome too_many_clients moved by %v, want 1", d)
		}
	})
	t.Run("ro endpoint has its own limit", func(t *testing.T) {
		p.connect(t, router.RO, pglocal.UserSCRAM, "")
	})
	t.Run("a client that leaves frees its place", func(t *testing.T) {
		if err := first.Close(ctx); err != nil {
			t.Fatal(err)
		}
		rbWaitGauge(t, p.Metrics.Clients.WithLabelValues(router.RW.String()), 1)
		conn := p.connect(t, router.RW, pglocal.UserSCRAM, "")
		if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	})
}

func TestNoPrimaryRefusesRWWith57P03(t *testing.T) {
	const routeWait = time.Second
	p := rbStartProxyWithoutPrimary(t, proxy.Config{RouteWait: routeWait}, cluster.Replicas()[0])
	ctx, cancel := context.WithTimeout(context.Background(), routeWait+rbWait)
	defer cancel()

	before := counter(p.Metrics.Sessions, router.RW.String(), string(metrics.OutcomeNoBackend))
	conn, err := pgx.Connect(ctx, p.DSN(router.RW, pglocal.UserSCRAM, ""))
	if err == nil {
		_ = conn.Close(ctx)
		t.Fatal("rw session attached with no primary")
	}
	rbCheckPgError(t, err, wire.CodeCannotConnectNow, "no primary is available")
	if d := counter(p.Metrics.Sessions, router.RW.String(), string(metrics.OutcomeNoBackend)) - before; d != 1 {
		t.Errorf("outcome no_backend moved by %v, want 1", d)
	}

	// The ro endpoint is unaffected.
	ro := p.connect(t, router.RO, pglocal.UserSCRAM, "")
	var inRecovery bool
	if err := ro.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil || !inRecovery {
		t.Errorf("ro session: in recovery %v, err %v", inRecovery, err)
	}
}

func TestEncryptionRequestsRefusedThenStartup(t *testing.T) {
	p := startProxy(t, proxyOptions{}) // TLSMode disable
	gssenc := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), 80877104)
	ssl := wire.AppendSSLRequest(nil)
	for _, tc := range []struct {
		name     string
		requests [][]byte
	}{
		{"GSSENCRequest", [][]byte{gssenc}},
		{"SSLRequest with tls disabled", [][]byte{ssl}},
		{"GSSENCRequest then SSLRequest, as libpq's prefer modes", [][]byte{gssenc, ssl}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := rbDial(t, p.Addr(router.RW))
			defer c.close()
			for _, req := range tc.requests {
				c.write(req)
				if b := c.readByte(); b != 'N' {
					t.Fatalf("answer %q, want 'N'", b)
				}
			}
			c.login(pglocal.UserTrust)
			if st := c.simpleQuery("SELECT 1"); st != wire.TxIdle {
				t.Errorf("status after SELECT 1: %q", st)
			}
			c.terminate()
		})
	}
}

func TestRevokedRouteFencesSessions(t *testing.T) {
	p := startProxy(t, proxyOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), rbWait)
	defer cancel()

	raw := rbDial(t, p.Addr(router.RW))
	defer raw.close()
	raw.login(pglocal.UserTrust)
	pg := p.connect(t, router.RW, pglocal.UserSCRAM, "")
	if _, err := pg.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	before := counter(p.Metrics.Terminated, string(metrics.ReasonFenced))

	// What a source says when the primary is gone: only the replica is
	// left. The static source puts the primary back at its next round,
	// which must not save the sessions already fenced.
	replica := cluster.Replicas()[0]
	p.Router.Update(router.Snapshot{Members: []router.Member{
		{Name: replica.Addr(), Addr: replica.Addr(), Role: router.RoleReplica, Healthy: true},
	}})

	t.Run("raw session is told 57P01 unasked", func(t *testing.T) {
		raw.expectFatal(wire.CodeAdminShutdown, "no longer a valid target")
	})
	t.Run("pgx session fails its next query", func(t *testing.T) {
		_, err := pg.Exec(ctx, "SELECT 1")
		if err == nil {
			t.Fatal("query on a fenced session succeeded")
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code != wire.CodeAdminShutdown {
			t.Errorf("error %v, want SQLSTATE %s or a closed connection", err, wire.CodeAdminShutdown)
		}
	})
	t.Run("both counted as fenced", func(t *testing.T) {
		if d := counter(p.Metrics.Terminated, string(metrics.ReasonFenced)) - before; d != 2 {
			t.Errorf("reason fenced moved by %v, want 2", d)
		}
	})
	t.Run("new rw sessions work once the primary is back", func(t *testing.T) {
		rbWaitRW(t, p.Router, true)
		conn := p.connect(t, router.RW, pglocal.UserSCRAM, "")
		if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	})
}

func TestDrainOnStop(t *testing.T) {
	const drainTimeout = 3 * time.Second
	p := startProxy(t, proxyOptions{Config: proxy.Config{DrainTimeout: drainTimeout}})

	idle := rbDial(t, p.Addr(router.RW))
	defer idle.close()
	idle.login(pglocal.UserTrust)

	inTx := rbDial(t, p.Addr(router.RW))
	defer inTx.close()
	inTx.login(pglocal.UserTrust)
	if st := inTx.simpleQuery("BEGIN"); st != wire.TxInTransaction {
		t.Fatalf("status after BEGIN: %q", st)
	}

	stuck := rbDial(t, p.Addr(router.RW))
	defer stuck.close()
	stuck.login(pglocal.UserTrust)
	if st := stuck.simpleQuery("BEGIN"); st != wire.TxInTransaction {
		t.Fatalf("status after BEGIN: %q", st)
	}

	// A client that stopped reading: the proxy is blocked writing to it
	// when the drain times out, which must not hold up the stop.
	deaf := rbDial(t, p.Addr(router.RW))
	defer deaf.close()
	deaf.login(pglocal.UserTrust)
	q, err := (&pgproto3.Query{String: "SELECT repeat('x', 1000) FROM generate_series(1, 100000)"}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	deaf.write(q)
	if typ, _, err := deaf.next(time.Now().Add(rbWait)); err != nil || typ != 'T' {
		t.Fatalf("first result message %q, %v; want RowDescription", typ, err)
	}

	before := counter(p.Metrics.Terminated, string(metrics.ReasonShutdown))
	start := time.Now()
	p.stop()

	t.Run("idle session closed before the drain timeout", func(t *testing.T) {
		end := idle.waitEnd(drainTimeout - 500*time.Millisecond)
		idle.checkFatal(end, wire.CodeAdminShutdown, "shutting down")
	})
	t.Run("new connections refused", func(t *testing.T) {
		// The idle session's FATAL comes from drain, which starts after
		// the listeners are closed.
		for _, ep := range []router.Endpoint{router.RW, router.RO} {
			conn, err := net.DialTimeout("tcp", p.Addr(ep).String(), rbWait)
			if err == nil {
				_ = conn.Close()
				t.Errorf("%s: connection accepted during drain", ep)
			} else if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("%s: %v, want connection refused", ep, err)
			}
		}
	})
	t.Run("open transaction runs a statement and commits", func(t *testing.T) {
		if st := inTx.simpleQuery("SELECT 1"); st != wire.TxInTransaction {
			t.Fatalf("status after SELECT in the drain window: %q", st)
		}
		if st := inTx.simpleQuery("COMMIT"); st != wire.TxIdle {
			t.Fatalf("status after COMMIT: %q", st)
		}
		inTx.expectFatal(wire.CodeAdminShutdown, "shutting down")
	})
	t.Run("stuck transaction cut at the drain timeout", func(t *testing.T) {
		end := stuck.waitEnd(drainTimeout + rbWait)
		stuck.checkFatal(end, wire.CodeAdminShutdown, "shutting down")
		if el := time.Since(start); el < drainTimeout {
			t.Errorf("cut after %v, before the drain timeout %v", el, drainTimeout)
		}
	})
	p.Stop(t) // fails the test if the drain does not end
	if d := counter(p.Metrics.Terminated, string(metrics.ReasonShutdown)) - before; d != 4 {
		t.Errorf("reason shutdown moved by %v, want 4 (idle, committed, stuck, deaf)", d)
	}
}

func TestBackendLossMidSession(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	private := privateCluster(ctx, t, pglocal.Options{Fast: true})
	const routeWait = time.Second
	p := startProxy(t, proxyOptions{Cluster: private, Config: proxy.Config{RouteWait: routeWait}})

	raw := rbDial(t, p.Addr(router.RW))
	defer raw.close()
	raw.login(pglocal.UserTrust)
	if st := raw.simpleQuery("SELECT 1"); st != wire.TxIdle {
		t.Fatalf("status: %q", st)
	}
	// A second client is in the middle of authentication: the server
	// asked for SCRAM and waits for the answer.
	authing := rbDial(t, p.Addr(router.RW))
	defer authing.close()
	pkt, err := wire.AppendStartupMessage(nil, 3<<16, []wire.Param{{Name: "user", Value: pglocal.UserSCRAM}, {Name: "database", Value: pglocal.AppDB}})
	if err != nil {
		t.Fatal(err)
	}
	authing.write(pkt)
	if typ, _, err := authing.next(time.Now().Add(rbWait)); err != nil || typ != wire.MsgAuthentication {
		t.Fatalf("got %q, %v; want an authentication request", typ, err)
	}
	if err := private.Primary().Kill(); err != nil {
		t.Fatal(err)
	}

	t.Run("client is told or closed, not left hanging", func(t *testing.T) {
		end := raw.waitEnd(rbWait)
		t.Logf("established client: %+v", end)
		// Whichever the proxy notices first: the dead socket (08006) or
		// the health check revoking the route (57P01).
		if end.code != "" && end.code != wire.CodeConnectionFailure && end.code != wire.CodeAdminShutdown {
			t.Errorf("got %+v, want FATAL 08006 or 57P01, or a close", end)
		}
		if !end.closed {
			t.Errorf("connection still open after %+v", end)
		}
		rbSecondFatal(t, end)
	})
	t.Run("client in authentication gets a FATAL", func(t *testing.T) {
		end := authing.waitEnd(rbWait)
		t.Logf("client in authentication: %+v", end)
		if !end.closed {
			t.Fatalf("connection still open after %+v", end)
		}
		// The proxy's own 57P03 when it sees the socket die first; the
		// server's 57P01 ("unexpected postmaster exit") or a fence when
		// they win the race.
		if end.severity != "FATAL" || (end.code != wire.CodeCannotConnectNow && end.code != wire.CodeAdminShutdown) {
			t.Errorf("got %+v, want FATAL 57P03 or 57P01", end)
		}
		rbSecondFatal(t, end)
	})
	t.Run("health check removes the rw target", func(t *testing.T) {
		rbWaitRW(t, p.Router, false)
	})
	t.Run("new rw session gets 57P03", func(t *testing.T) {
		cctx, ccancel := context.WithTimeout(context.Background(), routeWait+rbWait)
		defer ccancel()
		conn, err := pgx.Connect(cctx, p.DSN(router.RW, pglocal.UserSCRAM, ""))
		if err == nil {
			_ = conn.Close(cctx)
			t.Fatal("connected with the primary dead")
		}
		rbCheckPgError(t, err, wire.CodeCannotConnectNow, "")
	})
}

func TestMetricsExported(t *testing.T) {
	p := startProxy(t, proxyOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), rbWait)
	defer cancel()
	conn := p.connect(t, router.RW, pglocal.UserSCRAM, "")
	if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	// One cut session, so the terminated counter has a sample.
	c := rbDial(t, p.Addr(router.RW))
	c.login(pglocal.UserTrust)
	c.write([]byte{'Q', 0, 0, 0, 0})
	c.expectFatal(wire.CodeProtocolViolation, "")
	c.close()

	srv := httptest.NewServer(metrics.Handler(p.Reg))
	defer srv.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{
		"pharos_proxy_clients",
		"pharos_proxy_sessions_total",
		"pharos_proxy_backend_connect_seconds",
		"pharos_proxy_bytes_total",
		"pharos_proxy_sessions_terminated_total",
		"pharos_backend_up",
		"pharos_backend_role",
	} {
		t.Run(name, func(t *testing.T) {
			if !strings.Contains(string(body), "\n# TYPE "+name+" ") {
				t.Errorf("%s missing from /metrics", name)
			}
		})
	}
	if testing.Verbose() {
		t.Logf("/metrics:\n%s", body)
	}
}

// rbOutcomes and rbReasons are every label value a case may move.
var (
	rbOutcomes = []metrics.Outcome{
		metrics.OutcomeOK, metrics.OutcomeAuthFailed, metrics.OutcomeServerRefused, metrics.OutcomeNoBackend,
		metrics.OutcomeBackendError, metrics.OutcomeTooManyClients, metrics.OutcomeTooManyPending, metrics.OutcomeProtocolError,
		metrics.OutcomeTLSError, metrics.OutcomeTimeout, metrics.OutcomeClientGone,
		metrics.OutcomeCancelRequest, metrics.OutcomeShuttingDown,
	}
	rbReasons = []metrics.TerminateReason{
		metrics.ReasonFenced, metrics.ReasonShutdown, metrics.ReasonProtocolViolation,
		metrics.ReasonMessageTooLarge, metrics.ReasonBackendLost,
	}
)

// rbSnapshot reads every outcome (with a leading endpoint label) or reason
// of a counter vector, by label value.
func rbSnapshot(c *prometheus.CounterVec, prefix ...string) map[string]float64 {
	out := make(map[string]float64)
	if len(prefix) > 0 {
		for _, o := range rbOutcomes {
			out[string(o)] = counter(c, append(append([]string(nil), prefix...), string(o))...)
		}
		return out
	}
	for _, r := range rbReasons {
		out[string(r)] = counter(c, string(r))
	}
	return out
}

// rbWaitGauge waits (bounded) until g is at most max.
func rbWaitGauge(t *testing.T, g prometheus.Gauge, max float64) {
	t.Helper()
	deadline := time.Now().Add(rbWait)
	for testutil.ToFloat64(g) > max {
		if time.Now().After(deadline) {
			t.Fatalf("gauge still %v after %v, want at most %v", testutil.ToFloat64(g), rbWait, max)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rbWaitRW waits (bounded) until the router has an rw target (want true)
// or has none.
func rbWaitRW(t *testing.T, r *router.Router, want bool) {
	t.Helper()
	timer := time.NewTimer(rbWait)
	defer timer.Stop()
	for {
		changed := r.Changed()
		rw, _ := r.Current()
		if (rw != "") == want {
			return
		}
		select {
		case <-changed:
		case <-timer.C:
			t.Fatalf("rw target %q after %v; want one: %v", rw, rbWait, want)
		}
	}
}

func rbBackendPID(t *testing.T, conn *pgx.Conn) uint32 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), rbWait)
	defer cancel()
	var pid uint32
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatalf("witness session: %v", err)
	}
	return pid
}

func rbCheckPgError(t *testing.T, err error, code, msgPart string) {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		t.Fatalf("error %v, want SQLSTATE %s", err, code)
	}
	if pgErr.Code != code || !strings.Contains(pgErr.Message, msgPart) {
		t.Errorf("error %s %q, want %s containing %q", pgErr.Code, pgErr.Message, code, msgPart)
	}
	if pgErr.Severity != "FATAL" {
		t.Errorf("severity %s, want FATAL", pgErr.Severity)
	}
}

// rbStartProxyWithoutPrimary is startProxy for backends with no primary
// among them: it waits for the ro endpoint instead of rw.
func rbStartProxyWithoutPrimary(t *testing.T, cfg proxy.Config, backends ...*pglocal.Instance) *testProxy {
	t.Helper()
	return startProxy(t, proxyOptions{Config: cfg, Backends: backends,
		Ready: func(_ string, ro []string) bool { return len(ro) > 0 }})
}

// rbConn is a raw protocol client. Its methods fail the test on I/O errors
// except where they report what the proxy did.
type rbConn struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
	buf  []byte
}

func rbDial(t *testing.T, addr net.Addr) *rbConn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr.String(), rbWait)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	c := &rbConn{t: t, conn: conn, br: bufio.NewReader(conn)}
	t.Cleanup(c.close)
	return c
}

func (c *rbConn) close() { _ = c.conn.Close() }

func (c *rbConn) closeWrite() {
	c.t.Helper()
	if err := c.conn.(*net.TCPConn).CloseWrite(); err != nil {
		c.t.Fatalf("half-close: %v", err)
	}
}

func (c *rbConn) write(b []byte) {
	c.t.Helper()
	_ = c.conn.SetWriteDeadline(time.Now().Add(rbWait))
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *rbConn) readByte() byte {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(rbWait))
	b, err := c.br.ReadByte()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return b
}

func (c *rbConn) next(deadline time.Time) (byte, []byte, error) {
	_ = c.conn.SetReadDeadline(deadline)
	typ, msg, err := wire.ReadMessage(c.br, c.buf[:0], 1<<20)
	if msg != nil {
		c.buf = msg
	}
	return typ, msg, err
}

// login runs the startup phase for a user that needs no password, on the
// app database, up to ReadyForQuery.
func (c *rbConn) login(user string) {
	c.t.Helper()
	pkt, err := wire.AppendStartupMessage(nil, 3<<16, []wire.Param{{Name: "user", Value: user}, {Name: "database", Value: pglocal.AppDB}})
	if err != nil {
		c.t.Fatal(err)
	}
	c.write(pkt)
	c.untilReady("login")
}

// simpleQuery sends a Query and returns the transaction status of the
// ReadyForQuery that ends it.
func (c *rbConn) simpleQuery(sql string) byte {
	c.t.Helper()
	q, err := (&pgproto3.Query{String: sql}).Encode(nil)
	if err != nil {
		c.t.Fatal(err)
	}
	c.write(q)
	return c.untilReady(sql)
}

func (c *rbConn) terminate() {
	c.t.Helper()
	c.write([]byte{'X', 0, 0, 0, 4})
	if end := c.waitEnd(rbWait); end.code != "" || !end.closed {
		c.t.Errorf("after Terminate: %+v, want a plain close", end)
	}
}

func (c *rbConn) untilReady(what string) byte {
	c.t.Helper()
	deadline := time.Now().Add(rbWait)
	for {
		typ, msg, err := c.next(deadline)
		if err != nil {
			c.t.Fatalf("%s: %v", what, err)
		}
		switch typ {
		case wire.MsgErrorResponse:
			sev, code, m, _ := wire.ErrorFields(msg)
			c.t.Fatalf("%s: %s %s %s", what, sev, code, m)
		case wire.MsgReadyForQuery:
			return msg[wire.HeaderLen]
		}
	}
}

// rbEnd is how a connection ended from the client's side.
type rbEnd struct {
	severity, code, message string   // empty when no ErrorResponse came
	closed                  bool     // EOF or reset seen (after the error, if any)
	after                   []string // messages after the error, described
}

// waitEnd reads, skipping other messages, until an ErrorResponse or the
// end of the stream; after an ErrorResponse it checks the proxy closes.
// It fails the test when nothing happens within d.
func (c *rbConn) waitEnd(d time.Duration) rbEnd {
	c.t.Helper()
	deadline := time.Now().Add(d)
	var end rbEnd
	for {
		typ, msg, err := c.next(deadline)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				c.t.Fatalf("connection neither errored nor closed within %v (so far %+v)", d, end)
			}
			end.closed = true
			return end
		}
		if typ == wire.MsgErrorResponse && end.code == "" {
			end.severity, end.code, end.message, err = wire.ErrorFields(msg)
			if err != nil {
				c.t.Fatalf("malformed ErrorResponse %q: %v", msg, err)
			}
			deadline = time.Now().Add(rbWait)
		} else if end.code != "" {
			desc := string(typ)
			if typ == wire.MsgErrorResponse {
				sev, code, m, _ := wire.ErrorFields(msg)
				desc = sev + " " + code + " " + m
			}
			end.after = append(end.after, desc)
		}
	}
}

// expectFatal waits for a FATAL with code (and message containing msgPart)
// followed by a close.
func (c *rbConn) expectFatal(code, msgPart string) {
	c.t.Helper()
	c.checkFatal(c.waitEnd(rbWait), code, msgPart)
}

func (c *rbConn) checkFatal(end rbEnd, code, msgPart string) {
	c.t.Helper()
	if end.severity != "FATAL" || end.code != code || !strings.Contains(end.message, msgPart) || !end.closed || len(end.after) > 0 {
		c.t.Errorf("got %+v, want FATAL %s containing %q, then a close", end, code, msgPart)
	}
}

func TestMessageSizeLimitBoundary(t *testing.T) {
	// MaxMessageSize bounds the length word, which counts itself and the
	// body but not the type byte, as PostgreSQL's own limit does.
	const limit = 64 << 10
	p := startProxy(t, proxyOptions{Config: proxy.Config{MaxMessageSize: limit}})
	for _, tc := range []struct {
		name       string
		lengthWord int
		refused    bool
	}{
		{"length word at the limit passes", limit, false},
		{"one byte over is refused", limit + 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := rbDial(t, p.Addr(router.RW))
			defer c.close()
			c.login(pglocal.UserTrust)
			// Query body: "SELECT '" + filler + "'" + NUL.
			filler := tc.lengthWord - 4 - len("SELECT ''") - 1
			q, err := (&pgproto3.Query{String: "SELECT '" + strings.Repeat("x", filler) + "'"}).Encode(nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := int(binary.BigEndian.Uint32(q[1:5])); got != tc.lengthWord {
				t.Fatalf("built a length word of %d, want %d", got, tc.lengthWord)
			}
			if !tc.refused {
				c.write(q)
				if st := c.untilReady("big query"); st != wire.TxIdle {
					t.Errorf("status %q", st)
				}
				return
			}
			written := make(chan struct{})
			go func() {
				defer close(written)
				_ = c.conn.SetWriteDeadline(time.Now().Add(rbWait))
				_, _ = c.conn.Write(q)
			}()
			c.expectFatal(wire.CodeProtocolViolation, "over the limit")
			<-written
		})
	}
}

func TestFencedDuringAuthentication(t *testing.T) {
	p := startProxy(t, proxyOptions{})
	c := rbDial(t, p.Addr(router.RW))
	defer c.close()
	pkt, err := wire.AppendStartupMessage(nil, 3<<16, []wire.Param{{Name: "user", Value: pglocal.UserSCRAM}, {Name: "database", Value: pglocal.AppDB}})
	if err != nil {
		t.Fatal(err)
	}
	c.write(pkt)
	// The server asks for SCRAM; the client takes its time to answer.
	typ, msg, err := c.next(time.Now().Add(rbWait))
	if err != nil {
		t.Fatal(err)
	}
	if code, err := wire.AuthCode(msg); typ != wire.MsgAuthentication || err != nil || code != wire.AuthSASL {
		t.Fatalf("got message %q %v, want AuthenticationSASL", typ, msg)
	}
	replica := cluster.Replicas()[0]
	p.Router.Update(router.Snapshot{Members: []router.Member{
		{Name: replica.Addr(), Addr: replica.Addr(), Role: router.RoleReplica, Healthy: true},
	}})

	// Startup relays whole messages, so the client is at a boundary and
	// is owed the reason.
	c.checkFatal(c.waitEnd(rbWait), wire.CodeAdminShutdown, "no longer a valid target")
}

func TestDrainLetsInFlightStatementFinish(t *testing.T) {
	const drainTimeout = 3 * time.Second
	p := startProxy(t, proxyOptions{Config: proxy.Config{DrainTimeout: drainTimeout}})
	ctx, cancel := context.WithTimeout(context.Background(), rbWait)
	defer cancel()
	super, err := cluster.Primary().Connect(ctx, pglocal.SuperUser, "", "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer super.Close(context.Background())

	c := rbDial(t, p.Addr(router.RW))
	defer c.close()
	c.login(pglocal.UserTrust)
	q, err := (&pgproto3.Query{String: "SELECT pg_sleep(1) AS rb_in_flight"}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	c.write(q)
	// Stop only once the server is running it: the statement is in
	// flight, the session outside any explicit transaction.
	deadline := time.Now().Add(rbWait)
	for {
		var n int
		if err := super.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%rb_in_flight%' AND pid <> pg_backend_pid()").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("statement never showed up as active")
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.stop()

	var got []byte
	var end rbEnd
	for end.code == "" && !end.closed {
		typ, msg, err := c.next(time.Now().Add(drainTimeout + rbWait))
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			t.Fatalf("nothing after %v; saw %q", drainTimeout+rbWait, got)
		case err != nil:
			end.closed = true
		case typ == wire.MsgErrorResponse:
			end.severity, end.code, end.message, _ = wire.ErrorFields(msg)
			end.closed = c.waitEnd(rbWait).closed
		default:
			got = append(got, typ)
		}
	}
	if want := "TDCZ"; string(got) != want {
		// A drain that cut this statement would leave the client without
		// its result or knowing whether it committed.
		t.Fatalf("statement in flight when the drain began was cut: messages %q then %+v; want %q then FATAL 57P01", got, end, want)
	}
	if end.code != wire.CodeAdminShutdown || !end.closed {
		t.Errorf("after the result: %+v, want FATAL 57P01 and a close", end)
	}
}

// rbSecondFatal checks that nothing follows the server's own FATAL: the
// proxy adds no FATAL of its own after the server's, even when a fence
// (the health check seeing the same dead server) races with the close.
func rbSecondFatal(t *testing.T, end rbEnd) {
	t.Helper()
	if len(end.after) != 0 {
		t.Errorf("messages after the FATAL: %q", end.after)
	}
}
