package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/router"
	"github.com/pharos-ha/pharos/wire"
)

// runPooled is a session's life after the proxy authenticated its client,
// in pool_mode session: a route, a pool, the client's greeting, a server
// connection from the pool (at once, or at the client's first message
// when the pool already knows what the server says to this signature),
// the relay, and the connection's return.
func (sess *session) runPooled(pkt wire.StartupPacket, deadline time.Time) {
	s := sess.srv
	params := pkt.Params
	if sess.ep == router.RO {
		params = wire.ForceSetting(params, readOnlyParam, "on") // as relay does
	}
	startup, err := wire.AppendStartupMessage(nil, pkt.ProtocolVersion, params)
	if err != nil {
		sess.failStartup(metrics.OutcomeProtocolError, err)
		return
	}
	sig := poolSignature(pkt.ProtocolVersion, params)
	user, _ := pkt.Param("user")
	database, _ := pkt.Param("database")
	if database == "" {
		database = user
	}
	var tried []*router.Backend
	for attempt := 0; ; attempt++ {
		route, outcome, err := sess.acquireRoute(deadline, tried)
		if err != nil {
			sess.failStartup(outcome, err)
			return
		}
		sess.route = route
		s.watchFence(sess, route)
		if closedChan(route.Revoked()) {
			route.Release()
			sess.route = nil
			tried = append(tried, route.Backend)
			continue
		}
		p := s.joinPool(poolKey{ep: sess.ep, backend: route.Backend, user: user, database: database})
		sess.pool = p
		ls := s.login(p, sig)
		var loggedIn func()
		if ls == nil {
			// One login per key at a time: the others wait for what it
			// learns and are answered from it, so a storm of new clients
			// of one key does not fork a backend each at once.
			var wait <-chan struct{}
			wait, loggedIn = s.claimLogin(p, sig)
			if wait != nil {
				ctx, done := sess.waitContext(deadline)
				select {
				case <-wait:
				case <-ctx.Done():
				}
				done()
				ls = s.login(p, sig)
			}
		}
		if ls != nil {
			sess.runLazy(p, sig, startup, ls)
			return
		}
		sc, err := sess.getServer(p, sig, startup, deadline)
		if loggedIn != nil {
			loggedIn()
		}
		var de *dialError
		if errors.As(err, &de) && sess.ep == router.RO && attempt == 0 && sess.ended.Load() == nil {
			s.log.Warn("backend connect failed", "endpoint", sess.ep, "backend", route.Backend.Name, "err", err)
			tried = append(tried, route.Backend)
			s.leavePool(p)
			sess.pool = nil
			route.Release()
			sess.route = nil
			continue
		}
		if err != nil {
			sess.failPooledStartup(err)
			return
		}
		if !sess.greet(sc.negotiate, sc.params) {
			sess.giveBack(sc)
			return
		}
		sess.relayPooled(sc)
		return
	}
}

// acquireRoute asks the router for a backend, skipping tried ones.
func (sess *session) acquireRoute(deadline time.Time, tried []*router.Backend) (*router.Route, metrics.Outcome, error) {
	s := sess.srv
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	ctx, cancelWait := context.WithTimeout(ctx, s.cfg.RouteWait)
	defer cancelWait()
	route, err := s.router.AcquireExcept(ctx, sess.ep, tried)
	if err != nil {
		what := "no primary is available"
		if sess.ep == router.RO {
			what = "no replica is available"
		}
		return nil, metrics.OutcomeNoBackend, &startupError{code: wire.CodeCannotConnectNow, message: "pharos: " + what + " for the " + sess.ep.String() + " endpoint", err: err}
	}
	for _, b := range tried {
		if b == route.Backend {
			route.Release()
			return nil, metrics.OutcomeBackendError, &startupError{code: wire.CodeCannotConnectNow, message: "pharos: could not connect to any backend"}
		}
	}
	return route, "", nil
}

// runLazy answers the client from the pool's memory of this signature's
// login, then waits for its first message holding nothing but the
// session, and only then takes a server connection. The wait runs on a
// new goroutine, which carries the session on and cleans it up: the
// login grew this one's stack, which would stay that size while the
// client idles (a stack only shrinks to a size it uses a quarter of),
// and an idle client should cost little more than its socket.
func (sess *session) runLazy(p *pool, sig string, startup []byte, told *loginState) {
	if !sess.greet(told.negotiate, told.params) {
		return
	}
	sess.waitingSince.Store(0) // idle, not waiting, until its first message
	if sess.group == nil {
		sess.serveLazy(p, sig, startup, told)
		return
	}
	sess.parked = true
	sess.group.Go(func() {
		defer sess.cleanup()
		sess.serveLazy(p, sig, startup, told)
	})
}

