package main

import (
	"bufio"
	"bytes"
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
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pharos-ha/pharos/internal/pgauth"
	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/wire"
)

// e2eWait bounds waits that only say "did not hang".
const e2eWait = 10 * time.Second

func TestBinaryServesAndDrainsOnSIGTERM(t *testing.T) {
	const drain = 2 * time.Second
	p := startPharos(t, "--drain-timeout", drain.String())
	ctx, cancel := context.WithTimeout(context.Background(), e2eWait)
	defer cancel()

	for _, tc := range []struct {
		name         string
		addr         string
		wantRecovery bool
	}{
		{"rw reaches the primary", p.rw, false},
		{"ro reaches the replica", p.ro, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := pgx.Connect(ctx, appDSN(tc.addr, ""))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			var inRecovery bool
			if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
				t.Fatal(err)
			}
			if inRecovery != tc.wantRecovery {
				t.Errorf("in recovery %v, want %v", inRecovery, tc.wantRecovery)
			}
		})
	}

	idle := rawLogin(t, p.rw, pglocal.UserTrust)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	t.Run("idle session gets 57P01", func(t *testing.T) {
		code, closed := idle.waitEnd(t, drain+e2eWait)
		if code != wire.CodeAdminShutdown || !closed {
			t.Errorf("got code %q, closed %v; want FATAL 57P01 and a close", code, closed)
		}
	})
	t.Run("exits 0 within the drain timeout", func(t *testing.T) {
		if code := p.wait(t, drain+e2eWait); code != 0 {
			t.Errorf("exit %d, want 0", code)
		}
	})
}

