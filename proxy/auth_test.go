package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pharos-ha/pharos/internal/pgauth"
	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/proxy"
	"github.com/pharos-ha/pharos/router"
)

// Users of the auth_file that the cluster does not have as they are
// written there.
const (
	// authTrustPassword is a password the auth_file gives app_trust, whom
	// the servers trust: only the proxy can refuse a wrong one.
	authTrustPassword = "trust-but-verify"
	// authStaleUser has a verifier in the auth_file that is not the
	// server's (a password changed since the file was written).
	authStaleUser = "app_stale"
)

// writeAuthFile builds an auth_file from the primary's pg_authid (the
// real verifiers of app_scram, app_md5 and the health user) plus
// app_trust with a SCRAM verifier of authTrustPassword, and returns its
// path.
func writeAuthFile(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	super := superConnect(t, cluster.Primary(), "postgres")
	// The query docs/proxy.md gives for writing an auth_file.
	var lines []string
	rows, err := super.Query(ctx, `SELECT format('"%s" "%s"', replace(rolname, '"', '""'), rolpassword)
    FROM pg_authid WHERE rolcanlogin AND rolpassword IS NOT NULL`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var l string
		if err := rows.Scan(&l); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, l)
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	users, err := pgauth.ParseUserlist(strings.Join(lines, "\n"))
	if err != nil {
		t.Fatalf("the documented query's output does not parse: %v", err)
	}
	var b strings.Builder
	for _, u := range []string{pglocal.UserSCRAM, pglocal.UserMD5, pglocal.UserHealth} {
		v, ok := users[u]
		if !ok {
			t.Fatalf("the documented query did not list %s", u)
		}
		b.WriteString(pgauth.FormatUserlistLine(u, v))
	}
	trust, err := pgauth.NewSCRAMVerifier(authTrustPassword, []byte("trust-salt"), 4096)
	if err != nil {
		t.Fatal(err)
	}
	b.WriteString(pgauth.FormatUserlistLine(pglocal.UserTrust, trust))
	// app_scram's password under another salt: the proxy accepts it, the
	// servers' verifier is not this one.
	stale, err := pgauth.NewSCRAMVerifier(pglocal.PasswordSCRAM, []byte("stale-salt"), 4096)
	if err != nil {
		t.Fatal(err)
	}
	b.WriteString(pgauth.FormatUserlistLine(authStaleUser, stale))
	path := filepath.Join(t.TempDir(), "userlist.txt")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func startAuthProxy(t *testing.T, at proxy.AuthType) *testProxy {
	t.Helper()
	return startProxy(t, proxyOptions{
		Config: proxy.Config{AuthType: at, AuthFile: writeAuthFile(t)},
		Ready:  func(rw string, ro []string) bool { return rw != "" && len(ro) > 0 },
	})
}

// wantPgError asserts that err is the FATAL with code and message.
func wantPgError(t *testing.T, err error, code, message string) {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != code || pe.Severity != "FATAL" || pe.Message != message {
		t.Fatalf("got %v, want FATAL %s %q", err, code, message)
	}
}

func tryConnect(t *testing.T, dsn string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err == nil {
		_ = conn.Close(ctx)
	}
	return err
}

// whoami checks that a session through the proxy runs queries as user on
// the expected kind of server.
func whoami(t *testing.T, conn *pgx.Conn, user string, replica bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got string
	var inRecovery bool
	if err := conn.QueryRow(ctx, "SELECT current_user, pg_is_in_recovery()").Scan(&got, &inRecovery); err != nil {
		t.Fatalf("query: %v", err)
	}
	if got != user || inRecovery != replica {
		t.Fatalf("current_user %s in recovery %v, want %s %v", got, inRecovery, user, replica)
	}
}

func TestProxyAuthSCRAM(t *testing.T) {
	p := startAuthProxy(t, proxy.AuthSCRAM)
	t.Run("right password, both endpoints", func(t *testing.T) {
		// The proxy logs in to the primary and to the replica with the
		// ClientKey of one login each: the verifier replicated.
		whoami(t, p.connect(t, router.RW, pglocal.UserSCRAM, ""), pglocal.UserSCRAM, false)
		whoami(t, p.connect(t, router.RO, pglocal.UserSCRAM, ""), pglocal.UserSCRAM, true)
	})
	t.Run("the health user, same verifier path", func(t *testing.T) {
		whoami(t, p.connect(t, router.RW, pglocal.UserHealth, ""), pglocal.UserHealth, false)
	})
	t.Run("wrong password", func(t *testing.T) {
		err := tryConnect(t, p.DSN(router.RW, pglocal.UserSCRAM, "password=wrong-secret"))
		wantPgError(t, err, "28P01", fmt.Sprintf("password authentication failed for user %q", pglocal.UserSCRAM))
	})
	t.Run("wrong password for a user the server trusts", func(t *testing.T) {
		// The server would let anyone in as app_trust: only the proxy's
		// check of the proof stands between a wrong password and a session.
		err := tryConnect(t, p.DSN(router.RW, pglocal.UserTrust, "password=wrong-secret"))
		wantPgError(t, err, "28P01", fmt.Sprintf("password authentication failed for user %q", pglocal.UserTrust))
		whoami(t, p.connect(t, router.RW, pglocal.UserTrust, "password="+authTrustPassword), pglocal.UserTrust, false)
	})
	t.Run("unknown user fails like a wrong password", func(t *testing.T) {
		err := tryConnect(t, p.DSN(router.RW, "nobody", "password=whatever"))
		wantPgError(t, err, "28P01", `password authentication failed for user "nobody"`)
	})
	t.Run("md5 user", func(t *testing.T) {
		// auth_type scram-sha-256 and an md5 verifier: no SCRAM secret, so
		// a mock exchange and 28P01, as PostgreSQL does.
		err := tryConnect(t, p.DSN(router.RW, pglocal.UserMD5, ""))
		wantPgError(t, err, "28P01", fmt.Sprintf("password authentication failed for user %q", pglocal.UserMD5))
	})
	t.Run("psql with PGPASSWORD", func(t *testing.T) {
		r := psql(t, p, router.RW, pglocal.UserSCRAM, "", "SELECT current_user")
		if r.exitCode != 0 || strings.TrimSpace(r.stdout) != pglocal.UserSCRAM {
			t.Fatalf("psql: %s", r)
		}
		args := []string{"-X", "-w", "-d", libpqConnInfo(p, router.RO, pglocal.UserSCRAM, ""), "-c", "SELECT 1"}
		r = runProgram(t, 15*time.Second, "wrong-secret", "psql", args...)
		want := fmt.Sprintf("FATAL:  password authentication failed for user %q", pglocal.UserSCRAM)
		if r.exitCode != 2 || !strings.Contains(r.stderr, want) {
			t.Fatalf("%s\nwant exit 2 and %s", r, want)
		}
	})
}

// TestProxyAuthStaleVerifier: a SCRAM login against an auth_file verifier
// that is not the server's is refused by the proxy with a reason, not
// taken to the server as a wrong proof.
func TestProxyAuthStaleVerifier(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	super := superConnect(t, cluster.Primary(), "postgres")
	if _, err := super.Exec(ctx, "CREATE ROLE "+authStaleUser+" LOGIN PASSWORD 'server-side-password'"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = superConnect(t, cluster.Primary(), "postgres").Exec(ctx, "DROP ROLE "+authStaleUser)
	})
	p := startAuthProxy(t, proxy.AuthSCRAM)
	err := tryConnect(t, p.DSN(router.RW, authStaleUser, "password="+pglocal.PasswordSCRAM))
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "28000" || !strings.Contains(pe.Message, "differs from the one the proxy authenticated the client against") {
		t.Fatalf("got %v, want FATAL 28000 naming the differing verifier", err)
	}
}