// serveLazy is a lazily attached session from the wait for its client's
// first message on.
func (sess *session) serveLazy(p *pool, sig string, startup []byte, told *loginState) {
	s := sess.srv
	more, err := sess.awaitFirstMessage()
	if !more {
		if st := sess.ended.Load(); st != nil && st.message != "" {
			_ = sess.client.SetWriteDeadline(time.Now().Add(fatalWriteGrace))
			_, _ = sess.client.Write(wire.FatalError(st.code, st.message))
		} else if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			s.log.Debug("pooled client left before its first message", "err", err)
		}
		return
	}
	sess.waitingSince.Store(time.Now().UnixNano())
	// A PAUSE since the greeting holds its first message, as PgBouncer
	// holds a query.
	if _, err := sess.waitResumedFor(p.key.database, time.Now().Add(s.cfg.QueryWaitTimeout), "query_wait_timeout"); err != nil {
		sess.failAttached(err)
		return
	}
	sc, err := sess.getServer(p, sig, startup, time.Now().Add(s.cfg.StartupTimeout))
	if err != nil {
		sess.failAttached(err)
		return
	}
	// The server may have said something else since the pool learned it
	// (a setting changed with ALTER ROLE, an upgrade): the client is told
	// what differs before its first answer, as a server tells a SET.
	var out []byte
	for _, kv := range sc.params {
		if v, ok := paramValue(told.params, kv.Name); !ok || v != kv.Value {
			out, _ = (&pgproto3.ParameterStatus{Name: kv.Name, Value: kv.Value}).Encode(out)
		}
	}
	if len(out) > 0 {
		if _, err := sess.client.Write(out); err != nil {
			sess.giveBack(sc)
			return
		}
	}
	sess.relayPooled(sc)
}

func paramValue(ps []wire.Param, name string) (string, bool) {
	for _, kv := range ps {
		if kv.Name == name {
			return kv.Value, true
		}
	}
	return "", false
}

// getServer takes a server connection for the session from p, opening
// one if the pool has none to give, and makes it the session's backend.
func (sess *session) getServer(p *pool, sig string, startup []byte, deadline time.Time) (*serverConn, error) {
	s := sess.srv
	ctx, done := sess.waitContext(time.Now().Add(s.cfg.QueryWaitTimeout))
	defer done()
	if sess.ended.Load() != nil {
		return nil, errSessionEnded
	}
	sc, err := s.checkout(ctx, p, sig, sess.route.Revoked())
	if err != nil {
		if sess.ended.Load() != nil {
			return nil, errSessionEnded
		}
		limit := fmt.Sprintf("pool_size %d", s.cfg.PoolSize)
		if s.cfg.PoolSize == 0 || p.conns < s.cfg.PoolSize {
			limit = fmt.Sprintf("max_db_connections %d", s.cfg.MaxDBConnections)
		}
		return nil, &startupError{code: wire.CodeProtocolViolation, message: fmt.Sprintf(
			"pharos: query_wait_timeout: no server connection for user %q to database %q on backend %s became free within %s (%s reached)",
			p.key.user, p.key.database, p.key.backend.Name, s.cfg.QueryWaitTimeout, limit), err: err}
	}
	if sc == nil {
		sc, err = sess.openServer(p, sig, startup, deadline)
		if err != nil {
			s.openFailed(p)
			return nil, err
		}
		s.opened(sc)
	}
	sess.connMu.Lock()
	sess.backend, sess.sc = sc.conn, sc
	ended := sess.ended.Load() != nil
	if ended {
		sess.backend, sess.sc = nil, nil
	}
	sess.connMu.Unlock()
	if ended {
		s.putIdle(sc)
		return nil, errSessionEnded
	}
	sess.cancelKey.target.set(p.key.backend.Addr, sc.pid, sc.key)
	sess.markAssigned()
	return sc, nil
}

var errSessionEnded = errors.New("session ended")

// waitContext is a context for a wait of the session's, ending at
// deadline or when the session ends; done releases it.
func (sess *session) waitContext(deadline time.Time) (context.Context, func()) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	sess.connMu.Lock()
	sess.cancelWait = cancel
	if sess.ended.Load() != nil {
		cancel()
	}
	sess.connMu.Unlock()
	return ctx, func() {
		sess.connMu.Lock()
		sess.cancelWait = nil
		sess.connMu.Unlock()
		cancel()
	}
}

