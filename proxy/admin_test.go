package proxy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pharos-ha/pharos/internal/pgauth"
	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/proxy"
	"github.com/pharos-ha/pharos/router"
)

// consoleAdmin is the admin user of the console tests; pharos_health is
// not one.
const consoleAdmin = pglocal.UserSCRAM

func startConsoleProxy(t *testing.T, cfg proxy.Config, log *syncBuffer) *testProxy {
	t.Helper()
	cfg.AuthType = proxy.AuthSCRAM
	if cfg.AuthFile == "" {
		cfg.AuthFile = writeAuthFile(t)
	}
	cfg.AdminUsers = []string{consoleAdmin}
	cfg.Version = "test-1.2"
	opts := proxyOptions{Config: cfg, Ready: func(rw string, ro []string) bool { return rw != "" && len(ro) > 0 }}
	if log != nil {
		opts.Log = log
	}
	return startProxy(t, opts)
}

// consoleInfo is a libpq connection string for the console on ep.
func consoleInfo(p *testProxy, ep router.Endpoint, user string) string {
	host, port, _ := net.SplitHostPort(p.Addr(ep).String())
	return fmt.Sprintf("host=%s port=%s user=%s dbname=pharos sslmode=disable connect_timeout=10", host, port, user)
}

// consoleConnect opens a console session with pgx's simple protocol.
func consoleConnect(t *testing.T, p *testProxy, ep router.Endpoint, user string) *pgx.Conn {
	t.Helper()
	return connectConfig(t, consoleInfo(p, ep, user)+" password="+passwordFor(user), func(c *pgx.ConnConfig) {
		c.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	})
}

// appConnect opens an ordinary session on the app database, simple
// protocol (one ReadyForQuery per statement, so counts are exact).
func appConnect(t *testing.T, p *testProxy, ep router.Endpoint, extra string) *pgx.Conn {
	t.Helper()
	return connectConfig(t, p.DSN(ep, pglocal.UserSCRAM, extra), func(c *pgx.ConnConfig) {
		c.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	})
}

// result is a console answer: its column names and rows as text.
type result struct {
	cols []string
	rows [][]string
}

func (r result) col(name string) int { return slices.Index(r.cols, name) }

// where returns the rows whose column name equals value.
func (r result) where(name, value string) []map[string]string {
	var out []map[string]string
	i := r.col(name)
	for _, row := range r.rows {
		if i >= 0 && row[i] == value {
			m := make(map[string]string, len(r.cols))
			for j, c := range r.cols {
				m[c] = row[j]
			}
			out = append(out, m)
		}
	}
	return out
}

func show(t *testing.T, conn *pgx.Conn, q string) result {
	t.Helper()
	r, err := tryShow(conn, q)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return r
}

func tryShow(conn *pgx.Conn, q string) (result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := conn.Query(ctx, q)
	if err != nil {
		return result{}, err
	}
	defer rows.Close()
	var r result
	for _, f := range rows.FieldDescriptions() {
		r.cols = append(r.cols, f.Name)
	}
	for rows.Next() {
		var row []string
		for _, v := range rows.RawValues() {
			row = append(row, string(v))
		}
		r.rows = append(r.rows, row)
	}
	return r, rows.Err()
}

