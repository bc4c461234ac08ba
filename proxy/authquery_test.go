package proxy_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pharos-ha/pharos/internal/pgauth"
	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/proxy"
	"github.com/pharos-ha/pharos/router"
)

// The auth_user the auth_query tests create, as docs/proxy.md does.
const (
	authQueryUser     = "pharos_auth"
	authQueryPassword = "auth-query-Pw"
)

var authQuerySetup struct {
	once sync.Once
	err  error
}

// docsAuthSQL returns the SQL docs/proxy.md gives for a Patroni cluster,
// from the CREATE ROLE to the last GRANT, without the \password line.
func docsAuthSQL(t *testing.T) []string {
	t.Helper()
	doc, err := os.ReadFile("../docs/proxy.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```sql\nCREATE ROLE pharos_auth ")
	block, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("docs/proxy.md lacks the auth_query SQL block")
	}
	var stmts []string
	for _, l := range strings.Split("CREATE ROLE pharos_auth "+block, "\n") {
		if strings.HasPrefix(l, `\password`) || strings.HasPrefix(l, "--") {
			continue
		}
		stmts = append(stmts, l)
	}
	return []string{strings.Join(stmts, "\n")}
}

// setupAuthQuery creates the auth_user and the function in the shared
// cluster's postgres database with the docs' SQL, once per run.
func setupAuthQuery(t *testing.T) {
	t.Helper()
	sql := docsAuthSQL(t)
	authQuerySetup.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		super := superConnect(t, cluster.Primary(), "postgres")
		for _, s := range append(sql, "ALTER ROLE "+authQueryUser+" PASSWORD '"+authQueryPassword+"'") {
			if _, err := super.Exec(ctx, s); err != nil {
				authQuerySetup.err = fmt.Errorf("%.60s: %w", s, err)
				return
			}
		}
	})
	if authQuerySetup.err != nil {
		t.Fatal(authQuerySetup.err)
	}
}

func startQueryProxy(t *testing.T, cfg proxy.Config) *testProxy {
	t.Helper()
	setupAuthQuery(t)
	if cfg.AuthUser == "" {
		cfg.AuthUser = authQueryUser
	}
	if cfg.AuthPassword == "" {
		cfg.AuthPassword = authQueryPassword
	}
	if cfg.AuthCacheTTL == 0 {
		// Far beyond any test: whatever changes within one did not wait for it.
		cfg.AuthCacheTTL = time.Hour
	}
	return startProxy(t, proxyOptions{
		Config: cfg,
		Ready:  func(rw string, ro []string) bool { return rw != "" && len(ro) > 0 },
	})
}

func TestProxyAuthQuery(t *testing.T) {
	p := startQueryProxy(t, proxy.Config{AuthType: proxy.AuthSCRAM})
	t.Run("right password, both endpoints", func(t *testing.T) {
		whoami(t, p.connect(t, router.RW, pglocal.UserSCRAM, ""), pglocal.UserSCRAM, false)
		whoami(t, p.connect(t, router.RO, pglocal.UserSCRAM, ""), pglocal.UserSCRAM, true)
		// Again, from the cache.
		whoami(t, p.connect(t, router.RW, pglocal.UserSCRAM, ""), pglocal.UserSCRAM, false)
	})
	t.Run("wrong password", func(t *testing.T) {
		err := tryConnect(t, p.DSN(router.RW, pglocal.UserSCRAM, "password=wrong-secret"))
		wantPgError(t, err, "28P01", fmt.Sprintf("password authentication failed for user %q", pglocal.UserSCRAM))
	})
	t.Run("unknown user gets the mock exchange", func(t *testing.T) {
		err := tryConnect(t, p.DSN(router.RW, "nobody", "password=whatever"))
		wantPgError(t, err, "28P01", `password authentication failed for user "nobody"`)
		s1, i1, err := mockAttempt(t, p, "nobody")
		if want := `28P01 password authentication failed for user "nobody"`; err == nil || err.Error() != want {
			t.Fatalf("unknown user: %v, want %s", err, want)
		}
		s2, i2, _ := mockAttempt(t, p, "nobody")
		if s1 != s2 || i1 != i2 || i1 != "i=4096" {
			t.Errorf("mock salt/iterations changed between attempts: %s %s, %s %s", s1, i1, s2, i2)
		}
		// A real user's exchange carries the cluster's salt.
		real, _, _ := mockAttempt(t, p, pglocal.UserSCRAM)
		v := serverVerifier(t, pglocal.UserSCRAM)
		if want := "s=" + b64(v.Salt); real != want || s1 == want {
			t.Errorf("salts: %s for the user (want %s), %s for nobody", real, want, s1)
		}
	})
	t.Run("md5 user under scram-sha-256", func(t *testing.T) {
		err := tryConnect(t, p.DSN(router.RW, pglocal.UserMD5, ""))
		wantPgError(t, err, "28P01", fmt.Sprintf("password authentication failed for user %q", pglocal.UserMD5))
	})
	t.Run("psql", func(t *testing.T) {
		r := psql(t, p, router.RW, pglocal.UserSCRAM, "", "SELECT current_user")
		if r.exitCode != 0 || strings.TrimSpace(r.stdout) != pglocal.UserSCRAM {
			t.Fatalf("psql: %s", r)
		}
	})
}

