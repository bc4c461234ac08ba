package haagent

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pharos-ha/pharos/haagent/core"
	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/internal/pgproc"
)

// TestNoPasswordToAServerThatAsksForIt: a host at a member's address that
// answers the startup with a request for the password itself (cleartext
// or md5) gets no PasswordMessage from any connection the agent makes —
// the superuser's (checks, checkpoint before pg_rewind, the clone source
// check) or the replication user's login check before pg_basebackup — and
// the error says why. Widening require_auth to the method lets the
// password through, which shows the fake server would have seen it.
func TestNoPasswordToAServerThatAsksForIt(t *testing.T) {
	for _, method := range []string{"password", "md5"} {
		t.Run(method, func(t *testing.T) {
			srv, err := pglocal.NewHostileServer(method)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			p := testPostgres(t)
			p.cfg.SuperPassword = "super-secret"
			up := cluster.Member{Name: "evil", Host: "127.0.0.1", Port: srv.Port()}
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			want := `authentication method requirement "scram-sha-256" failed: server requested ` + method + ` authentication`

			_, err = p.connect(ctx, &up)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("superuser connection: %v, want %q", err, want)
			}
			if err := p.checkSource(ctx, up); !errors.Is(err, core.ErrSourceUnavailable) || !strings.Contains(err.Error(), want) {
				t.Errorf("clone source check: %v, want %v naming the refusal", err, core.ErrSourceUnavailable)
			}
			// The checkpoint on the source comes first: pg_rewind, whose
			// libpq may predate require_auth, never runs.
			if _, err := p.rewind(ctx, up, func(string) bool { return true }); !errors.Is(err, core.ErrSourceUnavailable) || !strings.Contains(err.Error(), want) {
				t.Errorf("rewind: %v, want %v naming the refusal", err, core.ErrSourceUnavailable)
			}
			// Likewise pg_basebackup: the replication login check refuses.
			if err := p.checkReplicationLogin(ctx, up); err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("replication login check: %v, want %q", err, want)
			}
			if got := srv.Startups(); len(got) < 4 {
				t.Fatalf("the hostile server saw %d startups, want one per connection at least", len(got))
			} else if users := []string{got[0]["user"], got[len(got)-1]["user"]}; users[0] != "postgres" || users[1] != "repl" {
				t.Errorf("users %q, want the superuser's and the replication user's logins", users)
			}
			if pw := srv.Passwords(); len(pw) != 0 {
				t.Fatalf("the hostile server received %d PasswordMessage(s): %q", len(pw), pw)
			}

			p.cfg.RequireAuth = "scram-sha-256," + method
			_, err = p.connect(ctx, &up)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
				t.Errorf("with %s allowed: %v, want the fake server's 28P01", method, err)
			}
			pw := srv.Passwords()
			if len(pw) == 0 {
				t.Fatal("with the method allowed the fake server saw no password: the test cannot see a leak")
			}
			if method == "password" && pw[0] != "super-secret" || method == "md5" && !strings.HasPrefix(pw[0], "md5") {
				t.Errorf("received %q", pw[0])
			}
		})
	}
}