func mustExec(t *testing.T, conn *pgx.Conn, q string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := conn.Exec(ctx, q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// documentedColumns reads the console section of docs/proxy.md: its table
// rows "| `SHOW X` | `col`, `col`, … |".
func documentedColumns(t *testing.T) map[string][]string {
	t.Helper()
	doc, err := os.ReadFile("../docs/proxy.md")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	row := regexp.MustCompile("(?m)^\\| `(SHOW [A-Z_]+)` \\| (.*) \\|$")
	span := regexp.MustCompile("`([a-z_]+)`")
	for _, m := range row.FindAllStringSubmatch(string(doc), -1) {
		for _, c := range span.FindAllStringSubmatch(m[2], -1) {
			out[m[1]] = append(out[m[1]], c[1])
		}
	}
	if len(out) == 0 {
		t.Fatal("docs/proxy.md lists no console columns")
	}
	return out
}

func TestConsole(t *testing.T) {
	p := startConsoleProxy(t, proxy.Config{}, nil)
	documented := documentedColumns(t)

	t.Run("columns are the documented ones, with pgx on both endpoints and with psql", func(t *testing.T) {
		for _, ep := range []router.Endpoint{router.RW, router.RO} {
			conn := consoleConnect(t, p, ep, consoleAdmin)
			for q, want := range documented {
				if got := show(t, conn, q).cols; !slices.Equal(got, want) {
					t.Errorf("%s on %s: columns %v, documented %v", q, ep, got, want)
				}
			}
		}
		for q, want := range documented {
			r := runProgram(t, 15*time.Second, passwordFor(consoleAdmin), "psql", "-X", "-A", "-v", "ON_ERROR_STOP=1",
				"-d", consoleInfo(p, router.RW, consoleAdmin), "-c", q)
			if r.exitCode != 0 {
				t.Fatalf("psql -c %q: %s", q, r)
			}
			header, _, _ := strings.Cut(r.stdout, "\n")
			if got := strings.Split(header, "|"); !slices.Equal(got, want) {
				t.Errorf("psql %s: header %v, documented %v", q, got, want)
			}
		}
	})

	t.Run("SHOW VERSION and SHOW HELP", func(t *testing.T) {
		conn := consoleConnect(t, p, router.RW, consoleAdmin)
		if r := show(t, conn, "show version;"); len(r.rows) != 1 || r.rows[0][0] != "pharos test-1.2" {
			t.Fatalf("SHOW VERSION: %+v", r)
		}
		r := runProgram(t, 15*time.Second, passwordFor(consoleAdmin), "psql", "-X", "-v", "ON_ERROR_STOP=1",
			"-d", consoleInfo(p, router.RO, consoleAdmin), "-c", "SHOW HELP")
		if r.exitCode != 0 || !strings.Contains(r.stderr, "NOTICE:  Console usage") || !strings.Contains(r.stderr, "PAUSE [<db>]") {
			t.Fatalf("psql SHOW HELP: %s", r)
		}
	})

	t.Run("SHOW CLIENTS lists the sessions", func(t *testing.T) {
		app := appConnect(t, p, router.RO, "application_name=console-test")
		mustExec(t, app, "SELECT 1")
		conn := consoleConnect(t, p, router.RW, consoleAdmin)
		r := show(t, conn, "SHOW CLIENTS")
		rows := r.where("application_name", "console-test")
		if len(rows) != 1 {
			t.Fatalf("SHOW CLIENTS has %d rows for the app session: %+v", len(rows), r)
		}
		c := rows[0]
		local := app.PgConn().Conn().LocalAddr().(*net.TCPAddr)
		if c["type"] != "C" || c["user"] != pglocal.UserSCRAM || c["database"] != pglocal.AppDB || c["state"] != "active" ||
			c["endpoint"] != "ro" || c["port"] != strconv.Itoa(local.Port) || c["addr"] != "127.0.0.1" || c["link"] == "" {
			t.Fatalf("app session: %v (client port %d)", c, local.Port)
		}
		if len(r.where("database", "pharos")) != 1 {
			t.Fatalf("the console's own session is not listed once: %+v", r)
		}
	})

	t.Run("SHOW STATS counts queries, transactions, bytes and waits", func(t *testing.T) {
		conn := consoleConnect(t, p, router.RW, consoleAdmin)
		before := statsOf(t, conn, pglocal.AppDB)
		app := appConnect(t, p, router.RW, "")
		for range 10 {
			mustExec(t, app, "SELECT 1")
		}
		mustExec(t, app, "BEGIN")
		mustExec(t, app, "SELECT pg_sleep(0.6)")
		time.Sleep(400 * time.Millisecond) // idle in transaction
		mustExec(t, app, "COMMIT")
		live := statsOf(t, conn, pglocal.AppDB)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = app.Close(ctx)
		// The session's counts move to the totals when it ends.
		var after map[string]int64
		waitFor(t, 5*time.Second, "the ended session's counts", func() bool {
			after = statsOf(t, conn, pglocal.AppDB)
			return after["total_server_assignment_count"] == before["total_server_assignment_count"]+1 &&
				len(show(t, conn, "SHOW CLIENTS").where("database", pglocal.AppDB)) == 0
		})
		for _, s := range []map[string]int64{live, after} {
			d := func(k string) int64 { return s[k] - before[k] }
			if d("total_query_count") != 13 || d("total_xact_count") != 11 || d("total_server_assignment_count") != 1 {
				t.Fatalf("counts grew by queries %d, transactions %d, assignments %d; want 13, 11, 1",
					d("total_query_count"), d("total_xact_count"), d("total_server_assignment_count"))
			}
			if d("total_received") < int64(13*len("SELECT 1")) || d("total_sent") < 13*6 {
				t.Fatalf("bytes grew by %d received, %d sent", d("total_received"), d("total_sent"))
			}
			if w := d("total_wait_time"); w <= 0 || w > 5e6 {
				t.Fatalf("wait time grew by %dµs", w)
			}
			// Sampled about every 100 ms: 0.6 s in a query, 1 s in the
			// transaction, each give or take a few samples.
			if q := d("total_query_time"); q < 300e3 || q > 1.5e6 {
				t.Fatalf("query time grew by %dµs, want about 600000", q)
			}
			if x := d("total_xact_time"); x < 700e3 || x > 2e6 {
				t.Fatalf("transaction time grew by %dµs, want about 1000000", x)
			}
		}
		tot := show(t, conn, "SHOW STATS_TOTALS").where("database", pglocal.AppDB)
		if len(tot) != 1 || tot[0]["query_count"] != strconv.FormatInt(after["total_query_count"], 10) {
			t.Fatalf("SHOW STATS_TOTALS %v, SHOW STATS %v", tot, after)
		}
	})

	t.Run("a bad command gets 42601 and the console goes on", func(t *testing.T) {
		conn := consoleConnect(t, p, router.RW, consoleAdmin)
		for q, code := range map[string]string{"SELECT 1": "42601", "SHOW POOLZ": "42601", "PAUSE a b": "42601", "SHUTDOWN": "0A000"} {
			_, err := tryShow(conn, q)
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != code || pe.Severity != "ERROR" || !strings.HasPrefix(pe.Message, "pharos console: ") {
				t.Fatalf("%s: %v, want ERROR %s", q, err, code)
			}
			if r := show(t, conn, "SHOW VERSION"); len(r.rows) != 1 {
				t.Fatalf("after %s: %+v", q, r)
			}
		}
		r := runProgram(t, 15*time.Second, passwordFor(consoleAdmin), "psql", "-X", "-d", consoleInfo(p, router.RW, consoleAdmin), "-c", "SHOW ME")
		if r.exitCode != 1 || !strings.Contains(r.stderr, `ERROR:  pharos console: unknown SHOW subject "ME"`) {
			t.Fatalf("psql SHOW ME: %s", r)
		}
	})

	t.Run("the extended protocol gets a clear error", func(t *testing.T) {
		conn := connectConfig(t, consoleInfo(p, router.RW, consoleAdmin)+" password="+passwordFor(consoleAdmin), nil)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		rows, err := conn.Query(ctx, "SHOW VERSION") // prepared: Parse, Describe, Sync
		if err == nil {
			rows.Close()
			err = rows.Err()
		}
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "0A000" || !strings.Contains(pe.Message, "only the simple query protocol") {
			t.Fatalf("extended SHOW VERSION: %v", err)
		}
		if _, err := conn.Exec(ctx, "SHOW VERSION", pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatalf("simple protocol after the refusal: %v", err)
		}
	})

	t.Run("a user not in admin_users is refused", func(t *testing.T) {
		err := tryConnect(t, consoleInfo(p, router.RW, pglocal.UserHealth)+" password="+pglocal.PasswordHealth)
		wantPgError(t, err, "42501", `permission denied for database "pharos"`)
		err = tryConnect(t, consoleInfo(p, router.RO, consoleAdmin)+" password=wrong")
		wantPgError(t, err, "28P01", `password authentication failed for user "app_scram"`)
	})
}

// statsOf returns db's SHOW STATS row as numbers.
func statsOf(t *testing.T, conn *pgx.Conn, db string) map[string]int64 {
	t.Helper()
	r := show(t, conn, "SHOW STATS")
	out := map[string]int64{}
	rows := r.where("database", db)
	if len(rows) == 0 {
		return out
	}
	for k, v := range rows[0] {
		if k == "database" {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("SHOW STATS %s = %q", k, v)
		}
		out[k] = n
	}
	return out
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// In passthrough the database pharos is the cluster's, as it was before
// the console existed: an existing deployment changes nothing.
func TestConsoleNeedsTheProxysAuthentication(t *testing.T) {
	p := startProxy(t, proxyOptions{})
	err := tryConnect(t, consoleInfo(p, router.RW, pglocal.SuperUser))
	wantPgError(t, err, "3D000", `database "pharos" does not exist`)

	cfg := proxy.Config{RWListen: "127.0.0.1:0", AdminUsers: []string{"a"}}
	if _, err := proxy.New(cfg, router.New(router.Config{}, nil, p.Metrics), nil, p.Metrics); err == nil ||
		err.Error() != "admin_users: the admin console needs the proxy's own authentication (auth_type)" {
		t.Fatalf("admin_users with passthrough: %v", err)
	}
}

// background runs f in a goroutine and reports its error on the channel.
func background(f func() error) <-chan error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	return done
}

// pending says whether done has not reported within d.
func pending(done <-chan error, d time.Duration) (bool, error) {
	select {
	case err := <-done:
		return false, err
	case <-time.After(d):
		return true, nil
	}
}

// execBackground runs q on conn in a goroutine and reports its error on
// the channel.
func execBackground(conn *pgx.Conn, q string) <-chan error {
	return background(func() error {
		_, err := conn.Exec(context.Background(), q)
		return err
	})
}

func connectApp(p *testProxy) func() error {
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, p.DSN(router.RW, pglocal.UserSCRAM, ""))
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, "SELECT 1")
		return err
	}
}