func TestProxyAuthQueryMD5(t *testing.T) {
	p := startQueryProxy(t, proxy.Config{AuthType: proxy.AuthMD5})
	whoami(t, p.connect(t, router.RW, pglocal.UserMD5, ""), pglocal.UserMD5, false)
	whoami(t, p.connect(t, router.RO, pglocal.UserMD5, ""), pglocal.UserMD5, true)
	err := tryConnect(t, p.DSN(router.RW, pglocal.UserMD5, "password=wrong-secret"))
	wantPgError(t, err, "28P01", fmt.Sprintf("password authentication failed for user %q", pglocal.UserMD5))
	err = tryConnect(t, p.DSN(router.RW, "nobody", "password=whatever"))
	wantPgError(t, err, "28P01", `password authentication failed for user "nobody"`)
}

// TestProxyAuthQueryPasswordChange: a password changed with ALTER ROLE is
// taken without waiting for the cache's TTL (an hour here). SCRAM: the
// first attempt with the new password was answered with the old salt and
// fails; it refreshes the cache, and the next attempt succeeds. md5: the
// first attempt succeeds.
func TestProxyAuthQueryPasswordChange(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	super := superConnect(t, cluster.Primary(), "postgres")
	t.Run("scram-sha-256", func(t *testing.T) {
		const user = "app_change"
		if _, err := super.Exec(ctx, "CREATE ROLE "+user+" LOGIN PASSWORD 'first-Pw'"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_, _ = superConnect(t, cluster.Primary(), "postgres").Exec(context.Background(), "DROP ROLE "+user)
		})
		p := startQueryProxy(t, proxy.Config{AuthType: proxy.AuthSCRAM})
		whoami(t, p.connect(t, router.RW, user, "password=first-Pw"), user, false)
		if _, err := super.Exec(ctx, "ALTER ROLE "+user+" PASSWORD 'second-Pw'"); err != nil {
			t.Fatal(err)
		}
		err := tryConnect(t, p.DSN(router.RW, user, "password=second-Pw"))
		wantPgError(t, err, "28P01", fmt.Sprintf("password authentication failed for user %q", user))
		whoami(t, p.connect(t, router.RW, user, "password=second-Pw"), user, false)
		// The replica logs the proxy in once it has replayed the change.
		waitReplicaVerifier(t, user)
		whoami(t, p.connect(t, router.RO, user, "password=second-Pw"), user, true)
		err = tryConnect(t, p.DSN(router.RW, user, "password=first-Pw"))
		wantPgError(t, err, "28P01", fmt.Sprintf("password authentication failed for user %q", user))
	})
	t.Run("md5", func(t *testing.T) {
		// app_md5 is the user pg_hba.conf asks an md5 password of.
		user := pglocal.UserMD5
		setMD5 := func(pw string) {
			t.Helper()
			if _, err := super.Exec(ctx, "SET password_encryption = 'md5'; ALTER ROLE "+user+" PASSWORD '"+pw+"'; RESET password_encryption"); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(func() { setMD5(pglocal.PasswordMD5) })
		p := startQueryProxy(t, proxy.Config{AuthType: proxy.AuthMD5})
		whoami(t, p.connect(t, router.RW, user, ""), user, false)
		setMD5("changed-Pw")
		whoami(t, p.connect(t, router.RW, user, "password=changed-Pw"), user, false)
		err := tryConnect(t, p.DSN(router.RW, user, ""))
		wantPgError(t, err, "28P01", fmt.Sprintf("password authentication failed for user %q", user))
	})
}

// TestProxyAuthQueryUnreachable: when the lookup fails, the client is told
// so with FATAL 08006 within startup_timeout, not left waiting, and the
// proxy goes on serving.
func TestProxyAuthQueryUnreachable(t *testing.T) {
	want := fmt.Sprintf("pharos: could not look up user %q to authenticate it (auth_query failed; the proxy's log says why)", pglocal.UserSCRAM)
	t.Run("auth_user refused", func(t *testing.T) {
		p := startQueryProxy(t, proxy.Config{AuthType: proxy.AuthSCRAM, AuthPassword: "not-the-auth-password"})
		wantPgError(t, tryConnect(t, p.DSN(router.RW, pglocal.UserSCRAM, "")), "08006", want)
	})
	t.Run("auth_query outlasts startup_timeout", func(t *testing.T) {
		// The client waits up to 10 s (tryConnect); the proxy must answer
		// at its own startup_timeout of 2 s.
		p := startQueryProxy(t, proxy.Config{AuthType: proxy.AuthSCRAM, StartupTimeout: 2 * time.Second,
			AuthQuery: "SELECT $1::text, pg_sleep(20)::text"})
		wantPgError(t, tryConnect(t, p.DSN(router.RW, pglocal.UserSCRAM, "")), "08006", want)
	})
}

// serverVerifier reads user's verifier from the primary.
func serverVerifier(t *testing.T, user string) pgauth.Verifier {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var s string
	if err := superConnect(t, cluster.Primary(), "postgres").QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", user).Scan(&s); err != nil {
		t.Fatal(err)
	}
	v, err := pgauth.ParseVerifier(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// waitReplicaVerifier waits until every replica holds the primary's
// verifier for user.
func waitReplicaVerifier(t *testing.T, user string) {
	t.Helper()
	want := serverVerifier(t, user)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, in := range cluster.Replicas() {
		conn := superConnect(t, in, "postgres")
		for {
			var s string
			// No row yet: the replica has not replayed the CREATE ROLE.
			err := conn.QueryRow(ctx, "SELECT coalesce(max(rolpassword), '') FROM pg_authid WHERE rolname = $1", user).Scan(&s)
			if err != nil {
				t.Fatal(err)
			}
			if v, err := pgauth.ParseVerifier(s); err == nil && string(v.Salt) == string(want.Salt) {
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("replica %s never replayed the password change", in.Addr())
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
}
