package proxy_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/proxy"
	"github.com/pharos-ha/pharos/router"
)

// clientTLSFiles writes a self-signed certificate for 127.0.0.1 and its key
// into a temporary directory and returns the two paths.
func clientTLSFiles(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "pharos proxy test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "proxy.crt"), filepath.Join(dir, "proxy.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// tlsProxy starts a proxy terminating client TLS in mode.
func tlsProxy(t *testing.T, mode proxy.TLSMode, backend proxy.BackendTLSMode, caFile string) *testProxy {
	t.Helper()
	certFile, keyFile := clientTLSFiles(t)
	return startProxy(t, proxyOptions{Config: proxy.Config{
		TLSMode: mode, CertFile: certFile, KeyFile: keyFile,
		BackendTLS: backend, BackendCAFile: caFile,
	}})
}

// connectErr tries a pgx connection that is expected to fail.
func connectErr(t *testing.T, dsn string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err == nil {
		_ = conn.Close(ctx)
		return nil
	}
	return err
}

func isTLS(conn *pgx.Conn) bool {
	_, ok := conn.PgConn().Conn().(*tls.Conn)
	return ok
}

func TestClientTLS(t *testing.T) {
	require := tlsProxy(t, proxy.TLSRequire, "", "")
	allow := tlsProxy(t, proxy.TLSAllow, "", "")

	t.Run("require: psql with channel_binding=prefer", func(t *testing.T) {
		for _, ep := range []router.Endpoint{router.RW, router.RO} {
			r := psql(t, require, ep, pglocal.UserSCRAM, "sslmode=require channel_binding=prefer", `\conninfo`, "SELECT current_user")
			if r.exitCode != 0 {
				t.Fatalf("%s: %s", ep, r)
			}
			if !strings.Contains(r.stdout, "SSL connection (protocol: TLS") || !strings.Contains(r.stdout, pglocal.UserSCRAM+"\n") {
				t.Errorf("%s: psql was not connected with TLS as %s: %s", ep, pglocal.UserSCRAM, r)
			}
		}
	})
	t.Run("require: pgx with channel_binding=prefer", func(t *testing.T) {
		for _, ep := range []router.Endpoint{router.RW, router.RO} {
			conn := require.connect(t, ep, pglocal.UserSCRAM, "sslmode=require channel_binding=prefer")
			if !isTLS(conn) {
				t.Errorf("%s: pgx connection is not TLS", ep)
			}
		}
	})
	t.Run("require: md5 and trust over TLS", func(t *testing.T) {
		for _, user := range []string{pglocal.UserMD5, pglocal.UserTrust} {
			if conn := require.connect(t, router.RW, user, "sslmode=require"); !isTLS(conn) {
				t.Errorf("%s: pgx connection is not TLS", user)
			}
		}
	})
	t.Run("require: psql with channel_binding=require fails clearly", func(t *testing.T) {
		// The proxy hides SCRAM-SHA-256-PLUS: the client's TLS channel is
		// not the server's, so a binding could never verify.
		r := runProgram(t, 15*time.Second, pglocal.PasswordSCRAM, "psql", "-X", "-w",
			"-d", libpqConnInfo(require, router.RW, pglocal.UserSCRAM, "sslmode=require channel_binding=require"), "-c", "SELECT 1")
		if r.exitCode == 0 || !strings.Contains(r.stderr, "channel binding") {
			t.Fatalf("%s\nwant a non-zero exit and an error about channel binding", r)
		}
		t.Logf("psql: %s", r.stderr)
	})
	t.Run("require: pgx with channel_binding=require fails clearly", func(t *testing.T) {
		err := connectErr(t, require.DSN(router.RW, pglocal.UserSCRAM, "sslmode=require channel_binding=require"))
		if err == nil || !strings.Contains(err.Error(), "channel binding") {
			t.Fatalf("got %v, want an error about channel binding", err)
		}
	})
	t.Run("require: plaintext refused with 28000", func(t *testing.T) {
		err := connectErr(t, require.DSN(router.RO, pglocal.UserSCRAM, "sslmode=disable"))
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "28000" || pe.Severity != "FATAL" || !strings.Contains(pe.Message, "SSL connection is required") {
			t.Fatalf("got %v, want FATAL 28000 SSL connection is required", err)
		}
		r := psql(t, require, router.RW, pglocal.UserSCRAM, "sslmode=disable", "SELECT 1")
		if r.exitCode != 2 || !strings.Contains(r.stderr, "SSL connection is required") {
			t.Fatalf("psql: %s\nwant exit 2 and the proxy's FATAL", r)
		}
	})
	t.Run("allow: TLS and plaintext both accepted", func(t *testing.T) {
		for _, tc := range []struct {
			sslmode string
			wantTLS bool
		}{{"require", true}, {"disable", false}, {"prefer", true}} {
			conn := allow.connect(t, router.RW, pglocal.UserSCRAM, "sslmode="+tc.sslmode)
			if isTLS(conn) != tc.wantTLS {
				t.Errorf("sslmode=%s: TLS %v, want %v", tc.sslmode, isTLS(conn), tc.wantTLS)
			}
			r := psql(t, allow, router.RO, pglocal.UserSCRAM, "sslmode="+tc.sslmode, `\conninfo`)
			if r.exitCode != 0 || strings.Contains(r.stdout, "SSL connection") != tc.wantTLS {
				t.Errorf("psql sslmode=%s: %s", tc.sslmode, r)
			}
		}
	})
}

// backendSSL reports whether the session's server-side connection is
// encrypted, as the server sees it.
func backendSSL(t *testing.T, conn *pgx.Conn) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var ssl bool
	if err := conn.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil {
		t.Fatal(err)
	}
	return ssl
}

