package proxy

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/router"
	"github.com/pharos-ha/pharos/wire"
)

const (
	readOnlyParam   = "default_transaction_read_only"
	fatalWriteGrace = time.Second // time to deliver a FATAL to a client that may not be reading
)

// relay runs an attached session from the StartupMessage to its end. It
// owns the two copier goroutines and the fencing watcher.
func (sess *session) relay(pkt wire.StartupPacket, deadline time.Time) {
	params := pkt.Params
	if sess.ep == router.RO {
		// The server applies the startup packet's settings after the
		// client's "options" and takes the last of several, matching names
		// without case: every spelling of it the client sent, in either
		// place, is dropped and ours goes last, so a client cannot switch
		// it off at connect time.
		params = wire.ForceSetting(params, readOnlyParam, "on")
	}
	startup, err := wire.AppendStartupMessage(nil, pkt.ProtocolVersion, params)
	if err != nil {
		sess.failStartup(metrics.OutcomeProtocolError, err)
		return
	}
	_ = sess.backend.SetDeadline(deadline)
	if _, err := sess.backend.Write(startup); err != nil {
		sess.failStartup(metrics.OutcomeBackendError, &startupError{code: wire.CodeCannotConnectNow, message: "pharos: lost the backend during startup", err: err})
		return
	}

	br := bufio.NewReaderSize(sess.backend, 8192)
	if sess.creds != nil {
		// The proxy authenticated the client: it logs in to the server
		// itself before anything is relayed.
		user, _ := pkt.Param("user")
		if err := sess.loginBackend(br, user); err != nil {
			sess.failStartup(metrics.OutcomeAuthFailed, err)
			return
		}
	}

	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Go((&clientToBackend{sess: sess}).run)
	wg.Go(func() {
		select {
		case <-sess.route.Revoked():
			sess.end(metrics.ReasonFenced, wire.CodeAdminShutdown,
				fmt.Sprintf("terminating connection because backend %s is no longer a valid target for the %s endpoint: %s",
					sess.route.Backend.Name, sess.ep, sess.route.RevokedBecause()))
		case <-done:
		}
	})
	(&backendToClient{sess: sess, br: br}).run()
	close(done)
	sess.end("", "", "")
	wg.Wait()
}

// clientToBackend copies the client's messages to the backend, checking
// framing and the size limit. It is the only writer to the backend once
// the StartupMessage is sent.
type clientToBackend struct {
	sess     *session
	f        wire.Framer
	backend  io.Writer // the backend connection, raw when it is plain TCP
	requests uint64    // sync points already reported to the session
	// Pooled sessions: the client's Terminate is kept from the server, and
	// whether the server connection may be reused depends on how the
	// client's stream ended.
	pooled bool
	// What was forwarded ends with a sync point (or nothing was). A
	// Terminate passed on (with other messages) is not one, so it leaves
	// this false.
	cleanEnd bool
}

func (c *clientToBackend) run() {
	s := c.sess.srv
	c.f.Frontend = true
	c.backend = newWriter(c.sess.backend)
	if s.cfg.MaxMessageSize > 0 {
		c.f.MaxBodyLen = s.cfg.MaxMessageSize - 4
	}
	err := pump(c.sess.client, &s.buffers, c.forward)
	if errors.Is(err, os.ErrDeadlineExceeded) && !c.sess.attached.Load() {
		// The startup deadline passed with authentication unfinished.
		c.sess.finish(&endState{code: wire.CodeProtocolViolation, message: "pharos: timeout expired during startup", outcome: metrics.OutcomeTimeout})
	}
	if c.pooled && c.sess.ended.Load() == nil {
		// The client left: the server connection may outlive it.
		c.sess.release()
		return
	}
	// The client left, or end woke us: nobody to tell.
	c.sess.end("", "", "")
}

