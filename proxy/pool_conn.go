package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pharos-ha/pharos/wire"
)

// serverConn is a pooled server connection. While a session holds it
// (state active or tested) that session owns its socket and the fields
// below the line; while idle the pool does, and nobody touches them.
type serverConn struct {
	// Static after open.
	pool    *pool
	conn    net.Conn
	sig     string
	rev     <-chan struct{} // the revocation of the route it was opened for
	created time.Time
	pid     uint32 // the server's BackendKeyData
	key     []byte

	// Guarded by pools.mu.
	state       serverState
	idleSince   time.Time
	requestTime time.Time

	// Owned by the holder.
	negotiate []byte       // NegotiateProtocolVersion at login, or nil
	params    []wire.Param // the server's ParameterStatus values, kept current
	lostParam bool         // a ParameterStatus too large to keep: the values are unknown
	pending   []byte       // what the server sent right behind its first ReadyForQuery
}

// serverState is what a pooled connection is doing.
type serverState uint8

const (
	serverLogin  serverState = iota // being opened
	serverActive                    // a client's
	serverTested                    // being reset or checked
	serverIdle                      // in the pool
	serverClosed                    // forgotten by the pool
)

func (st serverState) String() string {
	return [...]string{"login", "active", "tested", "idle", "closed"}[st]
}

// noteParam records the value a ParameterStatus message (whole) reports,
// and reports whether the message parsed. A value the connection already
// has costs no allocation.
func (sc *serverConn) noteParam(msg []byte) bool {
	name, value, ok := wire.ParameterStatusBytes(msg)
	if !ok {
		return false
	}
	for i := range sc.params {
		if sc.params[i].Name == string(name) {
			if sc.params[i].Value != string(value) {
				sc.params[i].Value = string(value)
			}
			return true
		}
	}
	sc.params = append(sc.params, wire.Param{Name: string(name), Value: string(value)})
	return true
}

// errBadParameterStatus is a ParameterStatus that does not parse.
var errBadParameterStatus = errors.New("malformed ParameterStatus from the server")

// captured is the ParameterStatus hook of the session's server-side
// Framer; a message too large to keep (nil) or that does not parse leaves
// the values unknown.
func (sc *serverConn) captured(msg []byte) {
	if msg == nil || !sc.noteParam(msg) {
		sc.lostParam = true
	}
}

// openServer dials the route's backend and logs in as the client, with
// startup and the session's credentials, reading the server's answer up
// to its first ReadyForQuery. The session holds the connection while it
// does (sess.backend), so that end wakes it. A server's ErrorResponse is
// returned as *serverRefusal.
func (sess *session) openServer(p *pool, sig string, startup []byte, deadline time.Time) (*serverConn, error) {
	s := sess.srv
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	conn, err := s.dialBackend(ctx, sess.ep, p.key.backend.Addr)
	if err != nil {
		return nil, &dialError{err: err}
	}
	sess.connMu.Lock()
	sess.backend = conn
	ended := sess.ended.Load() != nil
	sess.connMu.Unlock()
	fail := func(err error) (*serverConn, error) {
		sess.connMu.Lock()
		sess.backend = nil
		sess.connMu.Unlock()
		_ = conn.Close()
		return nil, err
	}
	if ended {
		return fail(errors.New("session ended during connect"))
	}
	_ = conn.SetDeadline(deadline)
	if _, err := conn.Write(startup); err != nil {
		return fail(&startupError{code: wire.CodeCannotConnectNow, message: "pharos: lost the backend during startup", err: err})
	}
	sc := &serverConn{pool: p, conn: conn, sig: sig, rev: sess.route.Revoked(), created: time.Now()}
	br := bufio.NewReaderSize(conn, 4096)
	user := p.key.user
	lost := func(err error) (*serverConn, error) {
		return fail(&startupError{code: wire.CodeCannotConnectNow, message: "pharos: lost the server during startup", err: err})
	}
	var buf []byte
	authOK := false
	for {
		if !authOK {
			if err := sess.loginBackend(br, user); err != nil {
				return fail(err)
			}
		}
		typ, msg, err := wire.ReadMessage(br, buf[:0], maxStartupPhaseBody)
		if err != nil {
			return lost(err)
		}
		buf = msg
		switch typ {
		case wire.MsgNegotiateVersion:
			sc.negotiate = slices.Clone(msg)
		case wire.MsgAuthentication:
			if code, err := wire.AuthCode(msg); err != nil || code != wire.AuthOK {
				return fail(&startupError{code: wire.CodeConnectionFailure, message: "pharos: unexpected authentication request from the server"})
			}
			authOK = true
		case wire.MsgParameterStatus:
			if !sc.noteParam(msg) {
				return fail(&startupError{code: wire.CodeConnectionFailure, message: "pharos: invalid data from the server", err: errBadParameterStatus})
			}
		case wire.MsgBackendKeyData:
			pid, key, err := wire.ParseBackendKeyData(msg)
			if err != nil {
				return fail(&startupError{code: wire.CodeConnectionFailure, message: "pharos: invalid data from the server", err: err})
			}
			sc.pid, sc.key = pid, slices.Clone(key)
		case wire.MsgErrorResponse:
			return fail(&serverRefusal{msg: slices.Clone(msg)})
		case wire.MsgReadyForQuery:
			if !authOK {
				return fail(&startupError{code: wire.CodeConnectionFailure, message: "pharos: the server was ready before it accepted the login"})
			}
			if n := br.Buffered(); n > 0 {
				pending, _ := br.Peek(n)
				sc.pending = slices.Clone(pending)
			}
			_ = conn.SetDeadline(time.Time{})
			return sc, nil
		default:
			// NoticeResponse and the like: nothing the pool keeps.
		}
	}
}

