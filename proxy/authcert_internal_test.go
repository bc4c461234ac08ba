package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pharos-ha/pharos/internal/pgauth"
	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/router"
)

func TestLoadCertAuthFile(t *testing.T) {
	write := func(data string) string {
		p := filepath.Join(t.TempDir(), "userlist.txt")
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	scram, _ := pgauth.NewSCRAMVerifier("pw", []byte("salt"), 4096)
	users, err := loadCertAuthFile(write(`"alice" "a password"` + "\n" + `"bob" "md5` + pgauth.MD5Hash("bob", "pw") + `"` + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if a := users["alice"]; a == nil || a.password != "a password" || a.md5 != pgauth.MD5Hash("alice", "a password") {
		t.Errorf("alice: %+v", a)
	}
	if b := users["bob"]; b == nil || b.password != "" || b.md5 != pgauth.MD5Hash("bob", "pw") {
		t.Errorf("bob: %+v", b)
	}
	for name, tc := range map[string]struct{ data, want string }{
		"SCRAM verifier":     {`"alice" "` + scram.String() + `"`, `user "alice": a SCRAM-SHA-256 verifier cannot log in to the servers`},
		"non-ASCII password": {`"alice" "pässword"`, "SASLprep"},
		"empty password":     {`"alice" ""`, "empty password"},
		"listed twice":       {`"alice" "a"` + "\n" + `"alice" "b"`, "listed twice"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := loadCertAuthFile(write(tc.data)); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestPasswordCredDerivesOnce: a certificate user's password is hashed
// once per salt and iteration count, not per login.
func TestPasswordCredDerivesOnce(t *testing.T) {
	p := &passwordCred{password: "pw"}
	a, err := p.scramKeys([]byte("salt"), 4096)
	if err != nil {
		t.Fatal(err)
	}
	kept := p.keys
	b, _ := p.scramKeys([]byte("salt"), 4096)
	if p.keys != kept || a.ClientKey != b.ClientKey {
		t.Fatalf("derived again for the same salt")
	}
	c, _ := p.scramKeys([]byte("other"), 4096)
	if c.ClientKey == a.ClientKey {
		t.Fatalf("another salt gave the same keys")
	}
	want, _ := pgauth.NewSCRAMKeys("pw", []byte("other"), 4096)
	if c.ClientKey != want.ClientKey {
		t.Fatalf("wrong keys")
	}
}

// TestBackendClientCertificate: with backend_tls_cert_file the proxy
// presents its certificate to a server that asks for one.
func TestBackendClientCertificate(t *testing.T) {
	certPEM, keyPEM, err := pglocal.SelfSignedCert()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	_ = os.WriteFile(certFile, certPEM, 0o600)
	_ = os.WriteFile(keyFile, keyPEM, 0o600)
	serverCert, _ := tls.X509KeyPair(certPEM, keyPEM)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			got <- "accept: " + err.Error()
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		var req [8]byte
		if _, err := conn.Read(req[:]); err != nil {
			got <- "read: " + err.Error()
			return
		}
		_, _ = conn.Write([]byte{'S'})
		tc := tls.Server(conn, &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAnyClientCert})
		if err := tc.Handshake(); err != nil {
			got <- "handshake: " + err.Error()
			return
		}
		got <- "cn=" + tc.ConnectionState().PeerCertificates[0].Subject.CommonName
	}()

	m := metrics.NewProxy(prometheus.NewRegistry())
	s, err := New(Config{RWListen: "127.0.0.1:0", BackendTLS: BackendTLSRequire, BackendCertFile: certFile, BackendKeyFile: keyFile},
		router.New(router.Config{}, nil, m), nil, m)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := s.dialBackend(ctx, router.RW, ln.Addr().String())
	if err != nil {
		t.Fatalf("dial: %v (server: %s)", err, <-got)
	}
	defer conn.Close()
	leaf, _ := x509.ParseCertificate(serverCert.Certificate[0])
	if r := <-got; r != "cn="+leaf.Subject.CommonName {
		t.Fatalf("server saw %s, want the proxy's certificate", r)
	}
}