// forward handles one chunk from the client; false ends the pump.
func (c *clientToBackend) forward(p []byte) bool {
	sess := c.sess
	if !sess.attached.Load() && sess.bindingDoomed(p) {
		sess.finish(&endState{code: wire.CodeInvalidAuthSpec, outcome: metrics.OutcomeAuthFailed, message: "pharos: SCRAM " +
			"channel binding cannot pass through a proxy that terminates TLS when the backend connection also uses TLS " +
			"(the server would reject it as a downgrade); connect with channel_binding=disable, or run the proxy with backend_tls disable"})
		return false
	}
	atBoundary := c.f.AtBoundary()
	if err := c.f.Feed(p); err != nil {
		reason := metrics.ReasonProtocolViolation
		if errors.Is(err, wire.ErrMessageTooLarge) {
			reason = metrics.ReasonMessageTooLarge
		}
		code := wire.CodeProtocolViolation
		var pe *wire.ProtocolError
		if errors.As(err, &pe) {
			code = pe.Code
		}
		sess.end(reason, code, "pharos: "+err.Error())
		return false
	}
	if n := c.f.SyncPoints(); n != c.requests {
		if !sess.startRequest(n) {
			return false
		}
		c.requests = n
	}
	if c.f.LastType() == wire.MsgTerminate && c.f.AtBoundary() {
		// Before the write: the server closes as soon as it reads
		// Terminate, and the backend side must already know why.
		sess.clientQuit.Store(true)
		if c.pooled && atBoundary && len(p) == wire.HeaderLen {
			// A Terminate alone: the client leaves, the server stays.
			return false
		}
	}
	if _, err := c.backend.Write(p); err != nil {
		sess.end(metrics.ReasonBackendLost, wire.CodeConnectionFailure, "pharos: lost the connection to the server")
		return false
	}
	if c.pooled {
		c.cleanEnd = c.f.AtBoundary() && wire.IsSyncPoint(c.f.LastType())
	}
	sess.srv.bytesC2B.Add(float64(len(p)))
	return true
}

// backendToClient relays the server's side: whole messages through the
// startup phase (to filter SASL mechanisms and learn the cancel key), then
// a raw stream whose boundaries a Framer follows. It is the only writer to
// the client after the StartupMessage.
type backendToClient struct {
	sess         *session
	sc           *serverConn   // pooled sessions: the server connection relayed
	br           *bufio.Reader // the backend connection, read whole messages at a time until ReadyForQuery
	f            wire.Framer
	client       io.Writer // the client connection, raw when it is plain TCP
	clientBroken bool      // a write to the client failed: its stream position is unknown
	xacts        uint64    // transactions already published to the session
}

func (b *backendToClient) run() {
	sess := b.sess
	s := sess.srv
	br := b.br
	if !b.startup(br) {
		// The startup phase writes whole messages, so the client is at a
		// boundary unless a write to it failed.
		if !b.clientBroken {
			b.sendFatal()
		}
		return
	}
	b.client = newWriter(sess.client)
	ok := true
	if n := br.Buffered(); n > 0 {
		// What the server sent right behind ReadyForQuery (a notice, an
		// async notification) is still in the startup reader.
		pending, _ := br.Peek(n)
		ok = b.forward(pending)
	}
	if ok {
		_ = pump(sess.backend, &s.buffers, b.forward)
	}
	b.finish()
}

// runPooled is run for a pooled session: no startup phase (the session
// greeted its client itself), and a wake by release (the client left)
// ends it quietly, leaving the server connection as it is.
func (b *backendToClient) runPooled() {
	sess := b.sess
	b.client = newWriter(sess.client)
	ok := true
	if p := b.sc.pending; len(p) > 0 {
		b.sc.pending = nil
		ok = b.forward(p)
	}
	var err error
	if ok {
		err = pump(sess.backend, &sess.srv.buffers, b.forward)
	}
	if sess.releasing.Load() && sess.ended.Load() == nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return
	}
	b.finish()
}