func TestConsolePauseResume(t *testing.T) {
	p := startConsoleProxy(t, proxy.Config{}, nil)
	admin := consoleConnect(t, p, router.RW, consoleAdmin)
	other := appConnect(t, p, router.RW, "dbname=postgres")
	held := appConnect(t, p, router.RW, "")

	// PAUSE waits for the session holding a server connection of app.
	pauser := consoleConnect(t, p, router.RO, consoleAdmin)
	paused := execBackground(pauser, "PAUSE app")
	if waiting, err := pending(paused, 500*time.Millisecond); !waiting {
		t.Fatalf("PAUSE returned (%v) while a client of app held its server connection", err)
	}
	// A new client of app waits; one of another database does not.
	newcomer := background(connectApp(p))
	mustExec(t, other, "SELECT 1")
	if waiting, err := pending(newcomer, 500*time.Millisecond); !waiting {
		t.Fatalf("a new client of the paused database got through: %v", err)
	}
	waitFor(t, 2*time.Second, "the newcomer listed as waiting", func() bool {
		for _, c := range show(t, admin, "SHOW CLIENTS").where("database", pglocal.AppDB) {
			if c["state"] == "waiting" {
				return true
			}
		}
		return false
	})
	if st := show(t, admin, "SHOW STATE").where("key", "paused_databases"); len(st) != 1 || st[0]["value"] != "app" {
		t.Fatalf("SHOW STATE: %v", st)
	}
	// The held session still works; once it leaves, PAUSE returns.
	mustExec(t, held, "SELECT 1")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = held.Close(ctx)
	if waiting, err := pending(paused, 3*time.Second); waiting || err != nil {
		t.Fatalf("PAUSE after the last client left: still waiting %v, err %v", waiting, err)
	}
	if waiting, err := pending(newcomer, 300*time.Millisecond); !waiting {
		t.Fatalf("the newcomer got through before RESUME: %v", err)
	}
	mustExec(t, admin, "RESUME app")
	if waiting, err := pending(newcomer, 5*time.Second); waiting || err != nil {
		t.Fatalf("the newcomer after RESUME: still waiting %v, err %v", waiting, err)
	}
	if _, err := tryShow(admin, "RESUME app"); err == nil || !strings.Contains(err.Error(), `database "app" is not paused`) {
		t.Fatalf("RESUME of a database not paused: %v", err)
	}
}

