package proxy_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pharos-ha/pharos/internal/pgauth"
	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/proxy"
	"github.com/pharos-ha/pharos/router"
)

// tlsAuthProxy starts a proxy that terminates client TLS (tls_mode
// require) and authenticates clients itself with auth_type at, against
// the auth_file writeAuthFile makes. It returns the proxy and its
// certificate and key paths (for reloads).
func tlsAuthProxy(t *testing.T, at proxy.AuthType, backend proxy.BackendTLSMode) (*testProxy, string, string) {
	t.Helper()
	certFile, keyFile := clientTLSFiles(t)
	p := startProxy(t, proxyOptions{
		Config: proxy.Config{
			TLSMode: proxy.TLSRequire, CertFile: certFile, KeyFile: keyFile,
			BackendTLS: backend,
			AuthType:   at, AuthFile: writeAuthFile(t),
		},
		Ready: func(rw string, ro []string) bool { return rw != "" && len(ro) > 0 },
	})
	return p, certFile, keyFile
}

// TestProxyAuthChannelBinding: with the proxy authenticating clients over
// TLS, SCRAM-SHA-256-PLUS is offered and bound to the proxy's own
// certificate, so clients that require channel binding log in.
func TestProxyAuthChannelBinding(t *testing.T) {
	for _, backend := range []proxy.BackendTLSMode{proxy.BackendTLSDisable, proxy.BackendTLSRequire} {
		t.Run("backend_tls "+string(backend), func(t *testing.T) {
			p, _, _ := tlsAuthProxy(t, proxy.AuthSCRAM, backend)
			const bound = "sslmode=require channel_binding=require"
			t.Run("pgx channel_binding=require, both endpoints", func(t *testing.T) {
				whoami(t, p.connect(t, router.RW, pglocal.UserSCRAM, bound), pglocal.UserSCRAM, false)
				whoami(t, p.connect(t, router.RO, pglocal.UserSCRAM, bound), pglocal.UserSCRAM, true)
			})
			t.Run("psql channel_binding=require", func(t *testing.T) {
				r := psql(t, p, router.RW, pglocal.UserSCRAM, bound, "SELECT current_user")
				if r.exitCode != 0 || strings.TrimSpace(r.stdout) != pglocal.UserSCRAM {
					t.Fatalf("psql: %s", r)
				}
			})
			t.Run("wrong password with -PLUS", func(t *testing.T) {
				err := tryConnect(t, p.DSN(router.RW, pglocal.UserSCRAM, bound+" password=wrong-secret"))
				wantPgError(t, err, "28P01", fmt.Sprintf("password authentication failed for user %q", pglocal.UserSCRAM))
			})
			t.Run("unknown user with -PLUS fails like a wrong password", func(t *testing.T) {
				err := tryConnect(t, p.DSN(router.RW, "nobody", bound+" password=whatever"))
				wantPgError(t, err, "28P01", `password authentication failed for user "nobody"`)
			})
			t.Run("channel_binding=disable still logs in", func(t *testing.T) {
				whoami(t, p.connect(t, router.RW, pglocal.UserSCRAM, "sslmode=require channel_binding=disable"), pglocal.UserSCRAM, false)
			})
		})
	}
}