// finish ends the session once the server side stopped, telling the
// client why when it is owed a reason and can be told.
func (b *backendToClient) finish() {
	sess := b.sess
	if sess.ended.Load() == nil {
		// The server closed on its own: after Terminate, or after a FATAL
		// it sent itself (which the client has), nothing more is owed.
		if sess.clientQuit.Load() || (b.f.AtBoundary() && b.f.LastType() == wire.MsgErrorResponse) {
			sess.end("", "", "")
		} else {
			sess.end(metrics.ReasonBackendLost, wire.CodeConnectionFailure, "pharos: the server closed the connection unexpectedly")
		}
	}
	// After the server's own error (its FATAL when it dies, typically) a
	// second FATAL from the proxy would only confuse the client.
	serverSaidWhy := b.f.LastType() == wire.MsgErrorResponse
	if !b.clientBroken && b.f.AtBoundary() && !serverSaidWhy {
		b.sendFatal()
	}
}

// sendFatal tells the client why the session ends, if the proxy owes it a
// reason; the caller checks that the client stream is at a boundary.
func (b *backendToClient) sendFatal() {
	st := b.sess.ended.Load()
	if st == nil || st.message == "" {
		return
	}
	_ = b.sess.client.SetWriteDeadline(time.Now().Add(fatalWriteGrace))
	_, _ = b.sess.client.Write(wire.FatalError(st.code, st.message))
}

// forward handles one chunk from the server; false ends the pump.
func (b *backendToClient) forward(p []byte) bool {
	sess := b.sess
	s := sess.srv
	if err := b.f.Feed(p); err != nil {
		sess.end(metrics.ReasonBackendLost, wire.CodeConnectionFailure, "pharos: invalid data from the server: "+err.Error())
		return false
	}
	if _, err := b.client.Write(p); err != nil {
		b.clientBroken = true
		sess.end("", "", "")
		return false
	}
	s.bytesB2C.Add(float64(len(p)))
	idle := b.f.AtBoundary() && b.f.TxStatus() == wire.TxIdle
	sess.setAnswered(b.f.SyncPoints(), idle)
	if n := b.f.IdleReadies(); n != b.xacts {
		// Once per transaction, not per chunk: for SHOW STATS.
		b.xacts = n
		sess.xacts.Store(n)
	}
	if idle && s.drainFlag.Load() {
		sess.drainIfIdle()
	}
	return true
}

// startup relays server messages until the first ReadyForQuery. It reports
// whether the session is established.
func (b *backendToClient) startup(br *bufio.Reader) bool {
	sess := b.sess
	var out, msgBuf []byte
	flush := func() error {
		if len(out) == 0 {
			return nil
		}
		_, err := sess.client.Write(out)
		out = out[:0]
		if err != nil {
			b.clientBroken = true
		}
		return err
	}
	for {
		typ, msg, err := wire.ReadMessage(br, msgBuf[:0], maxStartupPhaseBody)
		if err != nil {
			_ = flush()
			if errors.Is(err, os.ErrDeadlineExceeded) && sess.ended.Load() == nil {
				sess.finish(&endState{code: wire.CodeProtocolViolation, message: "pharos: timeout expired during startup", outcome: metrics.OutcomeTimeout})
			}
			st := sess.ended.Load()
			switch {
			case st == nil && !sess.clientQuit.Load():
				sess.end("", wire.CodeCannotConnectNow, "pharos: lost the server during startup: "+err.Error())
				sess.countOutcome(metrics.OutcomeBackendError)
			case st == nil || (st.message == "" && st.outcome == ""):
				sess.end("", "", "")
				sess.countOutcome(metrics.OutcomeClientGone)
			case st.outcome != "":
				sess.countOutcome(st.outcome)
			default:
				sess.countOutcome(metrics.OutcomeShuttingDown)
			}
			return false
		}
		msgBuf = msg
		switch typ {
		case wire.MsgAuthentication:
			code, err := wire.AuthCode(msg)
			if err == nil && code == wire.AuthOK && !sess.authenticated() {
				b.refuseOverLimit(flush)
				return false
			}
			if err == nil && code == wire.AuthSASL {
				mechs, err := wire.SASLMechanisms(msg)
				if err == nil && slices.Contains(mechs, scramPlus) {
					msg = wire.AppendSASLRequest(nil, slices.DeleteFunc(mechs, func(m string) bool { return m == scramPlus }))
				}
			}
		case wire.MsgBackendKeyData:
			msg = sess.backendKeyData(msg)
		case wire.MsgErrorResponse:
			out = append(out, msg...)
			_ = flush()
			_, code, _, _ := wire.ErrorFields(msg)
			outcome := metrics.OutcomeServerRefused
			if code == "28P01" || code == wire.CodeInvalidAuthSpec {
				outcome = metrics.OutcomeAuthFailed
			}
			sess.countOutcome(outcome)
			sess.end("", "", "")
			return false
		case wire.MsgReadyForQuery:
			// A server always says AuthenticationOk first; one that did
			// not still leaves the pending count here.
			if !sess.authenticated() {
				b.refuseOverLimit(flush)
				return false
			}
			out = append(out, msg...)
			if err := flush(); err != nil {
				sess.countOutcome(metrics.OutcomeClientGone)
				sess.end("", "", "")
				return false
			}
			sess.established()
			return true
		}
		out = append(out, msg...)
		// Coalesce the burst after authentication (ParameterStatus,
		// BackendKeyData, ReadyForQuery) into one write; flush whenever the
		// server has nothing more buffered so round trips never stall.
		if br.Buffered() == 0 {
			if err := flush(); err != nil {
				sess.countOutcome(metrics.OutcomeClientGone)
				sess.end("", "", "")
				return false
			}
		}
	}
}

