package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pharos-ha/pharos/internal/pgauth"
	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/wire"
)

// SQLSTATE of a wrong password (PostgreSQL's invalid_password).
const codeInvalidPassword = "28P01"

// maxAuthMessageBody bounds a client's password or SASL message, as
// PostgreSQL's PG_MAX_AUTH_TOKEN_LENGTH does.
const maxAuthMessageBody = 65535

// loadAuthFile reads and parses an auth_file.
func loadAuthFile(path string) (map[string]pgauth.Verifier, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	users, err := pgauth.ParseUserlist(string(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return users, nil
}

// backendCreds is what a client's login with the proxy leaves for logging
// in to the backend as that user. It lives in the session only.
type backendCreds struct {
	scram *pgauth.Keys  // from a SCRAM login
	md5   string        // from an md5 login (or a cert user's auth_file): the stored hash, hex without "md5"
	pw    *passwordCred // a cert user's auth_file password: SCRAM keys derived for the server's salt
}

// nonce returns a fresh random SCRAM nonce (base32: printable, no comma).
func nonce() string { return rand.Text() }

// authenticateClient runs the proxy's own authentication of the client
// (auth_type other than passthrough) and keeps in sess.creds what the
// backend login needs. It is the only reader and writer of the client
// until it returns. deadline bounds a lookup of the user in the cluster.
//
// With auth_query, a failed login whose verifier came from the cache asks
// the cluster again, so that the next attempt uses the current verifier.
// An md5 answer is checked again against the new hash at once (its
// challenge does not depend on the verifier); a SCRAM proof cannot be: the
// client derived it from the salt the proxy sent, and a new password has a
// new salt, so that attempt fails and the next one succeeds.
func (sess *session) authenticateClient(user string, deadline time.Time) (metrics.Outcome, error) {
	s := sess.srv
	if s.cfg.AuthType == AuthCert {
		return sess.authenticateCert(user)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	lookupFailed := func(err error) (metrics.Outcome, error) {
		s.log.Warn("auth_query: could not look the user up", "user", user, "err", err)
		switch {
		case errors.Is(err, errNoAuthBackend):
			return metrics.OutcomeNoBackend, &startupError{code: wire.CodeConnectionFailure,
				message: fmt.Sprintf("pharos: could not look up user %q to authenticate it: %v", user, err), err: err}
		case errors.Is(err, errAuthQueryBusy):
			return metrics.OutcomeBackendError, &startupError{code: wire.CodeTooManyConnections,
				message: fmt.Sprintf("pharos: could not look up user %q to authenticate it: %v; try again", user, errAuthQueryBusy), err: err}
		}
		return metrics.OutcomeBackendError, &startupError{code: wire.CodeConnectionFailure,
			message: fmt.Sprintf("pharos: could not look up user %q to authenticate it (auth_query failed; the proxy's log says why)", user), err: err}
	}
	v, known, fetched, err := s.users.lookup(ctx, user, false)
	if err != nil {
		return lookupFailed(err)
	}
	// refresh asks the cluster again after a failed login, once.
	refresh := func() (pgauth.Verifier, bool, bool) {
		if fetched {
			return pgauth.Verifier{}, false, false
		}
		nv, nknown, _, err := s.users.lookup(ctx, user, true)
		if errors.Is(err, errAuthQueryBusy) {
			// Failed logins coming faster than lookups may run: the
			// cached answer stands until its TTL.
			s.log.Debug("auth_query: no refresh after a failed login, lookups are at their rate limit", "user", user)
			return pgauth.Verifier{}, false, false
		}
		if err != nil {
			s.log.Warn("auth_query: could not refresh the user after a failed login", "user", user, "err", err)
			return pgauth.Verifier{}, false, false
		}
		return nv, nknown, true
	}
	failed := &startupError{code: codeInvalidPassword, message: fmt.Sprintf("password authentication failed for user %q", user)}
	switch {
	case s.cfg.AuthType == AuthTrust:
		if !known {
			if _, nknown, ok := refresh(); !ok || !nknown {
				return metrics.OutcomeAuthFailed, &startupError{code: wire.CodeInvalidAuthSpec, message: fmt.Sprintf("role %q does not exist", user)}
			}
		}
		sess.creds = &backendCreds{}
		return "", nil
	case s.cfg.AuthType == AuthMD5 && known && v.Kind == pgauth.KindMD5:
		// An unknown user gets the mock SCRAM exchange below, as from
		// PostgreSQL's md5 method with password_encryption scram-sha-256
		// (its default): the same as a user with a SCRAM verifier, so the
		// kind of challenge does not tell who exists.
		hash := v.MD5
		answer, salt, err := sess.clientMD5()
		if err != nil {
			return metrics.OutcomeProtocolError, err
		}
		ok := checkMD5(answer, hash, salt)
		if !ok {
			if nv, nknown, refreshed := refresh(); refreshed && nknown && nv.Kind == pgauth.KindMD5 {
				hash = nv.MD5
				ok = checkMD5(answer, hash, salt)
			}
		}
		if !ok {
			return metrics.OutcomeAuthFailed, failed
		}
		sess.creds = &backendCreds{md5: hash}
		return "", nil
	}
	// SCRAM: auth_type scram-sha-256, or md5 for a user with a SCRAM
	// verifier. A user without one runs the exchange against a mock
	// verifier and fails at the proof, as in PostgreSQL, so an unknown
	// user cannot be told from a wrong password, by the answer or by its
	// timing.
	mock := !known || v.Kind != pgauth.KindSCRAM
	if mock {
		v = pgauth.MockVerifier(s.mockSecret, user)
	}
	keys, err := sess.clientSCRAM(v, mock)
	if err != nil {
		if errors.Is(err, pgauth.ErrAuthFailed) {
			// The salt sent is spent: the refreshed verifier is for the
			// client's next attempt.
			refresh()
			return metrics.OutcomeAuthFailed, failed
		}
		return metrics.OutcomeProtocolError, err
	}
	sess.creds = &backendCreds{scram: &keys}
	return "", nil
}

// writeClient encodes msg to the client.
func (sess *session) writeClient(msg pgproto3.BackendMessage) error {
	b, err := msg.Encode(nil)
	if err != nil {
		return err
	}
	_, err = sess.client.Write(b)
	return err
}

// readPasswordMessage reads the client's next message, which must be a
// 'p' (PasswordMessage, SASLInitialResponse or SASLResponse), and returns
// its body.
func (sess *session) readPasswordMessage(what string) ([]byte, error) {
	typ, msg, err := wire.ReadMessage(sess.client, nil, maxAuthMessageBody)
	if err != nil {
		return nil, err
	}
	if typ != wire.MsgSASLInitialResponse {
		return nil, &startupError{code: wire.CodeProtocolViolation, message: fmt.Sprintf("expected %s, got message type %q", what, typ)}
	}
	return msg[wire.HeaderLen:], nil
}

// malformedSCRAM is the FATAL for a refused SCRAM message: 08P01 for a
// malformed one, 28000 for a channel-binding downgrade or mismatch, as in
// PostgreSQL.
func malformedSCRAM(err error) error {
	if errors.Is(err, pgauth.ErrBindingDowngrade) || errors.Is(err, pgauth.ErrBindingMismatch) {
		return &startupError{code: wire.CodeInvalidAuthSpec, message: err.Error()}
	}
	return &startupError{code: wire.CodeProtocolViolation, message: err.Error()}
}

// clientSCRAM runs the server side of SCRAM-SHA-256 with the client:
// SCRAM-SHA-256-PLUS is offered too when the client's connection is TLS
// (bound to the proxy's certificate, which is the end of the client's
// channel), so that channel_binding=require works through the proxy.
func (sess *session) clientSCRAM(v pgauth.Verifier, mock bool) (pgauth.Keys, error) {
	if err := sess.writeClient(&pgproto3.AuthenticationSASL{AuthMechanisms: pgauth.ServerMechanisms(sess.binding)}); err != nil {
		return pgauth.Keys{}, err
	}
	body, err := sess.readPasswordMessage("SASL response")
	if err != nil {
		return pgauth.Keys{}, err
	}
	var initial pgproto3.SASLInitialResponse
	if err := initial.Decode(body); err != nil {
		return pgauth.Keys{}, &startupError{code: wire.CodeProtocolViolation, message: "invalid SASLInitialResponse", err: err}
	}
	ex := pgauth.NewServerExchange(v, mock, nonce())
	if err := ex.SelectMechanism(initial.AuthMechanism, sess.binding); err != nil {
		return pgauth.Keys{}, &startupError{code: wire.CodeProtocolViolation, message: "client selected an invalid SASL authentication mechanism"}
	}
	serverFirst, err := ex.ClientFirst(initial.Data)
	if err != nil {
		return pgauth.Keys{}, malformedSCRAM(err)
	}
	if err := sess.writeClient(&pgproto3.AuthenticationSASLContinue{Data: serverFirst}); err != nil {
		return pgauth.Keys{}, err
	}
	if body, err = sess.readPasswordMessage("SASL response"); err != nil {
		return pgauth.Keys{}, err
	}
	serverFinal, keys, err := ex.ClientFinal(body)
	if err != nil {
		if errors.Is(err, pgauth.ErrAuthFailed) {
			return pgauth.Keys{}, err
		}
		return pgauth.Keys{}, malformedSCRAM(err)
	}
	if err := sess.writeClient(&pgproto3.AuthenticationSASLFinal{Data: serverFinal}); err != nil {
		return pgauth.Keys{}, err
	}
	return keys, nil
}

// clientMD5 runs an md5 challenge with the client and returns its answer
// and the salt it was given.
func (sess *session) clientMD5() (string, [4]byte, error) {
	var salt [4]byte
	_, _ = rand.Read(salt[:])
	if err := sess.writeClient(&pgproto3.AuthenticationMD5Password{Salt: salt}); err != nil {
		return "", salt, err
	}
	body, err := sess.readPasswordMessage("password response")
	if err != nil {
		return "", salt, err
	}
	var pm pgproto3.PasswordMessage
	if err := pm.Decode(body); err != nil {
		return "", salt, &startupError{code: wire.CodeProtocolViolation, message: "invalid password packet", err: err}
	}
	return pm.Password, salt, nil
}

// checkMD5 reports, in constant time, whether answer is hash's response to
// salt.
func checkMD5(answer, hash string, salt [4]byte) bool {
	want := pgauth.MD5Response(hash, salt)
	return subtle.ConstantTimeCompare([]byte(answer), []byte(want)) == 1
}

// bindBackend chooses the SCRAM mechanism towards a server offering
// mechs over conn, and sets ex's channel binding to match: over TLS,
// SCRAM-SHA-256-PLUS bound to the server's certificate when it is offered
// (the proxy's own connection to the server is the channel), "y" when it
// is not (so a server that supports it sees the downgrade); "n" over
// plaintext, or when the certificate has no tls-server-end-point hash.
func bindBackend(ex *pgauth.ClientExchange, conn net.Conn, mechs []string) string {
	tc, ok := conn.(*tls.Conn)
	if !ok {
		return pgauth.Mechanism
	}
	if !slices.Contains(mechs, pgauth.MechanismPlus) {
		ex.CouldBind()
		return pgauth.Mechanism
	}
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return pgauth.Mechanism
	}
	binding, err := pgauth.TLSServerEndPoint(certs[0])
	if err != nil {
		return pgauth.Mechanism
	}
	ex.BindChannel(binding)
	return pgauth.MechanismPlus
}

// loginBackend answers the backend's authentication requests with
// sess.creds, up to (not including) its AuthenticationOk or any other
// message, which the relay's startup phase then reads from br as it does
// in passthrough. Nothing is relayed to the client meanwhile.
func (sess *session) loginBackend(br *bufio.Reader, user string) error {
	fail := func(format string, args ...any) error {
		return &startupError{code: wire.CodeInvalidAuthSpec, message: "pharos: " + fmt.Sprintf(format, args...)}
	}
	c := sess.creds
	var ex *pgauth.ClientExchange
	verified := false // the server's SCRAM signature checked
	var buf []byte
	for {
		hdr, err := br.Peek(wire.HeaderLen + 4)
		if err != nil && len(hdr) < wire.HeaderLen {
			return &startupError{code: wire.CodeCannotConnectNow, message: "pharos: lost the server during startup", err: err}
		}
		if hdr[0] != wire.MsgAuthentication {
			return nil
		}
		if code, err := wire.AuthCode(hdr); err == nil && code == wire.AuthOK {
			if ex != nil && !verified {
				// A server that skips its signature has not shown that it
				// holds the verifier.
				return fail("the server accepted user %q before completing SCRAM authentication", user)
			}
			return nil
		}
		_, msg, err := wire.ReadMessage(br, buf[:0], maxStartupPhaseBody)
		if err != nil {
			return &startupError{code: wire.CodeCannotConnectNow, message: "pharos: lost the server during startup", err: err}
		}
		buf = msg
		code, err := wire.AuthCode(msg)
		if err != nil {
			return &startupError{code: wire.CodeConnectionFailure, message: "pharos: invalid authentication request from the server", err: err}
		}
		if c.scram == nil && c.md5 == "" && c.pw == nil {
			if sess.srv.cfg.AuthType == AuthCert {
				return fail("the server asks user %q for a password (authentication request %d); with auth_type cert the proxy has none for this user: give its password in auth_file, or have the servers accept the proxy's certificate (backend_tls_cert_file) or trust the proxy for the user", user, code)
			}
			return fail("the server asks user %q for a password (authentication request %d); with auth_type trust the proxy has none, so the server must trust the proxy for this user", user, code)
		}
		var out pgproto3.FrontendMessage
		switch code {
		case wire.AuthSASL:
			mechs, err := wire.SASLMechanisms(msg)
			if err != nil {
				return &startupError{code: wire.CodeConnectionFailure, message: "pharos: invalid SASL request from the server", err: err}
			}
			switch {
			case !slices.Contains(mechs, pgauth.Mechanism):
				return fail("the server asks user %q for SASL mechanisms %v, none of which is SCRAM-SHA-256", user, mechs)
			case c.scram != nil:
				ex = pgauth.NewClientExchange(*c.scram, nonce())
			case c.pw != nil && c.pw.password != "":
				ex = pgauth.NewClientExchangeFunc(c.pw.scramKeys, nonce())
			case c.pw != nil:
				return fail("the server asks user %q for SCRAM-SHA-256, and the auth_file gives the proxy only an md5 hash for the user: give its password", user)
			default:
				return fail("the server asks user %q for SCRAM-SHA-256, which the proxy can only answer after a SCRAM login (the auth_file's verifier for the user is md5)", user)
			}
			out = &pgproto3.SASLInitialResponse{AuthMechanism: bindBackend(ex, sess.backend, mechs), Data: ex.First()}
		case wire.AuthSASLContinue:
			if ex == nil {
				return fail("the server sent a SASL challenge out of order")
			}
			final, err := ex.ServerFirst(msg[wire.HeaderLen+4:])
			if errors.Is(err, pgauth.ErrVerifierMismatch) {
				if sess.srv.cfg.AuthUser != "" {
					return fail("%v (user %q: was the password just changed, and this server has not replayed the change yet?)", err, user)
				}
				return fail("%v (user %q: was the password changed? refresh auth_file)", err, user)
			}
			if err != nil {
				return fail("SCRAM with the server: %v", err)
			}
			out = &pgproto3.SASLResponse{Data: final}
		case wire.AuthSASLFinal:
			if ex == nil {
				return fail("the server sent a SASL final message out of order")
			}
			if err := ex.ServerFinal(msg[wire.HeaderLen+4:]); err != nil {
				return fail("SCRAM with the server: %v", err)
			}
			verified = true
			continue
		case wire.AuthMD5Password:
			if c.md5 == "" || len(msg) < wire.HeaderLen+8 {
				return fail("the server asks user %q for an md5 password, which the proxy can only answer after an md5 login", user)
			}
			var salt [4]byte
			copy(salt[:], msg[wire.HeaderLen+4:])
			out = &pgproto3.PasswordMessage{Password: pgauth.MD5Response(c.md5, salt)}
		default:
			return fail("the server asks user %q for authentication request %d, which the proxy cannot answer", user, code)
		}
		b, err := out.Encode(nil)
		if err != nil {
			return err
		}
		if _, err := sess.backend.Write(b); err != nil {
			return &startupError{code: wire.CodeCannotConnectNow, message: "pharos: lost the server during startup", err: err}
		}
	}
}