// TestProxyAuthChannelBindingRefuses: a TLS client that says it could bind
// but thinks the proxy cannot ("y") has had -PLUS removed from the offer
// by someone in between, and a client bound to another certificate is on
// another channel: both are refused with 28000, as PostgreSQL does.
func TestProxyAuthChannelBindingRefuses(t *testing.T) {
	p, _, _ := tlsAuthProxy(t, proxy.AuthSCRAM, proxy.BackendTLSDisable)
	keys := scramUserKeys(t)

	t.Run("downgrade", func(t *testing.T) {
		c := dialTLSAuth(t, p, pglocal.UserSCRAM)
		ex := pgauth.NewClientExchange(keys, "clientnonce")
		ex.CouldBind()
		_, err := c.scram(pgauth.Mechanism, ex)
		if want := "28000 " + pgauth.ErrBindingDowngrade.Error(); err == nil || err.Error() != want {
			t.Fatalf("got %v, want %s", err, want)
		}
	})
	t.Run("another certificate's hash", func(t *testing.T) {
		c := dialTLSAuth(t, p, pglocal.UserSCRAM)
		other := append([]byte(nil), c.binding...)
		other[0] ^= 0xff
		ex := pgauth.NewClientExchange(keys, "clientnonce")
		ex.BindChannel(other)
		_, err := c.scram(pgauth.MechanismPlus, ex)
		if want := "28000 SCRAM channel binding check failed"; err == nil || err.Error() != want {
			t.Fatalf("got %v, want %s", err, want)
		}
	})
	t.Run("-PLUS with the right hash", func(t *testing.T) {
		c := dialTLSAuth(t, p, pglocal.UserSCRAM)
		ex := pgauth.NewClientExchange(keys, "clientnonce")
		ex.BindChannel(c.binding)
		if _, err := c.scram(pgauth.MechanismPlus, ex); err != nil {
			t.Fatalf("bound login refused: %v", err)
		}
	})
}

