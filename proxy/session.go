package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/router"
	"github.com/pharos-ha/pharos/wire"
)

// maxStartupPhaseBody bounds any single server message before the first
// ReadyForQuery (authentication requests, ParameterStatus, notices).
const maxStartupPhaseBody = 1 << 20

// scramPlus is the SASL mechanism that binds SCRAM to the TLS channel. The
// proxy never lets a client see it: the client's channel is not the
// server's, so the binding could never verify.
const scramPlus = "SCRAM-SHA-256-PLUS"

// session is one client connection. Its fields are owned by run except
// where noted.
type session struct {
	srv *Server
	ep  router.Endpoint

	connMu  sync.Mutex // guards client and backend pointers for end
	client  net.Conn   // a *tls.Conn once the client negotiated TLS
	backend net.Conn

	accepted  time.Time
	slot      slot // which count of srv the session holds; owned by run
	route     *router.Route
	cancelKey sessionCancel
	creds     *backendCreds // the proxy's own login left these; nil in passthrough
	binding   []byte        // tls-server-end-point data of the certificate the client's TLS got; nil without

	// Shared between goroutines.
	ended atomic.Pointer[endState]
	// Drain bookkeeping: a session is idle when every request the client
	// forwarded has been answered and the last answer said 'I'.
	drainMu  sync.Mutex
	requests uint64 // guarded by drainMu: client sync points forwarded
	cut      bool   // guarded by drainMu: the drain decided to end it
	// answered packs, in one word so the drain never sees one half new and
	// the other old, the count of ReadyForQuery messages forwarded (<<1)
	// and whether the server side rests at a boundary after an 'I' (bit 0).
	answered   atomic.Uint64
	clientQuit atomic.Bool // the client sent Terminate
	attached   atomic.Bool // the first ReadyForQuery reached the client

	// For the admin console (adminstats.go).
	id           uint64                     // unique in the process; static
	info         atomic.Pointer[clientInfo] // set once the startup packet is read
	xacts        atomic.Uint64              // ReadyForQuery 'I' forwarded: transactions ended
	waitingSince atomic.Int64               // unix ns when it began to wait for a server; 0 before
	waited       atomic.Int64               // ns it waited for its server, +1; 0 until it has one
	retired      bool                       // guarded by srv.mu: its counts moved to the totals
	sample       sessionSample              // guarded by srv.stats.mu

	// Pooled sessions (pool_mode session).
	pool       *pool              // owned by run: the pool it counts in
	sc         *serverConn        // guarded by connMu: the server connection it holds
	cancelWait context.CancelFunc // guarded by connMu: ends a wait for a server connection
	fence      <-chan struct{}    // guarded by srv.mu: the revocation its fence ends it at
	releasing  atomic.Bool        // the client left: the server side stops without closing
	group      *sync.WaitGroup    // static: the server's sessions, which a parked session's goroutine joins
	parked     bool               // owned by run: a new goroutine carries the session on and cleans up
}

// endState is why a session ends. An empty message means no FATAL is owed
// to the client (it left, or the server already said why).
type endState struct {
	reason  metrics.TerminateReason // "" when the proxy did not cut it
	code    string
	message string
	// outcome classifies a session that ends before its first
	// ReadyForQuery; "" lets the backend side decide.
	outcome metrics.Outcome
}

// slot says which of the server's per-endpoint counts a session holds.
type slot uint8

const (
	slotNone    slot = iota // refused at AuthenticationOk: counts nowhere
	slotPending             // not authenticated yet
	slotClient              // authenticated
)

// newSession is called by the accept loop once the connection holds a
// pending slot.
func (s *Server) newSession(ep router.Endpoint, conn net.Conn) *session {
	s.metrics.PendingClients.WithLabelValues(ep.String()).Inc()
	return &session{srv: s, ep: ep, client: conn, accepted: time.Now(), slot: slotPending, id: s.nextID.Add(1)}
}

