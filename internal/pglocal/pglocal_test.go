package pglocal

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tlogWriter struct{ t *testing.T }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// newCluster starts a cluster and registers its Close.
func newCluster(t *testing.T, opts Options) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	c, err := NewCluster(ctx, opts)
	if err != nil {
		t.Fatalf("NewCluster: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

func connect(t *testing.T, ctx context.Context, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect %q: %v", dsn, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func inRecovery(t *testing.T, ctx context.Context, in *Instance) bool {
	t.Helper()
	rec, err := in.InRecovery(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// TestCluster runs one primary and one replica through the checks that need
// servers; the subtests share them to keep the package fast.
func TestCluster(t *testing.T) {
	t.Parallel()
	c := newCluster(t, Options{Replicas: 1, Fast: true, SSL: true})
	p, r := c.Primary(), c.Replicas()[0]

	t.Run("roles", func(t *testing.T) {
		ctx := t.Context()
		if inRecovery(t, ctx, p) {
			t.Errorf("primary %s is in recovery", p.Name)
		}
		if !inRecovery(t, ctx, r) {
			t.Errorf("replica %s is not in recovery", r.Name)
		}
	})

	t.Run("replication", func(t *testing.T) {
		ctx := t.Context()
		pc := connect(t, ctx, p.DSN(UserSCRAM, PasswordSCRAM, AppDB))
		if _, err := pc.Exec(ctx, "CREATE TABLE t (id int PRIMARY KEY, v text)"); err != nil {
			t.Fatal(err)
		}
		if _, err := pc.Exec(ctx, "INSERT INTO t VALUES (1, 'hello')"); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitReplicaCaughtUp(ctx, r); err != nil {
			t.Fatal(err)
		}
		rc := connect(t, ctx, r.DSN(UserSCRAM, PasswordSCRAM, AppDB))
		var v string
		if err := rc.QueryRow(ctx, "SELECT v FROM t WHERE id = 1").Scan(&v); err != nil {
			t.Fatal(err)
		}
		if v != "hello" {
			t.Errorf("replica read %q, want hello", v)
		}
		_, err := rc.Exec(ctx, "INSERT INTO t VALUES (2, 'no')")
		if code := sqlState(err); code != "25006" { // read_only_sql_transaction
			t.Errorf("write on replica: %v (SQLSTATE %q), want 25006", err, code)
		}
	})

	t.Run("auth", func(t *testing.T) {
		for _, tc := range []struct {
			name, user, password, db string
		}{
			{"superuser trust", SuperUser, "", "postgres"},
			{"app trust", UserTrust, "", AppDB},
			{"app md5", UserMD5, PasswordMD5, AppDB},
			{"app scram", UserSCRAM, PasswordSCRAM, AppDB},
			{"health scram", UserHealth, PasswordHealth, "postgres"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ctx := t.Context()
				for _, in := range []*Instance{p, r} {
					conn := connect(t, ctx, in.DSN(tc.user, tc.password, tc.db))
					var got string
					if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&got); err != nil {
						t.Fatal(err)
					}
					if got != tc.user {
						t.Errorf("%s: current_user %q, want %q", in.Name, got, tc.user)
					}
				}
			})
		}
		t.Run("app users can create tables", func(t *testing.T) {
			ctx := t.Context()
			for _, u := range []struct{ user, password string }{
				{UserTrust, ""}, {UserMD5, PasswordMD5}, {UserSCRAM, PasswordSCRAM},
			} {
				conn := connect(t, ctx, p.DSN(u.user, u.password, AppDB))
				if _, err := conn.Exec(ctx, "CREATE TABLE own_"+u.user+" (x int)"); err != nil {
					t.Errorf("%s: %v", u.user, err)
				}
			}
		})
		t.Run("health user is pg_monitor", func(t *testing.T) {
			ctx := t.Context()
			conn := connect(t, ctx, p.DSN(UserHealth, PasswordHealth, "postgres"))
			var n int
			if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 1 {
				t.Errorf("pg_stat_replication streaming rows = %d, want 1", n)
			}
		})
		for _, tc := range []struct{ name, user string }{
			{"wrong md5 password", UserMD5},
			{"wrong scram password", UserSCRAM},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := pgx.Connect(t.Context(), p.DSN(tc.user, "wrong", AppDB))
				if code := sqlState(err); code != "28P01" {
					t.Errorf("err = %v (SQLSTATE %q), want 28P01", err, code)
				}
			})
		}
	})

	t.Run("ssl", func(t *testing.T) {
		ctx := t.Context()
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(c.CertPEM()) {
			t.Fatal("CertPEM: no certificate")
		}
		for _, in := range []*Instance{p, r} {
			cfg, err := pgx.ParseConfig(in.DSN(UserSCRAM, PasswordSCRAM, AppDB) + " sslmode=require")
			if err != nil {
				t.Fatal(err)
			}
			cfg.TLSConfig = &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
			conn, err := pgx.ConnectConfig(ctx, cfg)
			if err != nil {
				t.Fatalf("%s: %v", in.Name, err)
			}
			var ssl bool
			err = conn.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl)
			conn.Close(ctx)
			if err != nil || !ssl {
				t.Errorf("%s: ssl=%v err=%v", in.Name, ssl, err)
			}
		}
	})

	t.Run("stop and start", func(t *testing.T) {
		ctx := t.Context()
		oldPid := r.Pid()
		if err := r.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if r.Running() || r.Pid() != 0 {
			t.Fatalf("after Stop: running=%v pid=%d", r.Running(), r.Pid())
		}
		if _, err := pgx.Connect(ctx, r.DSN(SuperUser, "", "postgres")); err == nil {
			t.Fatal("connected to a stopped server")
		}
		if err := r.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if r.Pid() == 0 || r.Pid() == oldPid {
			t.Errorf("after Start: pid %d (old %d)", r.Pid(), oldPid)
		}
		if err := c.waitStreaming(ctx, p, r); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("kill and start", func(t *testing.T) {
		ctx := t.Context()
		pc := connect(t, ctx, p.DSN(SuperUser, "", AppDB))
		if _, err := pc.Exec(ctx, "INSERT INTO t VALUES (3, 'before kill')"); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitReplicaCaughtUp(ctx, r); err != nil {
			t.Fatal(err)
		}
		if err := r.Kill(); err != nil {
			t.Fatal(err)
		}
		if err := r.Start(ctx); err != nil { // crash recovery
			t.Fatal(err)
		}
		if err := c.WaitReplicaCaughtUp(ctx, r); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("postmaster killed by someone else", func(t *testing.T) {
		ctx := t.Context()
		if err := syscall.Kill(r.Pid(), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		select {
		case <-r.Exited():
		case <-time.After(10 * time.Second):
			t.Fatal("Exited not closed 10 s after SIGKILL")
		}
		if err := r.Start(ctx); err != nil { // its orphaned backends must not block this
			t.Fatal(err)
		}
	})

	t.Run("frozen server stops", func(t *testing.T) {
		ctx := t.Context()
		if err := r.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		if conn, err := pgx.Connect(cctx, r.DSN(SuperUser, "", "postgres")); err == nil {
			conn.Close(ctx)
			t.Fatal("connected to a frozen server")
		}
		if err := r.Stop(ctx); err != nil { // thaws first
			t.Fatal(err)
		}
		if err := r.Start(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("stop past deadline kills", func(t *testing.T) {
		ctx := t.Context()
		expired, cancel := context.WithCancel(ctx)
		cancel()
		pid := r.Pid()
		if err := r.Stop(expired); !errors.Is(err, context.Canceled) {
			t.Errorf("Stop(expired ctx) = %v, want context.Canceled", err)
		}
		if r.Running() || processAlive(pid) {
			t.Fatalf("postmaster %d alive after Stop", pid)
		}
		if err := r.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitReplicaCaughtUp(ctx, r); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("promote", func(t *testing.T) {
		ctx := t.Context()
		if err := r.Promote(ctx); err != nil {
			t.Fatal(err)
		}
		if inRecovery(t, ctx, r) {
			t.Fatal("still in recovery after Promote")
		}
		rc := connect(t, ctx, r.DSN(SuperUser, "", AppDB))
		if _, err := rc.Exec(ctx, "INSERT INTO t VALUES (4, 'promoted')"); err != nil {
			t.Fatal(err)
		}
	})
}

func TestCloseRemovesBaseDir(t *testing.T) {
	t.Parallel()
	if os.Getenv(KeepDataEnv) == "1" {
		t.Skip(KeepDataEnv + "=1 keeps the base dir")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	c, err := NewCluster(ctx, Options{Fast: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	p := c.Primary()
	if fi, err := os.Stat(p.DataDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("data dir %s: %v %v, want mode 0700", p.DataDir, fi.Mode(), err)
	}
	if !strings.HasPrefix(c.BaseDir(), os.TempDir()) {
		t.Errorf("base dir %s not under %s", c.BaseDir(), os.TempDir())
	}
	pid := p.Pid()
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.BaseDir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("base dir after Close: %v, want not exist", err)
	}
	if p.Running() || processAlive(pid) {
		t.Errorf("postmaster %d still running after Close", pid)
	}
	if err := c.Close(ctx); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || !strings.HasPrefix(s[i+1:], " Z")
}

func TestMissingBinaries(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nonexistent")
	_, err := NewCluster(t.Context(), Options{BinDir: dir})
	if err == nil {
		t.Fatal("NewCluster with a missing BinDir succeeded")
	}
	for _, want := range []string{dir, "postgres", "initdb", "scripts/ensure-deps.sh"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestDSNQuoting(t *testing.T) {
	in := &Instance{Port: 5433}
	got := in.DSN("u", `it's a \secret`, "db")
	cfg, err := pgx.ParseConfig(got)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Password != `it's a \secret` || cfg.User != "u" || cfg.Database != "db" || cfg.Port != 5433 || cfg.TLSConfig != nil {
		t.Errorf("DSN %q parsed to user=%q password=%q db=%q port=%d tls=%v",
			got, cfg.User, cfg.Password, cfg.Database, cfg.Port, cfg.TLSConfig != nil)
	}
}

func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

func TestUnreachableBaseDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the postgres user's access to a root-owned 0700 dir")
	}
	dir := filepath.Join(t.TempDir(), "pg") // t.TempDir() is 0700 root-owned
	_, err := NewCluster(t.Context(), Options{BaseDir: dir})
	if err == nil || !strings.Contains(err.Error(), "cannot reach") {
		t.Fatalf("NewCluster(BaseDir under t.TempDir()) = %v, want a 'cannot reach' error", err)
	}
}