// refuseOverLimit ends a session whose login the server accepted while
// the endpoint has MaxClientsPerEndpoint sessions. The client is at a
// message boundary (the startup phase relays whole messages), so once what
// came before is flushed it is owed FATAL 53300 instead of the
// AuthenticationOk.
func (b *backendToClient) refuseOverLimit(flush func() error) {
	sess := b.sess
	if flush() == nil {
		sess.finish(&endState{code: wire.CodeTooManyConnections, message: "sorry, too many clients already", outcome: metrics.OutcomeTooManyClients})
	} else {
		sess.end("", "", "")
	}
	sess.countOutcome(metrics.OutcomeTooManyClients)
}

// established is welcomed for a session whose server sent the first
// ReadyForQuery itself: it holds its server connection from now on.
func (sess *session) established() {
	sess.markAssigned()
	sess.welcomed()
}

// welcomed records that the client has its first ReadyForQuery, from the
// server or from the pool: counted, at rest, startup deadlines cleared
// unless the session is already ending (end's expired deadlines must
// stay), and drained at once when the proxy is draining.
func (sess *session) welcomed() {
	sess.countOutcome(metrics.OutcomeOK)
	sess.attached.Store(true)
	sess.setAnswered(0, true)
	sess.connMu.Lock()
	if sess.ended.Load() == nil {
		_ = sess.client.SetDeadline(time.Time{})
		if sess.backend != nil {
			_ = sess.backend.SetDeadline(time.Time{})
		}
	}
	sess.connMu.Unlock()
	if sess.srv.drainFlag.Load() {
		sess.drainIfIdle()
	}
}

func (sess *session) countOutcome(o metrics.Outcome) {
	sess.srv.metrics.Sessions.WithLabelValues(sess.ep.String(), string(o)).Inc()
}

// bindingDoomed reports whether p starts with a SASLInitialResponse that
// the server is bound to refuse: a TLS client that saw no -PLUS mechanism
// (the proxy removed it) says "y" (I could bind, I think you cannot), and a
// server on TLS takes that for a downgrade attack. Naming the way out is
// kinder than the server's bare "channel binding negotiation error".
func (sess *session) bindingDoomed(p []byte) bool {
	if sess.srv.backendTLS == nil || len(p) < wire.HeaderLen || p[0] != wire.MsgSASLInitialResponse {
		return false
	}
	if _, ok := sess.client.(*tls.Conn); !ok {
		return false
	}
	mech, data, ok := wire.ParseSASLInitialResponse(p)
	return ok && mech == "SCRAM-SHA-256" && len(data) >= 2 && data[0] == 'y' && data[1] == ','
}
