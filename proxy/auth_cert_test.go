package proxy_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pharos-ha/pharos/internal/pgauth"
	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/proxy"
	"github.com/pharos-ha/pharos/router"
)

// testCA is a certificate authority for client certificates.
type testCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	File    string // its certificate, PEM
	dir     string
	counter int64
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{cert: cert, key: key, dir: t.TempDir(), counter: 1}
	ca.File = filepath.Join(ca.dir, "ca.crt")
	if err := os.WriteFile(ca.File, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return ca
}

// issue writes a client certificate with common name cn signed by the CA
// and returns its certificate and key paths.
func (ca *testCA) issue(t *testing.T, cn string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca.counter++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(ca.counter),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(ca.dir, fmt.Sprintf("%s-%d", strings.ReplaceAll(cn, "/", "_"), ca.counter))
	certFile, keyFile = base+".crt", base+".key"
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// certAuthFile is the auth_file of auth_type cert: app_scram's password
// (the servers ask it SCRAM), app_md5's md5 hash (they ask it md5);
// app_trust and pharos_health are not listed.
func certAuthFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "userlist.txt")
	data := fmt.Sprintf("%q %q\n%q %q\n", pglocal.UserSCRAM, pglocal.PasswordSCRAM,
		pglocal.UserMD5, "md5"+pgauth.MD5Hash(pglocal.UserMD5, pglocal.PasswordMD5))
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func certProxy(t *testing.T, mode proxy.TLSMode, ca *testCA) (*testProxy, string) {
	t.Helper()
	certFile, keyFile := clientTLSFiles(t)
	authFile := certAuthFile(t)
	return startProxy(t, proxyOptions{
		Config: proxy.Config{
			TLSMode: mode, CertFile: certFile, KeyFile: keyFile,
			ClientTLSCAFile: ca.File,
			AuthType:        proxy.AuthCert, AuthFile: authFile,
		},
		Ready: func(rw string, ro []string) bool { return rw != "" && len(ro) > 0 },
	}), authFile
}