// detach lets go of the session's server connection: end no longer
// touches it and a CancelRequest finds nothing to cancel. It reports
// whether the session had ended by then.
func (sess *session) detach() bool {
	sess.connMu.Lock()
	ended := sess.ended.Load() != nil
	sess.backend, sess.sc = nil, nil
	sess.connMu.Unlock()
	sess.cancelKey.target.clear()
	return ended
}

// giveBack returns a connection the client never used to the pool as it
// is (it rests after its ReadyForQuery, with nothing sent since).
func (sess *session) giveBack(sc *serverConn) {
	sess.detach()
	sess.srv.putIdle(sc)
}

// failPooledStartup reports a failed pooled startup before the greeting.
func (sess *session) failPooledStartup(err error) {
	var sr *serverRefusal
	var de *dialError
	switch {
	case errors.As(err, &sr):
		// The server's own answer, as in passthrough.
		_, code, _, _ := wire.ErrorFields(sr.msg)
		outcome := metrics.OutcomeServerRefused
		if code == codeInvalidPassword || code == wire.CodeInvalidAuthSpec {
			outcome = metrics.OutcomeAuthFailed
		}
		sess.countOutcome(outcome)
		_ = sess.client.SetWriteDeadline(time.Now().Add(fatalWriteGrace))
		_, _ = sess.client.Write(sr.msg)
	case errors.As(err, &de):
		sess.failStartup(metrics.OutcomeBackendError, &startupError{code: wire.CodeCannotConnectNow,
			message: fmt.Sprintf("pharos: could not connect to backend %s", sess.route.Backend.Name), err: de.err})
	case errors.Is(err, errSessionEnded):
		sess.failStartup(metrics.OutcomeShuttingDown, err)
	default:
		var se *startupError
		outcome := metrics.OutcomeBackendError
		if errors.As(err, &se) && se.code == wire.CodeInvalidAuthSpec {
			outcome = metrics.OutcomeAuthFailed
		}
		sess.failStartup(outcome, err)
	}
}

// failAttached ends a session that was greeted but got no server
// connection at its first message: the client is at a message boundary
// (it has been sent nothing since ReadyForQuery), so it is told why.
func (sess *session) failAttached(err error) {
	s := sess.srv
	var sr *serverRefusal
	var de *dialError
	var se *startupError
	msg := wire.FatalError(wire.CodeConnectionFailure, "pharos: could not open a server connection: "+err.Error())
	switch {
	case errors.Is(err, errSessionEnded):
		st := sess.ended.Load()
		if st == nil || st.message == "" {
			return
		}
		msg = wire.FatalError(st.code, st.message)
	case errors.As(err, &sr):
		msg = sr.msg
	case errors.As(err, &de):
		msg = wire.FatalError(wire.CodeCannotConnectNow, fmt.Sprintf("pharos: could not connect to backend %s: %v", sess.route.Backend.Name, de.err))
	case errors.As(err, &se):
		msg = wire.FatalError(se.code, se.message)
	}
	s.log.Info("pooled session got no server connection", "endpoint", sess.ep, "backend", sess.route.Backend.Name, "err", err)
	sess.end(metrics.ReasonBackendLost, "", "")
	_ = sess.client.SetWriteDeadline(time.Now().Add(fatalWriteGrace))
	_, _ = sess.client.Write(msg)
}

// greet tells the client its login succeeded, as the server would:
// AuthenticationOk, the server's ParameterStatus values, a cancel key the
// proxy issues, ReadyForQuery. It reports whether the session goes on.
func (sess *session) greet(negotiate []byte, params []wire.Param) bool {
	s := sess.srv
	if !sess.authenticated() {
		sess.refuse(metrics.OutcomeTooManyClients, wire.CodeTooManyConnections, "sorry, too many clients already")
		return false
	}
	c := &sess.cancelKey
	if c.ownPID == 0 {
		c.ownPID, c.ownSecret = s.issueCancelKey(&c.target)
	}
	out := append([]byte(nil), negotiate...)
	out, _ = (&pgproto3.AuthenticationOk{}).Encode(out)
	for _, kv := range params {
		out, _ = (&pgproto3.ParameterStatus{Name: kv.Name, Value: kv.Value}).Encode(out)
	}
	out = wire.AppendBackendKeyData(out, c.ownPID, c.ownSecret[:])
	out, _ = (&pgproto3.ReadyForQuery{TxStatus: wire.TxIdle}).Encode(out)
	if _, err := sess.client.Write(out); err != nil {
		sess.countOutcome(metrics.OutcomeClientGone)
		sess.end("", "", "")
		return false
	}
	sess.welcomed()
	return true
}