func TestBinaryReloadsTLSOnSIGHUP(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "proxy.crt"), filepath.Join(dir, "proxy.key")
	certA, keyA, derA := selfSigned(t, "pharos-test-A")
	certB, keyB, derB := selfSigned(t, "pharos-test-B")
	writeFile(t, certFile, certA)
	writeFile(t, keyFile, keyA)
	p := startPharos(t, "--tls-mode", "allow", "--tls-cert-file", certFile, "--tls-key-file", keyFile)
	ctx, cancel := context.WithTimeout(context.Background(), e2eWait)
	defer cancel()

	before, der := tlsConnect(t, ctx, p.rw)
	defer before.Close(context.Background())
	if !bytes.Equal(der, derA) {
		t.Fatalf("first certificate is not A")
	}

	writeFile(t, certFile, certB)
	writeFile(t, keyFile, keyB)
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	t.Run("new sessions see the new certificate", func(t *testing.T) {
		deadline := time.Now().Add(e2eWait)
		for {
			conn, der := tlsConnect(t, ctx, p.rw)
			conn.Close(ctx)
			if bytes.Equal(der, derB) {
				return
			}
			if !bytes.Equal(der, derA) {
				t.Fatal("certificate is neither A nor B")
			}
			if time.Now().After(deadline) {
				t.Fatalf("still certificate A %v after SIGHUP", e2eWait)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	t.Run("sessions from before keep working", func(t *testing.T) {
		if _, err := before.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("a broken file keeps the loaded certificate", func(t *testing.T) {
		writeFile(t, certFile, []byte("-----BEGIN CERTIFICATE-----\ntruncated"))
		if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		p.waitLog(t, "TLS reload failed")
		conn, der := tlsConnect(t, ctx, p.rw)
		conn.Close(ctx)
		if !bytes.Equal(der, derB) {
			t.Error("certificate changed after a failed reload")
		}
	})
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, e2eWait); code != 0 {
		t.Errorf("exit %d after SIGTERM, want 0", code)
	}
}

// pharosProc is a `pharos proxy` process in front of the test cluster.
type pharosProc struct {
	cmd        *exec.Cmd
	rw, ro     string
	metrics    string
	logPath    string
	exited     chan struct{} // closed once cmd.Wait returned
	exitStatus int
}

// startPharos runs the built binary on free loopback ports with a fast
// static source, and waits until the rw endpoint serves a query.
func startPharos(t *testing.T, extra ...string) *pharosProc {
	t.Helper()
	var backends []string
	for _, in := range pgCluster.Instances() {
		backends = append(backends, in.Addr())
	}
	p := launchPharos(t, append([]string{"--backends", strings.Join(backends, ",")}, extra...)...)
	p.waitServing(t)
	return p
}

// launchPharos runs `pharos proxy` with the given source arguments on free
// loopback ports, fast health checks and debug logs, and kills it at test
// end if it is still running. A port picked free can be taken by another
// test binary before pharos binds it: such a start is tried again on other
// ports, a few times.
func launchPharos(t *testing.T, extra ...string) *pharosProc {
	t.Helper()
	bin := pharosBinary(t)
	for attempt := 1; ; attempt++ {
		p := launchPharosOnce(t, bin, extra)
		if attempt == 3 || !p.lostPortRace() {
			return p
		}
		t.Logf("pharos lost a listening port to another process (attempt %d), trying other ports", attempt)
	}
}

// lostPortRace waits until the proxy listens or exits, and tells whether
// it exited because a listening port was taken.
func (p *pharosProc) lostPortRace() bool {
	deadline := time.Now().Add(e2eWait)
	for time.Now().Before(deadline) {
		log, _ := os.ReadFile(p.logPath)
		if bytes.Contains(log, []byte("proxy listening")) {
			return false
		}
		select {
		case <-p.exited:
			log, _ := os.ReadFile(p.logPath)
			return bytes.Contains(log, []byte("address already in use"))
		case <-time.After(20 * time.Millisecond):
		}
	}
	return false
}

func launchPharosOnce(t *testing.T, bin string, extra []string) *pharosProc {
	t.Helper()
	var addrs [3]string
	for i := range addrs {
		port, err := pglocal.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		addrs[i] = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	}
	args := append([]string{"proxy",
		"--rw-listen", addrs[0], "--ro-listen", addrs[1], "--metrics-listen", addrs[2],
		"--health-user", pglocal.UserHealth, "--health-sslmode", "disable",
		"--health-check-interval", "500ms", "--health-check-timeout", "400ms",
		"--log-level", "debug",
	}, extra...)
	p := &pharosProc{rw: addrs[0], ro: addrs[1], metrics: addrs[2], logPath: filepath.Join(t.TempDir(), "pharos.log"), exited: make(chan struct{})}
	logf, err := os.Create(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(os.Environ(), "PHAROS_HEALTH_PASSWORD="+pglocal.PasswordHealth)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		p.exitStatus = p.cmd.ProcessState.ExitCode()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			log, _ := os.ReadFile(p.logPath)
			t.Logf("pharos output:\n%s", log)
		}
	})
	return p
}

// waitServing waits until the rw endpoint serves a query.
func (p *pharosProc) waitServing(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(e2eWait)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, appDSN(p.rw, ""))
		if err == nil {
			_, err = conn.Exec(ctx, "SELECT 1")
			conn.Close(ctx)
		}
		cancel()
		if err == nil {
			return
		}
		select {
		case <-p.exited:
			t.Fatalf("pharos exited with %d before serving", p.exitStatus)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("rw endpoint not serving after %v: %v", e2eWait, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// wait returns the exit status once the process ended, failing the test
// if that takes longer than d.
func (p *pharosProc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
		return p.exitStatus
	case <-time.After(d):
		t.Fatalf("pharos still running %v later", d)
		return -1
	}
}

// waitLog waits until the process has logged a line containing s.
func (p *pharosProc) waitLog(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(e2eWait)
	for {
		log, err := os.ReadFile(p.logPath)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(log, []byte(s)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the log after %v", s, e2eWait)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func appDSN(addr, extra string) string {
	host, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=%s sslmode=disable connect_timeout=5 %s",
		host, port, pglocal.UserSCRAM, pglocal.PasswordSCRAM, pglocal.AppDB, extra)
}

// tlsConnect opens a session with sslmode=require and returns it with the
// leaf certificate the proxy presented.
func tlsConnect(t *testing.T, ctx context.Context, addr string) (*pgx.Conn, []byte) {
	t.Helper()
	cfg, err := pgx.ParseConfig(appDSN(addr, "sslmode=require"))
	if err != nil {
		t.Fatal(err)
	}
	var leaf []byte
	cfg.TLSConfig.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) > 0 {
			leaf = raw[0]
		}
		return nil
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("TLS connect: %v", err)
	}
	if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("query over TLS: %v", err)
	}
	return conn, leaf
}

func selfSigned(t *testing.T, cn string) (certPEM, keyPEM, der []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err = x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), der
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// rawSession is a protocol-level client, to see exactly what the proxy
// sends when it ends a session.
type rawSession struct {
	conn net.Conn
	br   *bufio.Reader
}

// rawLogin logs user (trust authentication) in on the app database.
func rawLogin(t *testing.T, addr, user string) *rawSession {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, e2eWait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	s := &rawSession{conn: conn, br: bufio.NewReader(conn)}
	pkt, err := wire.AppendStartupMessage(nil, 3<<16, []wire.Param{{Name: "user", Value: user}, {Name: "database", Value: pglocal.AppDB}})
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(e2eWait))
	if _, err := conn.Write(pkt); err != nil {
		t.Fatal(err)
	}
	for {
		typ, msg, err := wire.ReadMessage(s.br, nil, 1<<20)
		if err != nil {
			t.Fatalf("login: %v", err)
		}
		switch typ {
		case wire.MsgErrorResponse:
			_, code, m, _ := wire.ErrorFields(msg)
			t.Fatalf("login: %s %s", code, m)
		case wire.MsgReadyForQuery:
			_ = conn.SetDeadline(time.Time{})
			return s
		}
	}
}