// authenticated moves the session from the pending count to the client
// count when the server accepts its login, and reports whether that count
// had room.
func (sess *session) authenticated() bool {
	if sess.slot != slotPending {
		return sess.slot == slotClient
	}
	s, ep := sess.srv, sess.ep.String()
	s.pending[sess.ep].Add(-1)
	s.metrics.PendingClients.WithLabelValues(ep).Dec()
	if !takeSlot(&s.clients[sess.ep], s.cfg.MaxClientsPerEndpoint) {
		sess.slot = slotNone
		return false
	}
	sess.slot = slotClient
	s.metrics.Clients.WithLabelValues(ep).Inc()
	return true
}

// releaseSlot gives back whichever count the session holds.
func (sess *session) releaseSlot() {
	s, ep := sess.srv, sess.ep.String()
	switch sess.slot {
	case slotPending:
		s.pending[sess.ep].Add(-1)
		s.metrics.PendingClients.WithLabelValues(ep).Dec()
	case slotClient:
		s.clients[sess.ep].Add(-1)
		s.metrics.Clients.WithLabelValues(ep).Dec()
	}
	sess.slot = slotNone
}

// end records why the session ends (first caller wins) and wakes both
// copiers by expiring their deadlines. Safe from any goroutine.
func (sess *session) end(reason metrics.TerminateReason, code, message string) {
	sess.finish(&endState{reason: reason, code: code, message: message})
}

// finish is end with the whole state given.
func (sess *session) finish(st *endState) {
	reason := st.reason
	if !sess.ended.CompareAndSwap(nil, st) {
		return
	}
	if reason != "" {
		sess.srv.metrics.Terminated.WithLabelValues(string(reason)).Inc()
	}
	now := time.Now()
	sess.connMu.Lock()
	defer sess.connMu.Unlock()
	_ = sess.client.SetDeadline(now)
	if sess.backend != nil {
		_ = sess.backend.SetDeadline(now)
	}
	if sess.cancelWait != nil {
		sess.cancelWait()
	}
}

// drainIfIdle ends the session now when no transaction is open; a busy
// session is ended by its own copier when it next becomes idle.
func (sess *session) drainIfIdle() {
	sess.drainMu.Lock()
	a := sess.answered.Load()
	idle := !sess.cut && a&1 == 1 && a>>1 == sess.requests
	if idle {
		sess.cut = true
	}
	sess.drainMu.Unlock()
	if idle {
		sess.end(metrics.ReasonShutdown, wire.CodeAdminShutdown, "terminating connection because the proxy is shutting down")
	}
}

// startRequest records that the client has sent its n-th sync point and
// reports whether it may go to the server: not once the drain has cut the
// session, so a statement is never sent to be lost with the connection.
func (sess *session) startRequest(n uint64) bool {
	sess.drainMu.Lock()
	defer sess.drainMu.Unlock()
	if sess.cut {
		return false
	}
	sess.requests = n
	return true
}

// setAnswered publishes the server side's progress for drainIfIdle.
func (sess *session) setAnswered(readyForQuery uint64, idle bool) {
	v := readyForQuery << 1
	if idle {
		v |= 1
	}
	sess.answered.Store(v)
}