func TestCheckRequireAuth(t *testing.T) {
	for _, ok := range []string{"", "scram-sha-256", "scram-sha-256,md5", "scram-sha-256,none", "!password"} {
		if err := CheckRequireAuth(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"scram", "md5,!password", "scram-sha-256,scram-sha-256"} {
		if err := CheckRequireAuth(bad); err == nil || !strings.Contains(err.Error(), "require_auth") {
			t.Errorf("%q: %v, want a refusal naming require_auth", bad, err)
		}
	}
}

// TestPrimaryConninfoRequireAuth: the walreceiver gets require_auth when
// its libpq knows it, and a conninfo it can parse when not.
func TestPrimaryConninfoRequireAuth(t *testing.T) {
	p := testPostgres(t)
	up := cluster.Member{Name: "n2", Host: "127.0.0.2", Port: 6000}
	p.libpqRequireAuth = func() bool { return true }
	if ci := p.primaryConninfo(up); !strings.HasSuffix(ci, " require_auth='scram-sha-256'") {
		t.Errorf("libpq 16+: %q lacks require_auth", ci)
	}
	p.libpqRequireAuth = func() bool { return false }
	if ci := p.primaryConninfo(up); strings.Contains(ci, "require_auth") {
		t.Errorf("libpq 15: %q has require_auth, which it refuses", ci)
	}
}

// TestProbeRequireAuth reads pg_isready's exit codes: 3 (an unknown
// option, a libpq before 16) and a missing program mean no, 2 (the
// option parsed, no server) yes. On this machine's PostgreSQL the answer
// is logged.
func TestProbeRequireAuth(t *testing.T) {
	for code, want := range map[int]bool{2: true, 3: false} {
		p := testPostgres(t)
		p.cfg.BinDir = t.TempDir()
		script := "#!/bin/sh\ncase \"$*\" in *require_auth=scram-sha-256*) exit " + strconv.Itoa(code) + ";; esac\nexit 9\n"
		if err := os.WriteFile(filepath.Join(p.cfg.BinDir, "pg_isready"), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		if got := p.probeRequireAuth(); got != want {
			t.Errorf("pg_isready exit %d: %v, want %v", code, got, want)
		}
	}
	p := testPostgres(t)
	p.cfg.BinDir = t.TempDir()
	if p.probeRequireAuth() {
		t.Error("no pg_isready: require_auth assumed")
	}
	if bin, err := pgproc.FindBinDir(t.Context(), ""); err == nil {
		p.cfg.BinDir = bin
		t.Logf("libpq of %s knows require_auth: %v", bin, p.probeRequireAuth())
	}
}

// TestPassfile: one line for the upstream's host and port and replication
// only, escaped; written through a new file, so that a symlink planted at
// its path is replaced (its target untouched) and a readable file there is
// replaced by a 0600 one; gone while the server follows nobody.
func TestPassfile(t *testing.T) {
	p := testPostgres(t)
	up := cluster.Member{Name: "n2", Host: "::1", Port: 6000}
	line := `\:\:1:6000:replication:repl:p\:w\\d` + "\n"
	path := p.passfile()
	check := func(t *testing.T) os.FileInfo {
		t.Helper()
		st, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if !st.Mode().IsRegular() || st.Mode().Perm() != 0o600 {
			t.Errorf("passfile mode %v, want a regular file 0600", st.Mode())
		}
		if b, _ := os.ReadFile(path); string(b) != line {
			t.Errorf("passfile %q, want %q", b, line)
		}
		return st
	}

	t.Run("symlink at the path", func(t *testing.T) {
		victim := filepath.Join(t.TempDir(), "victim")
		if err := os.WriteFile(victim, []byte("keep\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(victim, path); err != nil {
			t.Fatal(err)
		}
		if err := p.writePassfile(up); err != nil {
			t.Fatal(err)
		}
		check(t)
		if b, _ := os.ReadFile(victim); string(b) != "keep\n" {
			t.Errorf("the symlink's target was written: %q", b)
		}
		if st, _ := os.Stat(victim); st.Mode().Perm() != 0o644 {
			t.Errorf("the symlink's target changed mode: %v", st.Mode())
		}
	})

	t.Run("readable file at the path", func(t *testing.T) {
		_ = os.Remove(path)
		if err := os.WriteFile(path, []byte("old\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, 0o644); err != nil {
			t.Fatal(err)
		}
		old, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.writePassfile(up); err != nil {
			t.Fatal(err)
		}
		st := check(t)
		if st.Sys().(*syscall.Stat_t).Ino == old.Sys().(*syscall.Stat_t).Ino {
			t.Error("the old inode was rewritten in place: a reader holding it open would see the password")
		}
	})

	t.Run("follows the upstream, gone on a primary", func(t *testing.T) {
		other := cluster.Member{Name: "n3", Host: "10.0.0.3", Port: 5432}
		if err := p.writeConf(serverConf{Standby: true, Upstream: &other}); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(path); string(b) != `10.0.0.3:5432:replication:repl:p\:w\\d`+"\n" {
			t.Errorf("after re-pointing to n3: %q", b)
		}
		if err := p.writeConf(serverConf{}); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("passfile on a primary: %v", err)
		}
	})

	left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*tmp-*"))
	if len(left) != 0 {
		t.Errorf("temporary files left: %q", left)
	}
}

func TestSCRAMVerifierRefuses(t *testing.T) {
	for _, pw := range []string{"", "pässword"} {
		if _, err := newSCRAMVerifier(pw); err == nil {
			t.Errorf("verifier of %q computed", pw)
		}
	}
	a, _ := newSCRAMVerifier("same")
	b, _ := newSCRAMVerifier("same")
	if a == b {
		t.Error("two verifiers of one password are equal: the salt is not random")
	}
}

// TestRolesFromVerifiers against a real server logging every statement:
// the verifier the agent computes is the one PostgreSQL computes (same
// salt and iterations), the roles bootstrap creates log in with their
// passwords through pgx and libpq, the monitor role is a plain member of
// pg_monitor, and no password reaches the server's log.
func TestRolesFromVerifiers(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	pg, err := pglocal.NewCluster(ctx, pglocal.Options{Fast: true, ExtraConf: []string{"log_statement = 'all'"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := pg.Close(cctx); err != nil {
			t.Error(err)
		}
	})
	in := pg.Primary()
	super, err := in.Connect(ctx, pglocal.SuperUser, "", "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer super.Close(ctx)

	t.Run("same verifier as PostgreSQL", func(t *testing.T) {
		for _, pw := range []string{"pencil", `a'b"c\d:e f`, "\x01ctl"} {
			if _, err := super.Exec(ctx, "DROP ROLE IF EXISTS known; CREATE ROLE known PASSWORD "+pgproc.QuoteLiteral(pw)); err != nil {
				t.Fatal(err)
			}
			var theirs string
			if err := super.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = 'known'").Scan(&theirs); err != nil {
				t.Fatal(err)
			}
			// SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
			head, _, _ := strings.Cut(strings.TrimPrefix(theirs, "SCRAM-SHA-256$"), "$")
			iter, saltB64, _ := strings.Cut(head, ":")
			n, _ := strconv.Atoi(iter)
			salt, err := base64.StdEncoding.DecodeString(saltB64)
			if err != nil || n != scramIterations || len(salt) != scramSaltLen {
				t.Fatalf("PostgreSQL's verifier %q: iterations %d, salt %d bytes", theirs, n, len(salt))
			}
			ours, err := scramVerifier(pw, salt, n)
			if err != nil || ours != theirs {
				t.Errorf("password %q: ours %q (%v), PostgreSQL's %q", pw, ours, err, theirs)
			}
		}
	})

	p := newPostgres(PostgresConfig{Name: "n1", DataDir: in.DataDir, SocketDir: in.SocketDir(), Port: in.Port, BinDir: pg.BinDir(),
		SuperUser: pglocal.SuperUser, ReplicationUser: "pharos_repl", ReplicationPassword: "repl-Pw'9",
		MonitorUser: "pharos_monitor", MonitorPassword: "mon-Pw'9", Owner: pg.Owner(),
		ProxyAuthUser: "pharos_auth", ProxyAuthPassword: "auth-Pw'9",
		// pglocal trusts its superuser on the socket.
		RequireAuth: "scram-sha-256,none"}, slog.New(slog.DiscardHandler))
	if err := p.createRoles(ctx); err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct{ user, pw string }{{"pharos_repl", "repl-Pw'9"}, {"pharos_monitor", "mon-Pw'9"}, {"pharos_auth", "auth-Pw'9"}} {
		cc, err := pgx.ParseConfig("host=127.0.0.1 port=" + strconv.Itoa(in.Port) + " dbname=postgres sslmode=disable user=" + r.user)
		if err != nil {
			t.Fatal(err)
		}
		cc.Password, cc.RequireAuth = r.pw, "scram-sha-256"
		conn, err := pgx.ConnectConfig(ctx, cc)
		if err != nil {
			t.Errorf("%s logs in with its password (pgx): %v", r.user, err)
			continue
		}
		if r.user == "pharos_monitor" {
			var super, monitor bool
			if err := conn.QueryRow(ctx, "SELECT rolsuper, pg_has_role(current_user, 'pg_monitor', 'MEMBER') FROM pg_roles WHERE rolname = current_user").Scan(&super, &monitor); err != nil {
				t.Error(err)
			} else if super || !monitor {
				t.Errorf("monitor role: superuser %v, pg_monitor member %v", super, monitor)
			}
		}
		switch r.user {
		case "pharos_auth":
			checkAuthFunction(ctx, t, conn, true)
		case "pharos_monitor":
			// A role without the grant cannot run it, even one that may use
			// the schema: the function's own ACL refuses it.
			if _, err := super.Exec(ctx, "GRANT USAGE ON SCHEMA pharos TO pharos_monitor"); err != nil {
				t.Fatal(err)
			}
			checkAuthFunction(ctx, t, conn, false)
		}
		conn.Close(ctx)
		cc.Password = r.pw + "x"
		var pgErr *pgconn.PgError
		if _, err := pgx.ConnectConfig(ctx, cc); !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
			t.Errorf("%s with a wrong password: %v, want 28P01", r.user, err)
		}
		// libpq, which applies SASLprep itself, agrees.
		psql := exec.CommandContext(ctx, filepath.Join(pg.BinDir(), "psql"), "-X", "-A", "-t", "-w", "-c", "SELECT 1",
			"host=127.0.0.1 port="+strconv.Itoa(in.Port)+" dbname=postgres sslmode=disable user="+r.user)
		psql.Env = append(pgproc.ChildEnv(), "PGPASSWORD="+r.pw)
		if out, err := psql.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "1" {
			t.Errorf("%s logs in with its password (libpq): %v: %s", r.user, err, out)
		}
	}
	log, err := os.ReadFile(in.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), `statement: CREATE ROLE "pharos_repl" WITH REPLICATION LOGIN PASSWORD 'SCRAM-SHA-256$4096:`) {
		t.Fatalf("the server log lacks the CREATE ROLE statement: is log_statement on?\n%s", log)
	}
	var secdef bool
	var owner string
	if err := super.QueryRow(ctx, "SELECT prosecdef, pg_get_userbyid(proowner) FROM pg_proc WHERE oid = 'pharos.get_auth(text)'::regprocedure").Scan(&secdef, &owner); err != nil {
		t.Errorf("pharos.get_auth(text): %v", err)
	} else if !secdef || owner != pglocal.SuperUser {
		t.Errorf("pharos.get_auth: SECURITY DEFINER %v, owner %s; want true, %s", secdef, owner, pglocal.SuperUser)
	}
	for _, pw := range []string{"repl-Pw", "mon-Pw", "auth-Pw"} {
		if strings.Contains(string(log), pw) {
			t.Errorf("the server log holds the password %s…", pw)
		}
	}
}

// checkAuthFunction runs the proxies' default auth_query as conn's role:
// granted, it returns a login role's verifier and no row for an unknown
// name, and the role still cannot read pg_authid itself; not granted, it
// is refused (42501).
func checkAuthFunction(ctx context.Context, t *testing.T, conn *pgx.Conn, granted bool) {
	t.Helper()
	const query = "SELECT usename, passwd FROM pharos.get_auth($1)"
	var name, passwd string
	err := conn.QueryRow(ctx, query, "pharos_repl").Scan(&name, &passwd)
	var pgErr *pgconn.PgError
	if !granted {
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
			t.Errorf("pharos.get_auth without the grant: %v, want 42501 permission denied", err)
		}
		return
	}
	if err != nil || name != "pharos_repl" || !strings.HasPrefix(passwd, "SCRAM-SHA-256$4096:") {
		t.Errorf("pharos.get_auth(pharos_repl): %q %q %v", name, passwd, err)
	}
	if err := conn.QueryRow(ctx, query, "nobody").Scan(&name, &passwd); !errors.Is(err, pgx.ErrNoRows) {
		t.Errorf("pharos.get_auth(nobody): %v, want no row", err)
	}
	if _, err := conn.Exec(ctx, "SELECT rolpassword FROM pg_authid"); !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		t.Errorf("the auth role reads pg_authid itself: %v", err)
	}
}