func TestBackendTLS(t *testing.T) {
	dir := t.TempDir()
	clusterCA := filepath.Join(dir, "cluster-ca.pem")
	if err := os.WriteFile(clusterCA, cluster.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	otherCA, _ := clientTLSFiles(t) // a valid CA that did not sign the servers' certificate
	for _, tc := range []struct {
		name    string
		mode    proxy.BackendTLSMode
		caFile  string
		wantSSL bool
	}{
		{"disable", proxy.BackendTLSDisable, "", false},
		{"require", proxy.BackendTLSRequire, "", true},
		{"verify-ca with the cluster's CA", proxy.BackendTLSVerifyCA, clusterCA, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startProxy(t, proxyOptions{Config: proxy.Config{BackendTLS: tc.mode, BackendCAFile: tc.caFile}})
			for _, ep := range []router.Endpoint{router.RW, router.RO} {
				for _, user := range []string{pglocal.UserSCRAM, pglocal.UserMD5} {
					conn := p.connect(t, ep, user, "")
					if got := backendSSL(t, conn); got != tc.wantSSL {
						t.Errorf("%s as %s: backend ssl %v, want %v", ep, user, got, tc.wantSSL)
					}
				}
			}
		})
	}
	t.Run("verify-ca with another CA refuses with 57P03", func(t *testing.T) {
		p := startProxy(t, proxyOptions{Config: proxy.Config{BackendTLS: proxy.BackendTLSVerifyCA, BackendCAFile: otherCA}})
		err := connectErr(t, p.DSN(router.RW, pglocal.UserSCRAM, ""))
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != codeCannotConnectNow || pe.Severity != "FATAL" {
			t.Fatalf("got %v, want FATAL %s", err, codeCannotConnectNow)
		}
	})
}