// TestProxyAuthMockExchange: an unknown user gets the whole SCRAM
// exchange, with a salt that stays the same between attempts (as a real
// user's does), and fails only at the proof.
func TestProxyAuthMockExchange(t *testing.T) {
	p := startAuthProxy(t, proxy.AuthSCRAM)
	first := func(user string) (string, string, error) { return mockAttempt(t, p, user) }
	s1, i1, err := first("nobody")
	if want := `28P01 password authentication failed for user "nobody"`; err.Error() != want {
		t.Fatalf("unknown user: %v, want %s", err, want)
	}
	s2, i2, _ := first("nobody")
	if s1 != s2 || i1 != i2 || i1 != "i=4096" {
		t.Errorf("mock salt/iterations changed between attempts: %s %s, %s %s", s1, i1, s2, i2)
	}
	s3, _, err := first(pglocal.UserSCRAM)
	if want := fmt.Sprintf("28P01 password authentication failed for user %q", pglocal.UserSCRAM); err.Error() != want {
		t.Fatalf("known user, zero proof: %v, want %s", err, want)
	}
	if s3 == s1 {
		t.Errorf("unknown user got the real user's salt")
	}
}

func TestProxyAuthMD5(t *testing.T) {
	p := startAuthProxy(t, proxy.AuthMD5)
	t.Run("md5 user, right password", func(t *testing.T) {
		// The server asks md5 too; the proxy answers with the stored hash.
		whoami(t, p.connect(t, router.RW, pglocal.UserMD5, ""), pglocal.UserMD5, false)
		whoami(t, p.connect(t, router.RO, pglocal.UserMD5, ""), pglocal.UserMD5, true)
	})
	t.Run("scram user gets SCRAM, as PostgreSQL's md5 method does", func(t *testing.T) {
		whoami(t, p.connect(t, router.RW, pglocal.UserSCRAM, ""), pglocal.UserSCRAM, false)
	})
	t.Run("wrong password", func(t *testing.T) {
		err := tryConnect(t, p.DSN(router.RW, pglocal.UserMD5, "password=wrong-secret"))
		wantPgError(t, err, "28P01", fmt.Sprintf("password authentication failed for user %q", pglocal.UserMD5))
	})
	t.Run("unknown user", func(t *testing.T) {
		err := tryConnect(t, p.DSN(router.RW, "nobody", "password=whatever"))
		wantPgError(t, err, "28P01", `password authentication failed for user "nobody"`)
	})
	t.Run("psql with PGPASSWORD", func(t *testing.T) {
		r := psql(t, p, router.RW, pglocal.UserMD5, "", "SELECT current_user")
		if r.exitCode != 0 || strings.TrimSpace(r.stdout) != pglocal.UserMD5 {
			t.Fatalf("psql: %s", r)
		}
	})
}