func TestConsolePauseOutlastsStartupTimeout(t *testing.T) {
	p := startConsoleProxy(t, proxy.Config{StartupTimeout: 1500 * time.Millisecond}, nil)
	admin := consoleConnect(t, p, router.RW, consoleAdmin)
	mustExec(t, admin, "PAUSE")
	start := time.Now()
	err := connectApp(p)()
	wantPgError(t, err, "57P03", `pharos: database "app" is paused (PAUSE on the admin console) and was not resumed within startup_timeout`)
	if d := time.Since(start); d < time.Second || d > 5*time.Second {
		t.Fatalf("refused after %v, want about the 1.5 s startup_timeout", d)
	}
	if _, err := tryShow(admin, "RESUME app"); err == nil || !strings.Contains(err.Error(), "paused as a whole") {
		t.Fatalf("RESUME app under a global PAUSE: %v", err)
	}
	mustExec(t, admin, "RESUME")
	if err := connectApp(p)(); err != nil {
		t.Fatalf("after RESUME: %v", err)
	}
}

func TestConsoleKill(t *testing.T) {
	p := startConsoleProxy(t, proxy.Config{}, nil)
	admin := consoleConnect(t, p, router.RW, consoleAdmin)
	rw := appConnect(t, p, router.RW, "")
	ro := appConnect(t, p, router.RO, "")
	other := appConnect(t, p, router.RW, "dbname=postgres")
	mustExec(t, rw, "SELECT 1")
	mustExec(t, ro, "SELECT 1")

	mustExec(t, admin, "KILL app")
	for name, conn := range map[string]*pgx.Conn{"rw": rw, "ro": ro} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := conn.Exec(ctx, "SELECT 1")
		cancel()
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "57P01" || pe.Message != "terminating connection due to administrator command" {
			t.Fatalf("%s session after KILL: %v", name, err)
		}
	}
	mustExec(t, other, "SELECT 1")
	if n := counter(p.Metrics.Terminated, string(metrics.ReasonAdmin)); n != 2 {
		t.Fatalf("sessions terminated by the console: %v, want 2", n)
	}
	// A killed database waits for RESUME, as in PgBouncer.
	newcomer := background(connectApp(p))
	if waiting, err := pending(newcomer, 500*time.Millisecond); !waiting {
		t.Fatalf("a new client of the killed database got through before RESUME: %v", err)
	}
	mustExec(t, admin, "RESUME app")
	if waiting, err := pending(newcomer, 5*time.Second); waiting || err != nil {
		t.Fatalf("after RESUME: still waiting %v, err %v", waiting, err)
	}
}