// awaitFirstMessage waits until the client sends something, holding no
// buffer (on plain TCP: a peek at the socket when it becomes readable),
// and reports whether it is a message to serve: false when the client
// left or sent Terminate, or the session ended.
func (sess *session) awaitFirstMessage() (bool, error) {
	if tc, ok := sess.client.(*net.TCPConn); ok {
		rc, err := tc.SyscallConn()
		if err != nil {
			return false, err
		}
		var peek [1]byte
		n := 0
		var rerr error
		err = rc.Read(func(fd uintptr) bool {
			for {
				m, _, e := syscall.Recvfrom(int(fd), peek[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
				switch e {
				case syscall.EINTR:
					continue
				case syscall.EAGAIN:
					return false
				}
				n, rerr = m, e
				return true
			}
		})
		switch {
		case err != nil:
			return false, err
		case rerr != nil:
			return false, rerr
		case n == 0:
			return false, nil
		}
		return peek[0] != wire.MsgTerminate, nil
	}
	// TLS: read the first byte and give it back to the relay.
	b := make([]byte, 1)
	if n, err := sess.client.Read(b); n == 0 {
		return false, err
	}
	if b[0] == wire.MsgTerminate {
		return false, nil
	}
	sess.connMu.Lock()
	sess.client = &prefixConn{Conn: sess.client, prefix: b}
	sess.connMu.Unlock()
	return true, nil
}

// release is the client side's end when the client left: the server
// side is woken without closing the socket (its read deadline expires
// now; the owner clears it once both copiers have returned), and nothing
// more is written to the client.
func (sess *session) release() {
	sess.releasing.Store(true)
	now := time.Now()
	sess.connMu.Lock()
	if sess.backend != nil {
		_ = sess.backend.SetReadDeadline(now)
	}
	_ = sess.client.SetWriteDeadline(now)
	sess.connMu.Unlock()
}

// relayPooled relays between the client and sc until either leaves, then
// gives sc back to the pool reset, or closes it.
func (sess *session) relayPooled(sc *serverConn) {
	s := sess.srv
	c := &clientToBackend{sess: sess, pooled: true, cleanEnd: true}
	b := &backendToClient{sess: sess, sc: sc}
	b.f.Capture, b.f.Captured = wire.MsgParameterStatus, sc.captured
	var wg sync.WaitGroup
	wg.Go(c.run)
	b.runPooled()
	if !sess.releasing.Load() {
		sess.end("", "", "")
	}
	wg.Wait()
	// Both copiers are done: sc is this goroutine's alone. Once it is
	// detached, end no longer touches it.
	ended := sess.detach()
	if o := sess.reuseVerdict(c, b, sc, ended); o != "" {
		s.discard(sc, o)
		return
	}
	_ = sc.conn.SetDeadline(time.Time{})
	s.setServerState(sc, serverTested)
	if err := sc.query(s.resetQuery, 0, time.Now().Add(s.cfg.ConnectTimeout)); err != nil || sc.lostParam {
		s.log.Info("pooled server connection failed its reset, closing it", "backend", sc.pool.key.backend.Name, "err", err)
		s.discard(sc, metrics.PoolResetFailed)
		return
	}
	s.putIdle(sc)
}

// reuseVerdict says why sc must be closed rather than reset and reused,
// or "" when it may be: the client left (Terminate or end of stream) with
// every request answered, both streams at a message boundary, the last
// client message a sync point, the server idle outside a transaction (so
// not in COPY), the route valid, the proxy not draining, sc younger than
// server_lifetime.
func (sess *session) reuseVerdict(c *clientToBackend, b *backendToClient, sc *serverConn, ended bool) metrics.PoolOutcome {
	s := sess.srv
	idle := b.f.TxStatus() == wire.TxIdle || (b.f.TxStatus() == 0 && b.f.SyncPoints() == 0)
	switch {
	case closedChan(sc.rev) || closedChan(sess.route.Revoked()):
		return metrics.PoolFenced
	case ended || !sess.releasing.Load() || s.drainFlag.Load():
		return metrics.PoolDiscarded
	case !c.f.AtBoundary() || !c.cleanEnd:
		return metrics.PoolDiscarded
	case !b.f.AtBoundary() || b.f.SyncPoints() != c.f.SyncPoints() || !idle || sc.lostParam:
		return metrics.PoolDiscarded
	case time.Since(sc.created) >= s.cfg.ServerLifetime:
		return metrics.PoolExpired
	}
	return ""
}