func TestProxyAuthTrust(t *testing.T) {
	p := startAuthProxy(t, proxy.AuthTrust)
	t.Run("user the server trusts", func(t *testing.T) {
		whoami(t, p.connect(t, router.RW, pglocal.UserTrust, ""), pglocal.UserTrust, false)
	})
	t.Run("unknown user", func(t *testing.T) {
		err := tryConnect(t, p.DSN(router.RW, "nobody", ""))
		wantPgError(t, err, "28000", `role "nobody" does not exist`)
	})
	t.Run("user the server asks a password of", func(t *testing.T) {
		err := tryConnect(t, p.DSN(router.RW, pglocal.UserSCRAM, ""))
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "28000" || !strings.Contains(pe.Message, "with auth_type trust the proxy has none") {
			t.Fatalf("got %v, want FATAL 28000 explaining trust", err)
		}
	})
}

// mockAttempt runs a SCRAM login as user with a zero proof and returns the
// salt and iteration count the proxy sent and its answer to the proof.
func mockAttempt(t *testing.T, p *testProxy, user string) (salt string, iter string, final error) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", p.Addr(router.RW).String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(conn, conn)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": user, "database": pglocal.AppDB}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	msg, err := fe.Receive()
	if sasl, ok := msg.(*pgproto3.AuthenticationSASL); err != nil || !ok || strings.Join(sasl.AuthMechanisms, ",") != pgauth.Mechanism {
		t.Fatalf("%s: first answer %#v, %v; want AuthenticationSASL offering SCRAM-SHA-256 only", user, msg, err)
	}
	fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: pgauth.Mechanism, Data: []byte("n,,n=,r=clientnonce")})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	msg, err = fe.Receive()
	cont, ok := msg.(*pgproto3.AuthenticationSASLContinue)
	if err != nil || !ok {
		t.Fatalf("%s: second answer %#v, %v; want AuthenticationSASLContinue", user, msg, err)
	}
	attrs := strings.Split(string(cont.Data), ",")
	if len(attrs) != 3 || !strings.HasPrefix(attrs[0], "r=clientnonce") {
		t.Fatalf("%s: server-first %q", user, cont.Data)
	}
	fe.Send(&pgproto3.SASLResponse{Data: []byte("c=biws," + attrs[0] + ",p=" + strings.Repeat("A", 43) + "=")})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	msg, err = fe.Receive()
	if er, ok := msg.(*pgproto3.ErrorResponse); ok {
		return attrs[1], attrs[2], fmt.Errorf("%s %s", er.Code, er.Message)
	}
	t.Fatalf("%s: answer to a zero proof %#v, %v", user, msg, err)
	return
}
