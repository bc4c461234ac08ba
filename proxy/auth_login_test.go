package proxy

import (
	"bufio"
	"crypto/tls"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pharos-ha/pharos/internal/pgauth"
	"github.com/pharos-ha/pharos/internal/pglocal"
)

// TestLoginBackendChecksTheServer runs the proxy's backend login against a
// scripted server: it must hold the verifier (prove it with its
// signature) before the proxy lets the session go on.
func TestLoginBackendChecksTheServer(t *testing.T) {
	verifier, err := pgauth.NewSCRAMVerifier("pw", []byte("salt-of-the-cluster"), 4096)
	if err != nil {
		t.Fatal(err)
	}
	// The keys a client's SCRAM login with the proxy leaves.
	keys := loginKeys(t, verifier, "pw")
	other, _ := pgauth.NewSCRAMVerifier("other", verifier.Salt, 4096)
	for _, tc := range []struct {
		name    string
		server  pgauth.Verifier // what the scripted server holds
		final   func(real []byte) []byte
		wantErr string // "" = login returns, leaving next for the relay
		next    byte
	}{
		{name: "server holds the verifier", server: verifier, final: func(b []byte) []byte { return b }, next: 'R'},
		{name: "wrong signature", server: verifier, final: func([]byte) []byte { return []byte("v=" + strings.Repeat("A", 43) + "=") }, wantErr: "SCRAM signature is wrong"},
		{name: "no signature", server: verifier, final: nil, wantErr: "before completing SCRAM authentication"},
		// The server refuses the proof: its error goes to the client as in
		// passthrough.
		{name: "server with another password", server: other, next: 'E'},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proxySide, serverSide := net.Pipe()
			done := make(chan struct{})
			defer func() { _ = proxySide.Close(); <-done }()
			_ = proxySide.SetDeadline(time.Now().Add(5 * time.Second))
			_ = serverSide.SetDeadline(time.Now().Add(5 * time.Second))
			go func() { defer close(done); scriptedServer(serverSide, tc.server, tc.final) }()
			sess := &session{backend: proxySide, creds: &backendCreds{scram: &keys}}
			br := bufio.NewReader(proxySide)
			err := sess.loginBackend(br, "alice")
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("login: %v", err)
				}
				if b, err := br.Peek(1); err != nil || b[0] != tc.next {
					t.Fatalf("left %q (%v) for the relay, want %q", b, err, tc.next)
				}
				return
			}
			var se *startupError
			if !errors.As(err, &se) || !strings.Contains(se.message, tc.wantErr) {
				t.Fatalf("login error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

// scriptedServer plays a SCRAM server holding v; final rewrites its
// server-final-message (nil: skip it and say AuthenticationOk at once).
func scriptedServer(conn net.Conn, v pgauth.Verifier, final func([]byte) []byte) {
	scriptedServerMechs(conn, v, final, []string{pgauth.MechanismPlus, pgauth.Mechanism}, nil, nil)
}

// scriptedServerMechs is scriptedServer offering mechs, with binding its
// certificate's tls-server-end-point data when it offers -PLUS; chosen
// gets the mechanism and client-first-message the client sent.
func scriptedServerMechs(conn net.Conn, v pgauth.Verifier, final func([]byte) []byte, mechs []string, binding []byte, chosen chan<- string) {
	defer conn.Close()
	be := pgproto3.NewBackend(conn, conn)
	be.Send(&pgproto3.AuthenticationSASL{AuthMechanisms: mechs})
	if be.Flush() != nil {
		return
	}
	be.SetAuthType(pgproto3.AuthTypeSASL)
	msg, err := be.Receive()
	initial, ok := msg.(*pgproto3.SASLInitialResponse)
	if err != nil || !ok {
		return
	}
	if chosen != nil {
		chosen <- initial.AuthMechanism + " " + string(initial.Data)
	}
	ex := pgauth.NewServerExchange(v, false, "servernonce")
	if binding != nil {
		if ex.SelectMechanism(initial.AuthMechanism, binding) != nil {
			return
		}
	}
	sf, err := ex.ClientFirst(initial.Data)
	if err != nil {
		be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", Code: "28000", Message: err.Error()})
		_ = be.Flush()
		return
	}
	be.Send(&pgproto3.AuthenticationSASLContinue{Data: sf})
	if be.Flush() != nil {
		return
	}
	be.SetAuthType(pgproto3.AuthTypeSASLContinue)
	msg, err = be.Receive()
	resp, ok := msg.(*pgproto3.SASLResponse)
	if err != nil || !ok {
		return
	}
	fin, _, err := ex.ClientFinal(resp.Data)
	if err != nil {
		be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", Code: "28P01", Message: "password authentication failed"})
		_ = be.Flush()
		return
	}
	if final != nil {
		be.Send(&pgproto3.AuthenticationSASLFinal{Data: final(fin)})
	}
	be.Send(&pgproto3.AuthenticationOk{})
	_ = be.Flush()
	// Hold the connection so the proxy side can peek.
	var b [1]byte
	_, _ = conn.Read(b[:])
}

// loginKeys returns the keys a login with password leaves.
func loginKeys(t *testing.T, v pgauth.Verifier, password string) pgauth.Keys {
	t.Helper()
	keys, err := pgauth.NewSCRAMKeys(password, v.Salt, v.Iterations)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// TestLoginBackendChannelBinding: over backend TLS the proxy binds its
// SCRAM login to the server's certificate when the server offers
// SCRAM-SHA-256-PLUS, says "y" when it does not, and the scripted server
// (a pgauth server exchange checking the binding as PostgreSQL does)
// accepts both.
func TestLoginBackendChannelBinding(t *testing.T) {
	certPEM, keyPEM, err := pglocal.SelfSignedCert()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	binding, err := pgauth.TLSServerEndPoint(cert.Leaf)
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := pgauth.NewSCRAMVerifier("pw", []byte("salt-of-the-cluster"), 4096)
	if err != nil {
		t.Fatal(err)
	}
	keys := loginKeys(t, verifier, "pw")
	for _, tc := range []struct {
		name  string
		mechs []string
		want  string // mechanism and GS2 header the proxy must send
	}{
		{name: "-PLUS offered", mechs: []string{pgauth.MechanismPlus, pgauth.Mechanism}, want: "SCRAM-SHA-256-PLUS p=tls-server-end-point,,"},
		{name: "-PLUS not offered", mechs: []string{pgauth.Mechanism}, want: "SCRAM-SHA-256 y,,"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proxyRaw, serverRaw := net.Pipe()
			deadline := time.Now().Add(5 * time.Second)
			_ = proxyRaw.SetDeadline(deadline)
			_ = serverRaw.SetDeadline(deadline)
			chosen := make(chan string, 1)
			done := make(chan struct{})
			proxySide := tls.Client(proxyRaw, &tls.Config{InsecureSkipVerify: true})
			defer func() { _ = proxySide.Close(); <-done }()
			go func() {
				defer close(done)
				serverSide := tls.Server(serverRaw, &tls.Config{Certificates: []tls.Certificate{cert}})
				if serverSide.Handshake() != nil {
					_ = serverRaw.Close()
					return
				}
				var b []byte
				if slices.Contains(tc.mechs, pgauth.MechanismPlus) {
					b = binding
				}
				scriptedServerMechs(serverSide, verifier, func(b []byte) []byte { return b }, tc.mechs, b, chosen)
			}()
			if err := proxySide.Handshake(); err != nil {
				t.Fatal(err)
			}
			sess := &session{backend: proxySide, creds: &backendCreds{scram: &keys}}
			br := bufio.NewReader(proxySide)
			if err := sess.loginBackend(br, "alice"); err != nil {
				t.Fatalf("login: %v", err)
			}
			if got := <-chosen; !strings.HasPrefix(got, tc.want) {
				t.Fatalf("proxy sent %q, want %q...", got, tc.want)
			}
			if b, err := br.Peek(1); err != nil || b[0] != 'R' {
				t.Fatalf("left %q (%v) for the relay, want AuthenticationOk", b, err)
			}
		})
	}
}