// waitEnd reads until an ErrorResponse or the end of the stream and
// returns the error's SQLSTATE ("" for none) and whether the connection
// closed afterwards.
func (s *rawSession) waitEnd(t *testing.T, d time.Duration) (code string, closed bool) {
	t.Helper()
	_ = s.conn.SetReadDeadline(time.Now().Add(d))
	for {
		typ, msg, err := wire.ReadMessage(s.br, nil, 1<<20)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("nothing within %v (so far code %q)", d, code)
		}
		if err != nil {
			return code, true
		}
		if typ == wire.MsgErrorResponse && code == "" {
			_, code, _, _ = wire.ErrorFields(msg)
		}
	}
}

// TestBinaryReloadsAuthFileOnSIGHUP runs the binary with the proxy's own
// SCRAM and an auth_file that lists only app_scram (its real verifier, for
// the readiness check): app_trust (whom the servers trust, so any verifier
// of the file's does for the proxy) is refused until the file lists it and
// the proxy gets SIGHUP. It is also an admin user, whose console answers
// with the binary's version.
func TestBinaryReloadsAuthFileOnSIGHUP(t *testing.T) {
	const trustPassword = "trust-pw"
	ctx, cancel := context.WithTimeout(context.Background(), e2eWait)
	defer cancel()
	super, err := pgCluster.Primary().Connect(ctx, pglocal.SuperUser, "", "postgres")
	if err != nil {
		t.Fatal(err)
	}
	var verifier string
	err = super.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", pglocal.UserSCRAM).Scan(&verifier)
	super.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	scram, err := pgauth.ParseVerifier(verifier)
	if err != nil {
		t.Fatal(err)
	}
	v, err := pgauth.NewSCRAMVerifier(trustPassword, []byte("salt-of-the-test"), 4096)
	if err != nil {
		t.Fatal(err)
	}
	authFile := filepath.Join(t.TempDir(), "userlist.txt")
	writeFile(t, authFile, []byte(pgauth.FormatUserlistLine(pglocal.UserSCRAM, scram)))
	p := startPharos(t, "--auth-type", "scram-sha-256", "--auth-file", authFile, "--admin-users", pglocal.UserTrust)
	ctx, cancel = context.WithTimeout(context.Background(), 3*e2eWait)
	defer cancel()
	dsn := func(db string) string {
		host, port, _ := net.SplitHostPort(p.rw)
		return fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=%s sslmode=disable connect_timeout=5", host, port, pglocal.UserTrust, trustPassword, db)
	}
	login := func(db string) (*pgx.Conn, error) {
		cc, err := pgx.ParseConfig(dsn(db))
		if err != nil {
			t.Fatal(err)
		}
		cc.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
		return pgx.ConnectConfig(ctx, cc)
	}
	if _, err := login(pglocal.AppDB); err == nil || !strings.Contains(err.Error(), `password authentication failed for user "app_trust"`) {
		t.Fatalf("app_trust before the file lists it: %v", err)
	}
	writeFile(t, authFile, []byte(pgauth.FormatUserlistLine(pglocal.UserSCRAM, scram)+pgauth.FormatUserlistLine(pglocal.UserTrust, v)))
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	p.waitLog(t, "SIGHUP: reloading")
	deadline := time.Now().Add(e2eWait)
	for {
		conn, err := login(pglocal.AppDB)
		if err == nil {
			conn.Close(ctx)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("app_trust after SIGHUP: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	console, err := login("pharos")
	if err != nil {
		t.Fatalf("console: %v", err)
	}
	defer console.Close(ctx)
	var got string
	if err := console.QueryRow(ctx, "SHOW VERSION").Scan(&got); err != nil || got != "pharos "+version {
		t.Fatalf("SHOW VERSION: %q, %v; want %q", got, err, "pharos "+version)
	}
	// A file that does not parse: logged, and the users stay.
	writeFile(t, authFile, []byte(`"app_trust" "SCRAM-SHA`))
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	p.waitLog(t, "auth_file reload failed, keeping the previous users")
	if conn, err := login(pglocal.AppDB); err != nil {
		t.Fatalf("app_trust after a failed reload: %v", err)
	} else {
		conn.Close(ctx)
	}
}