// dialError is a backend that could not be reached.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// serverRefusal is the ErrorResponse a server answered a login with.
type serverRefusal struct{ msg []byte }

func (e *serverRefusal) Error() string {
	_, code, message, _ := wire.ErrorFields(e.msg)
	return fmt.Sprintf("server refused the login: %s %s", code, message)
}

// query runs one simple query on an idle (held) connection up to its
// ReadyForQuery, which must say idle, keeping the ParameterStatus values
// it reports. want, when non-zero, is a message type the answer must
// contain (EmptyQueryResponse for the health check). It reads whole
// messages straight from the socket, so nothing is read ahead.
func (sc *serverConn) query(q []byte, want byte, deadline time.Time) error {
	_ = sc.conn.SetDeadline(deadline)
	defer func() { _ = sc.conn.SetDeadline(time.Time{}) }()
	if len(sc.pending) > 0 {
		// Only a connection that never reached a client has them.
		return errors.New("unread data from the server")
	}
	if _, err := sc.conn.Write(q); err != nil {
		return err
	}
	var buf []byte
	seen, failed := false, ""
	for {
		typ, msg, err := wire.ReadMessage(sc.conn, buf[:0], maxStartupPhaseBody)
		if err != nil {
			return err
		}
		buf = msg
		switch typ {
		case wire.MsgParameterStatus:
			if !sc.noteParam(msg) {
				return errBadParameterStatus
			}
		case wire.MsgErrorResponse:
			_, code, message, _ := wire.ErrorFields(msg)
			failed = code + " " + message
		case wire.MsgReadyForQuery:
			switch {
			case failed != "":
				return errors.New(failed)
			case len(msg) != wire.HeaderLen+1 || msg[wire.HeaderLen] != wire.TxIdle:
				return fmt.Errorf("server not idle after the query (status %q)", msg[wire.HeaderLen:])
			case want != 0 && !seen:
				return fmt.Errorf("no message %q in the answer", want)
			}
			return nil
		}
		if typ == want {
			seen = true
		}
	}
}

// socketState is what a non-blocking peek at a connection's socket finds.
type socketState uint8

const (
	socketQuiet  socketState = iota // open, nothing to read
	socketData                      // open, something to read
	socketClosed                    // end of stream, or an error
)

// peekSocket looks at a connection's socket without reading from it.
func peekSocket(c net.Conn) socketState {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	tcp, ok := c.(*net.TCPConn)
	if !ok {
		return socketQuiet
	}
	rc, err := tcp.SyscallConn()
	if err != nil {
		return socketClosed
	}
	st := socketClosed
	err = rc.Control(func(fd uintptr) {
		var b [1]byte
		for {
			n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			switch {
			case err == syscall.EINTR:
				continue
			case err == syscall.EAGAIN:
				st = socketQuiet
			case err == nil && n > 0:
				st = socketData
			}
			return
		}
	})
	if err != nil {
		return socketClosed
	}
	return st
}

// alive reports whether a connection is open and quiet.
func alive(c net.Conn) bool { return peekSocket(c) == socketQuiet }

// maxUnasked bounds the messages settle reads from an idle connection.
const maxUnasked = 64

// settle reports whether an idle connection can be handed out: open, and
// having said nothing unasked but ParameterStatus (a configuration reload
// changed a reported setting: the new value is kept) and notices, which
// it reads. Anything else (a FATAL before the server closes, an end of
// stream) means it cannot.
func (sc *serverConn) settle() bool {
	for range maxUnasked {
		switch peekSocket(sc.conn) {
		case socketQuiet:
			return true
		case socketClosed:
			return false
		}
		// What is there was sent whole: a short deadline only guards
		// against a server that stops mid-message.
		_ = sc.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		typ, msg, err := wire.ReadMessage(sc.conn, nil, wire.MaxCaptureBody)
		_ = sc.conn.SetReadDeadline(time.Time{})
		if err != nil {
			return false
		}
		switch typ {
		case wire.MsgParameterStatus:
			if !sc.noteParam(msg) {
				return false
			}
		case wire.MsgNoticeResponse:
		default:
			return false
		}
	}
	return false
}

// usable checks an idle connection just taken from the pool: open and
// settled (see settle), and for one idle longer than ServerCheckDelay,
// answering an empty query.
func (s *Server) usable(sc *serverConn) bool {
	if !sc.settle() {
		return false
	}
	s.pools.mu.Lock()
	stale := time.Since(sc.idleSince) > s.cfg.ServerCheckDelay
	s.pools.mu.Unlock()
	if !stale {
		return true
	}
	s.setServerState(sc, serverTested)
	err := sc.query(s.emptyQuery, wire.MsgEmptyQuery, time.Now().Add(s.cfg.ConnectTimeout))
	s.setServerState(sc, serverActive)
	if err != nil {
		s.log.Info("pooled server connection failed its check, opening another", "backend", sc.pool.key.backend.Name, "err", err)
		return false
	}
	return true
}

// encodeQuery returns a simple Query message.
func encodeQuery(sql string) []byte {
	b, err := (&pgproto3.Query{String: sql}).Encode(nil)
	if err != nil {
		panic(fmt.Sprintf("encode query: %v", err)) // only over 1 GiB
	}
	return b
}