func (sess *session) run() {
	s := sess.srv
	defer func() {
		if !sess.parked {
			sess.cleanup()
		}
	}()
	if !s.addSession(sess) {
		sess.refuse(metrics.OutcomeShuttingDown, wire.CodeAdminShutdown, "the proxy is shutting down")
		return
	}
	deadline := sess.accepted.Add(s.cfg.StartupTimeout)
	packetDeadline := sess.accepted.Add(s.cfg.StartupPacketTimeout)
	if deadline.Before(packetDeadline) {
		packetDeadline = deadline
	}
	_ = sess.client.SetDeadline(packetDeadline)

	pkt, outcome, err := sess.readStartup()
	if err != nil {
		sess.failStartup(outcome, err)
		return
	}
	if pkt.Kind == wire.KindCancelRequest {
		sess.handleCancel(pkt)
		s.metrics.Sessions.WithLabelValues(sess.ep.String(), string(metrics.OutcomeCancelRequest)).Inc()
		return
	}
	// Authentication gets the rest of StartupTimeout, unless the session
	// was ended meanwhile (end's expired deadline must stay).
	sess.connMu.Lock()
	if sess.ended.Load() == nil {
		_ = sess.client.SetDeadline(deadline)
	}
	sess.connMu.Unlock()
	info := startupInfo(pkt, s.cfg.AuthType != AuthPassthrough)
	sess.info.Store(info)
	if info.console {
		sess.console(deadline)
		return
	}
	if s.cfg.AuthType != AuthPassthrough {
		if outcome, err := sess.authenticateClient(info.user, deadline); err != nil {
			sess.failStartup(outcome, err)
			return
		}
	}
	sess.waitingSince.Store(time.Now().UnixNano())
	if outcome, err := sess.waitResumed(info.database, deadline); err != nil {
		sess.failStartup(outcome, err)
		return
	}
	if s.cfg.PoolMode == PoolSession && poolable(pkt.Params) {
		sess.runPooled(pkt, deadline)
		return
	}
	if outcome, err := sess.attach(deadline); err != nil {
		sess.failStartup(outcome, err)
		return
	}
	sess.relay(pkt, deadline)
}

// cleanup releases what the session holds, once it is over.
func (sess *session) cleanup() {
	s := sess.srv
	s.retire(sess)
	sess.connMu.Lock()
	_ = sess.client.Close()
	if sess.backend != nil {
		_ = sess.backend.Close()
	}
	sess.connMu.Unlock()
	if sess.pool != nil {
		s.leavePool(sess.pool)
	}
	if sess.route != nil {
		sess.route.Release()
	}
	s.dropCancel(&sess.cancelKey)
	s.removeSession(sess)
	sess.releaseSlot()
}

// startupError carries the SQLSTATE and text a client is told when its
// startup fails before a backend is attached.
type startupError struct {
	code, message string
	err           error
}

func (e *startupError) Error() string {
	if e.err != nil {
		return e.message + ": " + e.err.Error()
	}
	return e.message
}

func (e *startupError) Unwrap() error { return e.err }

// failStartup reports a failed startup to the client (when it can still
// listen) and counts it.
func (sess *session) failStartup(outcome metrics.Outcome, err error) {
	if st := sess.ended.Load(); st != nil && st.message != "" {
		sess.refuse(metrics.OutcomeShuttingDown, st.code, st.message)
		return
	}
	var se *startupError
	var pe *wire.ProtocolError
	switch {
	case errors.As(err, &se):
		sess.refuse(outcome, se.code, se.message)
	case errors.As(err, &pe):
		sess.refuse(outcome, pe.Code, pe.Message)
	case errors.Is(err, os.ErrDeadlineExceeded):
		sess.refuse(metrics.OutcomeTimeout, wire.CodeProtocolViolation, "timeout expired during startup")
	default:
		// EOF or a reset: nobody is left to tell.
		if outcome == "" {
			outcome = metrics.OutcomeClientGone
		}
		sess.srv.metrics.Sessions.WithLabelValues(sess.ep.String(), string(outcome)).Inc()
	}
	sess.srv.log.Debug("session startup failed", "endpoint", sess.ep, "remote", sess.client.RemoteAddr(), "outcome", outcome, "err", err)
}

// refuse sends FATAL code/message to the client and counts the outcome.
func (sess *session) refuse(outcome metrics.Outcome, code, message string) {
	sess.srv.metrics.Sessions.WithLabelValues(sess.ep.String(), string(outcome)).Inc()
	_ = sess.client.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = sess.client.Write(wire.FatalError(code, message))
}