// TestProxyAuthCert: auth_type cert lets in a client whose certificate
// verifies against client_tls_ca_file and names the user, and logs in to
// the servers with what the auth_file gives for the user.
func TestProxyAuthCert(t *testing.T) {
	ca := newTestCA(t, "pharos test client CA")
	p, authFile := certProxy(t, proxy.TLSRequire, ca)
	certOpts := func(cn string) string {
		c, k := ca.issue(t, cn)
		return fmt.Sprintf("sslmode=require sslcert=%s sslkey=%s password=", c, k)
	}
	t.Run("pgx, password from the auth_file answers the servers' SCRAM, both endpoints", func(t *testing.T) {
		opts := certOpts(pglocal.UserSCRAM)
		whoami(t, p.connect(t, router.RW, pglocal.UserSCRAM, opts), pglocal.UserSCRAM, false)
		whoami(t, p.connect(t, router.RO, pglocal.UserSCRAM, opts), pglocal.UserSCRAM, true)
	})
	t.Run("md5 hash from the auth_file answers the servers' md5", func(t *testing.T) {
		whoami(t, p.connect(t, router.RW, pglocal.UserMD5, certOpts(pglocal.UserMD5)), pglocal.UserMD5, false)
	})
	t.Run("a user the servers trust needs no auth_file entry", func(t *testing.T) {
		whoami(t, p.connect(t, router.RW, pglocal.UserTrust, certOpts(pglocal.UserTrust)), pglocal.UserTrust, false)
	})
	t.Run("psql with sslcert and sslkey", func(t *testing.T) {
		c, k := ca.issue(t, pglocal.UserSCRAM)
		args := []string{"-X", "-A", "-t", "-w", "-d", libpqConnInfo(p, router.RW, pglocal.UserSCRAM, "sslmode=require sslcert="+c+" sslkey="+k), "-c", "SELECT current_user"}
		r := runProgram(t, 15*time.Second, "", "psql", args...)
		if r.exitCode != 0 || strings.TrimSpace(r.stdout) != pglocal.UserSCRAM {
			t.Fatalf("psql: %s", r)
		}
	})
	t.Run("certificate of another user", func(t *testing.T) {
		err := tryConnect(t, p.DSN(router.RW, pglocal.UserMD5, certOpts(pglocal.UserSCRAM)))
		wantPgError(t, err, "28000", fmt.Sprintf("certificate authentication failed for user %q", pglocal.UserMD5))
	})
	t.Run("no certificate", func(t *testing.T) {
		err := tryConnect(t, p.DSN(router.RW, pglocal.UserSCRAM, "sslmode=require"))
		wantPgError(t, err, "28000", "connection requires a valid client certificate")
	})
	t.Run("certificate of another CA", func(t *testing.T) {
		other := newTestCA(t, "someone else's CA")
		c, k := other.issue(t, pglocal.UserSCRAM)
		// pgx (Go's TLS client) sends no certificate the server's CA list
		// does not cover: no certificate, then.
		err := tryConnect(t, p.DSN(router.RW, pglocal.UserSCRAM, "sslmode=require sslcert="+c+" sslkey="+k))
		wantPgError(t, err, "28000", "connection requires a valid client certificate")
		// libpq sends it all the same, and the handshake fails on it.
		args := []string{"-X", "-A", "-t", "-w", "-d", libpqConnInfo(p, router.RW, pglocal.UserSCRAM, "sslmode=require sslcert="+c+" sslkey="+k), "-c", "SELECT current_user"}
		r := runProgram(t, 15*time.Second, "", "psql", args...)
		if r.exitCode != 2 || !strings.Contains(r.stderr, "SSL") || strings.Contains(r.stdout, pglocal.UserSCRAM) {
			t.Fatalf("psql with another CA's certificate: %s\nwant exit 2 and an SSL error", r)
		}
		t.Logf("psql: %s", strings.TrimSpace(r.stderr))
	})
	t.Run("a user the servers ask a password of, and the proxy has none", func(t *testing.T) {
		err := tryConnect(t, p.DSN(router.RW, pglocal.UserHealth, certOpts(pglocal.UserHealth)))
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "28000" || !strings.Contains(pe.Message, "with auth_type cert the proxy has none for this user") {
			t.Fatalf("got %v, want FATAL 28000 saying the proxy has no credentials for the user", err)
		}
	})
	t.Run("RELOAD reads the auth_file again", func(t *testing.T) {
		f, err := os.OpenFile(authFile, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = fmt.Fprintf(f, "%q %q\n", pglocal.UserHealth, pglocal.PasswordHealth)
		_ = f.Close()
		if err := p.Reload(); err != nil {
			t.Fatal(err)
		}
		whoami(t, p.connect(t, router.RW, pglocal.UserHealth, certOpts(pglocal.UserHealth)), pglocal.UserHealth, false)
		whoami(t, p.connect(t, router.RW, pglocal.UserSCRAM, certOpts(pglocal.UserSCRAM)), pglocal.UserSCRAM, false)
	})
}

// TestProxyAuthCertPlaintext: with tls_mode allow, a plaintext client of
// auth_type cert has no certificate to show.
func TestProxyAuthCertPlaintext(t *testing.T) {
	p, _ := certProxy(t, proxy.TLSAllow, newTestCA(t, "pharos test client CA"))
	err := tryConnect(t, p.DSN(router.RW, pglocal.UserTrust, "sslmode=disable"))
	wantPgError(t, err, "28000", "connection requires a valid client certificate")
}

// TestProxyAuthCertBackendCertificate: a certificate user whose server
// uses PostgreSQL's own cert method (hostssl ... cert): the proxy logs in
// with its backend_tls_cert_file certificate, and without one the
// server's refusal reaches the client.
func TestProxyAuthCertBackendCertificate(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	private := privateCluster(ctx, t, pglocal.Options{SSL: true, Fast: true})
	const certUser = "app_cert" // no password: only a certificate lets it in
	ca := newTestCA(t, "pharos test CA")
	pg := private.Primary()
	// The server trusts the CA and wants a certificate of certUser.
	caData, err := os.ReadFile(ca.File)
	if err != nil {
		t.Fatal(err)
	}
	caPath := filepath.Join(pg.DataDir, "client-ca.crt")
	if err := os.WriteFile(caPath, caData, 0o600); err != nil {
		t.Fatal(err)
	}
	owner := private.Owner()
	if err := os.Chown(caPath, int(owner.UID), int(owner.GID)); err != nil {
		t.Fatal(err)
	}
	hbaPath := filepath.Join(pg.DataDir, "pg_hba.conf")
	hba, err := os.ReadFile(hbaPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hbaPath, append([]byte("hostssl all "+certUser+" 127.0.0.1/32 cert\n"), hba...), 0o600); err != nil {
		t.Fatal(err)
	}
	super := superConnect(t, pg, "postgres")
	for _, q := range []string{"CREATE ROLE " + certUser + " LOGIN", "ALTER SYSTEM SET ssl_ca_file = '" + caPath + "'", "SELECT pg_reload_conf()"} {
		if _, err := super.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}

	start := func(backendCert bool) *testProxy {
		certFile, keyFile := clientTLSFiles(t)
		cfg := proxy.Config{
			TLSMode: proxy.TLSRequire, CertFile: certFile, KeyFile: keyFile,
			ClientTLSCAFile: ca.File, AuthType: proxy.AuthCert,
			BackendTLS: proxy.BackendTLSRequire,
		}
		if backendCert {
			cfg.BackendCertFile, cfg.BackendKeyFile = ca.issue(t, certUser)
		}
		return startProxy(t, proxyOptions{Cluster: private, Config: cfg})
	}
	c, k := ca.issue(t, certUser)
	opts := "dbname=postgres sslmode=require sslcert=" + c + " sslkey=" + k
	whoami(t, start(true).connect(t, router.RW, certUser, opts), certUser, false)
	// Without the proxy's certificate the server refuses, and says so.
	err = tryConnect(t, start(false).DSN(router.RW, certUser, opts))
	wantPgError(t, err, "28000", "connection requires a valid client certificate")
}