// syncBuffer is a bytes.Buffer safe for the proxy's log.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestConsoleReload(t *testing.T) {
	const user, password = "app_reload", "reload-secret"
	super := superConnect(t, cluster.Primary(), "postgres")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := super.Exec(ctx, fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", user, password)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := super.Exec(ctx, "DROP ROLE "+user); err != nil {
			t.Errorf("drop role: %v", err)
		}
	})
	var verifier string
	if err := super.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", user).Scan(&verifier); err != nil {
		t.Fatal(err)
	}
	v, err := pgauth.ParseVerifier(verifier)
	if err != nil {
		t.Fatal(err)
	}
	authFile := writeAuthFile(t)
	original, err := os.ReadFile(authFile)
	if err != nil {
		t.Fatal(err)
	}
	log := &syncBuffer{}
	p := startConsoleProxy(t, proxy.Config{AuthFile: authFile}, log)
	admin := consoleConnect(t, p, router.RW, consoleAdmin)
	dsn := func(u, pw string) string {
		host, port, _ := net.SplitHostPort(p.Addr(router.RW).String())
		return fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=app sslmode=disable connect_timeout=10", host, port, u, pw)
	}
	wantPgError(t, tryConnect(t, dsn(user, password)), "28P01", `password authentication failed for user "app_reload"`)

	// The file gains the user: not used before RELOAD, used after.
	if err := os.WriteFile(authFile, append(original, pgauth.FormatUserlistLine(user, v)...), 0o600); err != nil {
		t.Fatal(err)
	}
	wantPgError(t, tryConnect(t, dsn(user, password)), "28P01", `password authentication failed for user "app_reload"`)
	mustExec(t, admin, "RELOAD")
	if err := tryConnect(t, dsn(user, password)); err != nil {
		t.Fatalf("the new user after RELOAD: %v", err)
	}

	// A half-written file is refused and the users read before stay.
	if err := os.WriteFile(authFile, []byte(`"app_scram" "SCRAM-SHA-256$4096:`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = tryShow(admin, "RELOAD")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "F0000" || !strings.Contains(pe.Message, "pharos console: RELOAD: auth_file: "+authFile) {
		t.Fatalf("RELOAD of a garbage auth_file: %v", err)
	}
	if !strings.Contains(log.String(), "auth_file reload failed, keeping the previous users") {
		t.Fatalf("the failed reload is not logged")
	}
	for u, pw := range map[string]string{user: password, pglocal.UserSCRAM: pglocal.PasswordSCRAM} {
		if err := tryConnect(t, dsn(u, pw)); err != nil {
			t.Fatalf("%s after a failed RELOAD: %v", u, err)
		}
	}
	if r := show(t, admin, "SHOW VERSION"); len(r.rows) != 1 {
		t.Fatalf("console after a failed RELOAD: %+v", r)
	}
}

func TestConsolePoolsAndServers(t *testing.T) {
	p := startConsoleProxy(t, proxy.Config{}, nil)
	admin := consoleConnect(t, p, router.RW, consoleAdmin)
	app := appConnect(t, p, router.RW, "application_name=pooled-one")
	mustExec(t, app, "SELECT 1")
	pair := func() map[string]string {
		rows := show(t, admin, "SHOW POOLS").where("database", pglocal.AppDB)
		if len(rows) != 1 {
			t.Fatalf("SHOW POOLS has %d rows for app: %v", len(rows), rows)
		}
		return rows[0]
	}
	if r := pair(); r["user"] != pglocal.UserSCRAM || r["cl_active"] != "1" || r["sv_active"] != "1" || r["pool_mode"] != "session" {
		t.Fatalf("SHOW POOLS with one client: %v", r)
	}
	clients := show(t, admin, "SHOW CLIENTS").where("application_name", "pooled-one")
	servers := show(t, admin, "SHOW SERVERS").where("database", pglocal.AppDB)
	if len(clients) != 1 || len(servers) != 1 {
		t.Fatalf("clients %v, servers %v", clients, servers)
	}
	c, sv := clients[0], servers[0]
	if sv["state"] != "active" || sv["link"] != c["ptr"] || c["link"] != sv["ptr"] || sv["application_name"] != "pooled-one" ||
		sv["endpoint"] != "rw" || sv["backend"] == "" || sv["remote_pid"] == "0" || sv["port"] != strconv.Itoa(addrPort(t, cluster.Primary().Addr())) {
		t.Fatalf("client %v and its server %v", c, sv)
	}
	var pid string
	if err := app.QueryRow(context.Background(), "SELECT pg_backend_pid()::text").Scan(&pid); err != nil || pid != sv["remote_pid"] {
		t.Fatalf("backend pid %q (%v), SHOW SERVERS remote_pid %s", pid, err, sv["remote_pid"])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = app.Close(ctx)
	waitFor(t, 5*time.Second, "the server connection idle in the pool", func() bool {
		r := pair()
		return r["sv_idle"] == "1" && r["cl_active"] == "0" && r["sv_active"] == "0"
	})
	if s := show(t, admin, "SHOW SERVERS").where("database", pglocal.AppDB); len(s) != 1 || s[0]["state"] != "idle" || s[0]["link"] != "" {
		t.Fatalf("the idle server: %v", s)
	}
	db := show(t, admin, "SHOW DATABASES").where("name", pglocal.AppDB)
	if len(db) != 1 || db[0]["current_connections"] != "1" || db[0]["pool_mode"] != "session" || db[0]["paused"] != "0" {
		t.Fatalf("SHOW DATABASES: %v", db)
	}
	// PAUSE closes the idle connections of the database.
	mustExec(t, admin, "PAUSE app")
	if s := show(t, admin, "SHOW SERVERS").where("database", pglocal.AppDB); len(s) != 0 {
		t.Fatalf("servers of app after PAUSE: %v", s)
	}
	if db := show(t, admin, "SHOW DATABASES").where("name", pglocal.AppDB); db[0]["paused"] != "1" {
		t.Fatalf("SHOW DATABASES while paused: %v", db)
	}
	mustExec(t, admin, "RESUME app")
}

func addrPort(t *testing.T, addr string) int {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestConsolePauseHoldsAGreetedClient: a pooled client greeted from the
// pool's memory of its login holds no server connection until its first
// message; a PAUSE since then holds that message until RESUME.
func TestConsolePauseHoldsAGreetedClient(t *testing.T) {
	p := startConsoleProxy(t, proxy.Config{}, nil)
	admin := consoleConnect(t, p, router.RW, consoleAdmin)
	first := appConnect(t, p, router.RW, "application_name=greeted") // the same parameters: the same pool signature
	mustExec(t, first, "SELECT 1")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = first.Close(ctx)
	waitFor(t, 5*time.Second, "the first client's connection back in the pool", func() bool {
		s := show(t, admin, "SHOW SERVERS").where("database", pglocal.AppDB)
		return len(s) == 1 && s[0]["state"] == "idle"
	})
	greeted := appConnect(t, p, router.RW, "application_name=greeted")
	states := func() string {
		rows := show(t, admin, "SHOW CLIENTS").where("application_name", "greeted")
		if len(rows) != 1 {
			t.Fatalf("SHOW CLIENTS rows of the greeted client: %v", rows)
		}
		return rows[0]["state"]
	}
	if st := states(); st != "idle" {
		t.Fatalf("the greeted client before its first message is %q, want idle", st)
	}
	paused := execBackground(admin, "PAUSE app")
	if waiting, err := pending(paused, 3*time.Second); waiting || err != nil {
		t.Fatalf("PAUSE with only a greeted client: still waiting %v, err %v", waiting, err)
	}
	query := execBackground(greeted, "SELECT 1")
	if waiting, err := pending(query, 500*time.Millisecond); !waiting {
		t.Fatalf("the greeted client's first query ran during PAUSE: %v", err)
	}
	if st := states(); st != "waiting" {
		t.Fatalf("the greeted client held by PAUSE is %q, want waiting", st)
	}
	other := consoleConnect(t, p, router.RO, consoleAdmin)
	mustExec(t, other, "RESUME app")
	if waiting, err := pending(query, 5*time.Second); waiting || err != nil {
		t.Fatalf("the greeted client's query after RESUME: still waiting %v, err %v", waiting, err)
	}
}

// TestConsolePgBouncerExporter runs the queries of
// prometheus-community/pgbouncer_exporter (collector.go) and checks what it
// needs of the answers: the columns it maps, numbers where it makes
// gauges and counters, and label sets that do not repeat (a repeated one
// fails its whole scrape).
func TestConsolePgBouncerExporter(t *testing.T) {
	p := startConsoleProxy(t, proxy.Config{}, nil)
	app := appConnect(t, p, router.RW, "")
	mustExec(t, app, "SELECT 1")
	other := appConnect(t, p, router.RO, "dbname=postgres")
	mustExec(t, other, "SELECT 1")
	admin := consoleConnect(t, p, router.RW, consoleAdmin)
	mustExec(t, admin, "SHOW STATS") // its ping
	if r := show(t, admin, "SHOW VERSION;"); !slices.Equal(r.cols, []string{"version"}) || len(r.rows) != 1 {
		t.Fatalf("SHOW VERSION: %+v", r)
	}
	lists := show(t, admin, "SHOW LISTS;")
	if len(lists.cols) != 2 {
		t.Fatalf("SHOW LISTS: %+v", lists)
	}
	for _, row := range lists.rows {
		if _, err := strconv.ParseFloat(row[1], 64); err != nil {
			t.Fatalf("SHOW LISTS %s = %q", row[0], row[1])
		}
	}
	if r := show(t, admin, "SHOW CONFIG;"); len(r.cols) != 4 {
		t.Fatalf("SHOW CONFIG has %d columns", len(r.cols))
	}
	for _, ns := range []struct {
		query   string
		labels  []string
		numbers []string
	}{
		{"SHOW DATABASES;", []string{"name", "host", "port", "database", "force_user", "pool_mode"},
			[]string{"pool_size", "max_connections", "current_connections", "paused", "disabled"}},
		{"SHOW STATS_TOTALS;", []string{"database"},
			[]string{"query_count", "query_time", "bytes_received", "bytes_sent", "wait_time", "xact_count", "xact_time"}},
		{"SHOW POOLS;", []string{"database", "user"},
			[]string{"cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login", "maxwait"}},
	} {
		r := show(t, admin, ns.query)
		seen := map[string]bool{}
		for _, row := range r.rows {
			var key []string
			for _, l := range ns.labels {
				i := r.col(l)
				if i < 0 {
					t.Fatalf("%s lacks label column %s: %v", ns.query, l, r.cols)
				}
				key = append(key, row[i])
			}
			k := strings.Join(key, "\x00")
			if seen[k] {
				t.Fatalf("%s repeats the labels %q", ns.query, key)
			}
			seen[k] = true
			for _, n := range ns.numbers {
				i := r.col(n)
				if i < 0 {
					t.Fatalf("%s lacks %s: %v", ns.query, n, r.cols)
				}
				if _, err := strconv.ParseFloat(row[i], 64); err != nil {
					t.Fatalf("%s %s = %q", ns.query, n, row[i])
				}
			}
		}
		for _, db := range []string{pglocal.AppDB, "postgres"} {
			if !slices.ContainsFunc(r.rows, func(row []string) bool { return row[0] == db }) {
				t.Fatalf("%s has no row for %s: %+v", ns.query, db, r)
			}
		}
	}
}

// TestConsolePauseCanceled: a CancelRequest with the console's key (psql's
// Ctrl-C) stops a waiting PAUSE; the database stays paused.
func TestConsolePauseCanceled(t *testing.T) {
	p := startConsoleProxy(t, proxy.Config{}, nil)
	held := appConnect(t, p, router.RW, "")
	mustExec(t, held, "SELECT 1")
	admin := consoleConnect(t, p, router.RW, consoleAdmin)
	paused := execBackground(admin, "PAUSE app")
	if waiting, err := pending(paused, 500*time.Millisecond); !waiting {
		t.Fatalf("PAUSE returned (%v) while a client of app held its server connection", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := admin.PgConn().CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	waiting, err := pending(paused, 5*time.Second)
	var pe *pgconn.PgError
	if waiting || !errors.As(err, &pe) || pe.Code != "57014" ||
		pe.Message != `canceling statement due to user request (PAUSE stopped waiting; database "app" stays paused until RESUME)` {
		t.Fatalf("PAUSE after a CancelRequest: waiting %v, err %v", waiting, err)
	}
	if n := counter(p.Metrics.Cancels, metrics.CancelConsole); n != 1 {
		t.Fatalf("console cancels counted: %v", n)
	}
	if st := show(t, admin, "SHOW STATE").where("key", "paused_databases"); len(st) != 1 || st[0]["value"] != "app" {
		t.Fatalf("SHOW STATE after the canceled PAUSE: %v", st)
	}
	mustExec(t, held, "SELECT 1")
	mustExec(t, admin, "RESUME app")
}

// TestConsoleEndsWithTheDrain: a stopping proxy cuts an idle console with
// 57P01 at once, as any idle session.
func TestConsoleEndsWithTheDrain(t *testing.T) {
	p := startConsoleProxy(t, proxy.Config{DrainTimeout: 10 * time.Second}, nil)
	admin := consoleConnect(t, p, router.RW, consoleAdmin)
	mustExec(t, admin, "SHOW VERSION")
	start := time.Now()
	p.Stop(t)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the drain took %v with only a console open", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := admin.Exec(ctx, "SHOW VERSION")
	var pe *pgconn.PgError
	if err == nil || (errors.As(err, &pe) && pe.Code != "57P01") {
		t.Fatalf("console after the drain: %v", err)
	}
}

// TestConsoleBadMessages: malformed messages on the console, below what a
// driver sends. A FunctionCall is refused and the console goes on; a Query
// without its terminating zero, an unknown message type and a message over
// the console's limit end the session with FATAL 08P01.
func TestConsoleBadMessages(t *testing.T) {
	p := startConsoleProxy(t, proxy.Config{}, nil)
	msg := func(typ byte, body string) []byte {
		return append([]byte{typ, 0, 0, 0, byte(4 + len(body))}, body...)
	}
	open := func() *pgconn.HijackedConn {
		t.Helper()
		hj, err := consoleConnect(t, p, router.RW, consoleAdmin).PgConn().Hijack()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = hj.Conn.Close() })
		_ = hj.Conn.SetDeadline(time.Now().Add(10 * time.Second))
		return hj
	}
	receive := func(hj *pgconn.HijackedConn) pgproto3.BackendMessage {
		t.Helper()
		m, err := hj.Frontend.Receive()
		if err != nil {
			t.Fatalf("receive: %v", err)
		}
		return m
	}

	t.Run("a function call is refused and the console goes on", func(t *testing.T) {
		hj := open()
		if _, err := hj.Conn.Write(append(msg('F', "\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00"), msg('Q', "SHOW VERSION\x00")...)); err != nil {
			t.Fatal(err)
		}
		if e, ok := receive(hj).(*pgproto3.ErrorResponse); !ok || e.Severity != "ERROR" || e.Code != "0A000" ||
			e.Message != "pharos console: function calls are not supported" {
			t.Fatalf("after a FunctionCall: %#v", e)
		}
		if _, ok := receive(hj).(*pgproto3.ReadyForQuery); !ok {
			t.Fatal("no ReadyForQuery after the refused FunctionCall")
		}
		if rd, ok := receive(hj).(*pgproto3.RowDescription); !ok || string(rd.Fields[0].Name) != "version" {
			t.Fatalf("SHOW VERSION after the refused FunctionCall: %#v", rd)
		}
	})

	for name, tc := range map[string]struct {
		raw     []byte
		message string // "" for any
	}{
		"a Query without its terminating zero": {msg('Q', "SHOW VERSION"), "pharos: invalid Query message: no terminating zero byte"},
		"an unknown message type":              {msg('z', ""), `pharos: invalid frontend message type 'z'`},
		"a message over the console's limit":   {[]byte{'Q', 0, 2, 0, 0}, ""},
	} {
		t.Run(name+" ends the session", func(t *testing.T) {
			hj := open()
			if _, err := hj.Conn.Write(tc.raw); err != nil {
				t.Fatal(err)
			}
			e, ok := receive(hj).(*pgproto3.ErrorResponse)
			if !ok || e.Severity != "FATAL" || e.Code != "08P01" || (tc.message != "" && e.Message != tc.message) {
				t.Fatalf("got %#v, want FATAL 08P01 %q", e, tc.message)
			}
			if m, err := hj.Frontend.Receive(); err == nil {
				t.Fatalf("the session went on after the FATAL: %T", m)
			}
		})
	}
}