// TestProxyAuthChannelBindingReload: a certificate reloaded between a
// client's handshake and its SCRAM exchange does not break the binding:
// it is the certificate the handshake sent that counts.
func TestProxyAuthChannelBindingReload(t *testing.T) {
	p, certFile, keyFile := tlsAuthProxy(t, proxy.AuthSCRAM, proxy.BackendTLSDisable)
	keys := scramUserKeys(t)
	c := dialTLSAuth(t, p, pglocal.UserSCRAM)

	newCert, newKey := clientTLSFiles(t)
	for _, f := range [][2]string{{newCert, certFile}, {newKey, keyFile}} {
		data, err := os.ReadFile(f[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f[1], data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	ex := pgauth.NewClientExchange(keys, "clientnonce")
	ex.BindChannel(c.binding)
	if _, err := c.scram(pgauth.MechanismPlus, ex); err != nil {
		t.Fatalf("login bound to the handshake's certificate refused after a reload: %v", err)
	}
	c2 := dialTLSAuth(t, p, pglocal.UserSCRAM)
	if string(c2.binding) == string(c.binding) {
		t.Fatalf("the reload did not change the certificate")
	}
	ex = pgauth.NewClientExchange(keys, "clientnonce")
	ex.BindChannel(c2.binding)
	if _, err := c2.scram(pgauth.MechanismPlus, ex); err != nil {
		t.Fatalf("login with the new certificate refused: %v", err)
	}
}

// scramUserKeys derives app_scram's SCRAM keys for the servers' verifier
// (which the auth_file holds), as a client with the password would.
func scramUserKeys(t *testing.T) pgauth.Keys {
	t.Helper()
	v := serverVerifier(t, pglocal.UserSCRAM)
	keys, err := pgauth.NewSCRAMKeys(pglocal.PasswordSCRAM, v.Salt, v.Iterations)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// tlsAuthConn is a hand-driven client connection over TLS, its startup
// packet sent and the proxy's AuthenticationSASL read.
type tlsAuthConn struct {
	fe      *pgproto3.Frontend
	mechs   []string
	binding []byte // tls-server-end-point data of the certificate the proxy sent
}

func dialTLSAuth(t *testing.T, p *testProxy, user string) *tlsAuthConn {
	t.Helper()
	raw, err := net.DialTimeout("tcp", p.Addr(router.RW).String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = raw.Close() })
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := raw.Write([]byte{0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f}); err != nil {
		t.Fatal(err)
	}
	var answer [1]byte
	if _, err := raw.Read(answer[:]); err != nil || answer[0] != 'S' {
		t.Fatalf("SSLRequest answer %q, %v", answer, err)
	}
	tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	binding, err := pgauth.TLSServerEndPoint(tc.ConnectionState().PeerCertificates[0])
	if err != nil {
		t.Fatal(err)
	}
	fe := pgproto3.NewFrontend(tc, tc)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": user, "database": pglocal.AppDB}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	msg, err := fe.Receive()
	sasl, ok := msg.(*pgproto3.AuthenticationSASL)
	if err != nil || !ok {
		t.Fatalf("first answer %#v, %v; want AuthenticationSASL", msg, err)
	}
	if got := strings.Join(sasl.AuthMechanisms, ","); got != pgauth.MechanismPlus+","+pgauth.Mechanism {
		t.Fatalf("mechanisms offered over TLS: %s", got)
	}
	return &tlsAuthConn{fe: fe, mechs: sasl.AuthMechanisms, binding: binding}
}

// scram runs ex with the proxy under mech and returns the server-final
// message, or the proxy's error as "code message".
func (c *tlsAuthConn) scram(mech string, ex *pgauth.ClientExchange) ([]byte, error) {
	recv := func() (pgproto3.BackendMessage, error) {
		msg, err := c.fe.Receive()
		if err != nil {
			return nil, err
		}
		if er, ok := msg.(*pgproto3.ErrorResponse); ok {
			return nil, fmt.Errorf("%s %s", er.Code, er.Message)
		}
		return msg, nil
	}
	c.fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: mech, Data: ex.First()})
	if err := c.fe.Flush(); err != nil {
		return nil, err
	}
	msg, err := recv()
	if err != nil {
		return nil, err
	}
	cont, ok := msg.(*pgproto3.AuthenticationSASLContinue)
	if !ok {
		return nil, fmt.Errorf("got %#v, want AuthenticationSASLContinue", msg)
	}
	final, err := ex.ServerFirst(cont.Data)
	if err != nil {
		return nil, err
	}
	c.fe.Send(&pgproto3.SASLResponse{Data: final})
	if err := c.fe.Flush(); err != nil {
		return nil, err
	}
	if msg, err = recv(); err != nil {
		return nil, err
	}
	fin, ok := msg.(*pgproto3.AuthenticationSASLFinal)
	if !ok {
		return nil, fmt.Errorf("got %#v, want AuthenticationSASLFinal", msg)
	}
	if err := ex.ServerFinal(fin.Data); err != nil {
		return nil, err
	}
	if msg, err = recv(); err != nil {
		return nil, err
	}
	if _, ok := msg.(*pgproto3.AuthenticationOk); !ok {
		return nil, fmt.Errorf("got %#v, want AuthenticationOk", msg)
	}
	return fin.Data, nil
}

// TestProxyAuthChannelBindingEd25519: a certificate without a
// tls-server-end-point hash (Ed25519) gets no -PLUS offer: a TLS client
// says "y" and logs in, one that requires binding is told by its driver.
func TestProxyAuthChannelBindingEd25519(t *testing.T) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "pharos ed25519 test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "ed.crt"), filepath.Join(dir, "ed.key")
	_ = os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	_ = os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), 0o600)
	p := startProxy(t, proxyOptions{
		Config: proxy.Config{TLSMode: proxy.TLSRequire, CertFile: certFile, KeyFile: keyFile, AuthType: proxy.AuthSCRAM, AuthFile: writeAuthFile(t)},
	})
	whoami(t, p.connect(t, router.RW, pglocal.UserSCRAM, "sslmode=require channel_binding=prefer"), pglocal.UserSCRAM, false)
	err = tryConnect(t, p.DSN(router.RW, pglocal.UserSCRAM, "sslmode=require channel_binding=require"))
	if err == nil || !strings.Contains(err.Error(), "SCRAM-SHA-256-PLUS") {
		t.Fatalf("channel_binding=require against a certificate without a binding: %v", err)
	}
}