// TestChannelBindingWithTLSOnBothSides documents what SCRAM does when the
// client's connection to the proxy and the proxy's to the server are both
// TLS. The server offers SCRAM-SHA-256-PLUS on its TLS connection; the
// proxy strips it (a binding to the client's channel could never verify at
// the server). A TLS client with channel_binding=prefer (the default of
// libpq and pgx) then sends the gs2 flag "y" ("I support binding, you do
// not"), which the server, which does support binding on that connection,
// must reject as a possible downgrade attack (RFC 5802 §6). The proxy cannot
// rewrite the flag: it is repeated in the client-final-message and covered
// by the client proof. So those logins fail; the proxy sees the doomed
// SASLInitialResponse and answers FATAL 28000 itself, naming the way out
// (channel_binding=disable, or plaintext to the backend).
func TestChannelBindingWithTLSOnBothSides(t *testing.T) {
	p := tlsProxy(t, proxy.TLSAllow, proxy.BackendTLSRequire, "")
	const negotiationError = "pharos: SCRAM channel binding cannot pass through a proxy that terminates TLS"
	for _, tc := range []struct {
		name    string
		extra   string
		wantErr bool
	}{
		{"TLS client, channel_binding=prefer", "sslmode=require channel_binding=prefer", true},
		{"TLS client, channel_binding=disable", "sslmode=require channel_binding=disable", false},
		{"plaintext client", "sslmode=disable", false},
	} {
		t.Run(tc.name+" with psql", func(t *testing.T) {
			r := runProgram(t, 15*time.Second, pglocal.PasswordSCRAM, "psql", "-X", "-w", "-A", "-t",
				"-d", libpqConnInfo(p, router.RW, pglocal.UserSCRAM, tc.extra), "-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
			if tc.wantErr {
				if r.exitCode != 2 || !strings.Contains(r.stderr, "FATAL:  "+negotiationError) {
					t.Fatalf("%s\nwant exit 2 and FATAL:  %s", r, negotiationError)
				}
				t.Logf("psql: %s", r.stderr)
				return
			}
			if r.exitCode != 0 || strings.TrimSpace(r.stdout) != "t" {
				t.Fatalf("%s\nwant a session with an encrypted backend side", r)
			}
		})
		t.Run(tc.name+" with pgx", func(t *testing.T) {
			dsn := p.DSN(router.RW, pglocal.UserSCRAM, tc.extra)
			if tc.wantErr {
				err := connectErr(t, dsn)
				var pe *pgconn.PgError
				if !errors.As(err, &pe) || pe.Code != "28000" || pe.Severity != "FATAL" || !strings.HasPrefix(pe.Message, negotiationError) {
					t.Fatalf("got %v, want FATAL 28000 %s", err, negotiationError)
				}
				return
			}
			if conn := p.connect(t, router.RW, pglocal.UserSCRAM, tc.extra); !backendSSL(t, conn) {
				t.Error("backend side not encrypted")
			}
		})
	}
	t.Run("md5 over TLS on both sides", func(t *testing.T) {
		if conn := p.connect(t, router.RW, pglocal.UserMD5, "sslmode=require"); !isTLS(conn) || !backendSSL(t, conn) {
			t.Error("want TLS on both sides")
		}
	})
}

// TestDirectTLS: a PostgreSQL 17-style client that starts TLS at once
// (sslnegotiation=direct, ALPN "postgresql") is served like one that sent
// an SSLRequest; with client TLS disabled the proxy just closes, since such
// a client cannot read a plaintext error.
func TestDirectTLS(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra string
	}{
		{"direct negotiation", "sslmode=require sslnegotiation=direct"},
		{"classic negotiation still works", "sslmode=require sslnegotiation=postgres"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tlsProxy(t, proxy.TLSRequire, proxy.BackendTLSDisable, "")
			for _, ep := range []router.Endpoint{router.RW, router.RO} {
				conn := p.connect(t, ep, pglocal.UserSCRAM, tc.extra)
				if !isTLS(conn) {
					t.Errorf("%s: session is not encrypted", ep)
				}
				var one int
				if err := conn.QueryRow(context.Background(), "SELECT 1").Scan(&one); err != nil || one != 1 {
					t.Errorf("%s: SELECT 1 = %d, %v", ep, one, err)
				}
			}
		})
	}
	t.Run("direct TLS to a proxy without TLS is closed", func(t *testing.T) {
		p := startProxy(t, proxyOptions{})
		if err := connectErr(t, p.DSN(router.RW, pglocal.UserSCRAM, "sslmode=require sslnegotiation=direct")); err == nil {
			t.Fatal("a direct TLS client got a session from a proxy with TLS disabled")
		}
	})
}