// readStartup runs the client's side of the startup phase up to a
// StartupMessage or CancelRequest: TLS negotiation, GSSAPI refusal, policy.
func (sess *session) readStartup() (wire.StartupPacket, metrics.Outcome, error) {
	s := sess.srv
	buf := make([]byte, 0, 512)
	tlsDone := false
	// The first byte tells a PostgreSQL 17 client using direct TLS
	// (sslnegotiation=direct: a TLS handshake straight away) from a startup
	// packet's length word, which can never begin with that byte.
	var first [1]byte
	if _, err := io.ReadFull(sess.client, first[:]); err != nil {
		return wire.StartupPacket{}, metrics.OutcomeClientGone, err
	}
	// replay holds the byte read ahead until the first packet is read.
	var replay io.Reader = bytes.NewReader(first[:])
	if first[0] == wire.TLSHandshakeByte {
		if s.clientTLS == nil {
			// A TLS client cannot read a plaintext error; close.
			return wire.StartupPacket{}, metrics.OutcomeTLSError, errors.New("direct TLS handshake, but TLS is disabled")
		}
		if err := sess.startTLS(&prefixConn{Conn: sess.client, prefix: first[:]}, true); err != nil {
			return wire.StartupPacket{}, metrics.OutcomeTLSError, err
		}
		tlsDone, replay = true, nil
	}
	for {
		var src io.Reader = sess.client
		if replay != nil {
			src, replay = io.MultiReader(replay, sess.client), nil
		}
		pkt, err := wire.ReadStartupPacket(src, buf)
		if err != nil {
			var pe *wire.ProtocolError
			if errors.As(err, &pe) {
				return pkt, metrics.OutcomeProtocolError, err
			}
			return pkt, metrics.OutcomeClientGone, err
		}
		switch pkt.Kind {
		case wire.KindSSLRequest:
			if tlsDone {
				return pkt, metrics.OutcomeProtocolError, &startupError{code: wire.CodeProtocolViolation, message: "SSLRequest received on an encrypted connection"}
			}
			if s.clientTLS == nil {
				if _, err := sess.client.Write([]byte{'N'}); err != nil {
					return pkt, metrics.OutcomeClientGone, err
				}
				continue
			}
			if _, err := sess.client.Write([]byte{'S'}); err != nil {
				return pkt, metrics.OutcomeClientGone, err
			}
			if err := sess.startTLS(sess.client, false); err != nil {
				// The client speaks TLS now; a plaintext error would be noise.
				return pkt, metrics.OutcomeTLSError, err
			}
			tlsDone = true
		case wire.KindGSSENCRequest:
			// No GSSAPI encryption: the client falls back to TLS or plain.
			if _, err := sess.client.Write([]byte{'N'}); err != nil {
				return pkt, metrics.OutcomeClientGone, err
			}
		case wire.KindCancelRequest:
			return pkt, "", nil
		case wire.KindStartupMessage:
			if s.cfg.TLSMode == TLSRequire && !tlsDone {
				return pkt, metrics.OutcomeTLSError, &startupError{code: wire.CodeInvalidAuthSpec, message: "SSL connection is required by the proxy"}
			}
			// pkt aliases buf; it is used until the session ends, so the
			// next loop iteration must not reuse it.
			return pkt, "", nil
		}
		buf = pkt.Raw[:0]
	}
}

// startTLS runs the server side of a TLS handshake on conn and makes the
// session's client connection the TLS one. Direct TLS must have agreed on
// the "postgresql" ALPN protocol, as PostgreSQL 17 requires, so a TLS
// client meant for another service is not taken for a database client.
func (sess *session) startTLS(conn net.Conn, direct bool) error {
	bc := &boundConn{Conn: conn}
	tc := tls.Server(bc, sess.srv.clientTLS)
	if err := tc.Handshake(); err != nil {
		return err
	}
	if direct && tc.ConnectionState().NegotiatedProtocol != alpnPostgres {
		return errors.New("direct TLS without the postgresql ALPN protocol")
	}
	sess.binding = bc.binding()
	sess.connMu.Lock()
	sess.client = tc
	sess.connMu.Unlock()
	return nil
}

// alpnPostgres is the ALPN protocol PostgreSQL clients offer (17+).
const alpnPostgres = "postgresql"

// prefixConn replays bytes already read from Conn before reading more.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
