package proxy_test

// Real clients through the proxy: psql, pgbench and pgx in every protocol
// mode, COPY, LISTEN/NOTIFY, a large result, cancellation, authentication
// pass-through, the ro endpoint's read-only guarantee and protocol version
// negotiation. TLS towards clients and backends is in tls_test.go.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/proxy"
	"github.com/pharos-ha/pharos/router"
	"github.com/pharos-ha/pharos/wire"
)

// SQLSTATEs the tests expect from the server or the proxy.
const (
	codeQueryCanceled    = "57014"
	codeInvalidPassword  = "28P01"
	codeReadOnlySQLTx    = "25006"
	codeCannotConnectNow = "57P03"
)

// passwordFor returns the pglocal password of a role, "" for trust roles.
func passwordFor(user string) string {
	return map[string]string{
		pglocal.UserMD5:    pglocal.PasswordMD5,
		pglocal.UserSCRAM:  pglocal.PasswordSCRAM,
		pglocal.UserHealth: pglocal.PasswordHealth,
	}[user]
}

// libpqConnInfo is a libpq connection string for an endpoint of p without
// the password (libpq programs get it from PGPASSWORD).
func libpqConnInfo(p *testProxy, ep router.Endpoint, user, extra string) string {
	host, port, _ := net.SplitHostPort(p.Addr(ep).String())
	s := fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=disable connect_timeout=10", host, port, user, pglocal.AppDB)
	if extra != "" {
		s += " " + extra
	}
	return s
}

// clientEnv is the environment for psql and pgbench: the caller's PG*
// settings removed, the password given, messages untranslated.
func clientEnv(password string) []string {
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG")
	})
	env = append(env, "LC_ALL=C", "PGCONNECT_TIMEOUT=10", "PGPASSFILE="+os.DevNull)
	if password != "" {
		env = append(env, "PGPASSWORD="+password)
	}
	return env
}

// programRun is the outcome of one run of a client program.
type programRun struct {
	stdout, stderr string
	exitCode       int // -1 when it did not exit on its own
	err            error
}

func (r programRun) String() string {
	return fmt.Sprintf("exit %d (%v)\nstdout:\n%s\nstderr:\n%s", r.exitCode, r.err, r.stdout, r.stderr)
}

// runProgram runs a PostgreSQL client program to completion, killed after
// timeout.
func runProgram(t *testing.T, timeout time.Duration, password, name string, args ...string) programRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = clientEnv(password)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := programRun{stdout: stdout.String(), stderr: stderr.String(), exitCode: cmd.ProcessState.ExitCode(), err: err}
	if ctx.Err() != nil {
		t.Fatalf("%s did not finish within %v: %s", name, timeout, r)
	}
	return r
}

// psql runs one or more commands with psql through an endpoint of p.
func psql(t *testing.T, p *testProxy, ep router.Endpoint, user, extra string, commands ...string) programRun {
	t.Helper()
	args := []string{"-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", libpqConnInfo(p, ep, user, extra)}
	for _, c := range commands {
		args = append(args, "-c", c)
	}
	return runProgram(t, 15*time.Second, passwordFor(user), "psql", args...)
}

// connectConfig connects with pgx after letting adjust change the parsed
// configuration; the connection is closed when the test ends.
func connectConfig(t *testing.T, dsn string, adjust func(*pgx.ConnConfig)) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("parse %q: %v", dsn, err)
	}
	if adjust != nil {
		adjust(cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect %s: %v", dsn, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(ctx)
	})
	return conn
}

// superConnect opens a superuser connection straight to a server, not
// through the proxy, for looking at what the proxy did.
func superConnect(t *testing.T, in *pglocal.Instance, db string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := in.Connect(ctx, pglocal.SuperUser, "", db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(ctx)
	})
	return conn
}

// dropTablesAtEnd drops tables in the app database on the primary when the
// test ends, so the shared cluster stays clean whatever happened.
func dropTablesAtEnd(t *testing.T, tables ...string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := cluster.Primary().Connect(ctx, pglocal.SuperUser, "", pglocal.AppDB)
		if err != nil {
			t.Errorf("clean up: %v", err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP TABLE IF EXISTS "+strings.Join(tables, ", ")); err != nil {
			t.Errorf("clean up: %v", err)
		}
	})
}

// waitReplica waits until the shared replica has replayed everything the
// primary committed so far.
func waitReplica(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cluster.WaitReplicaCaughtUp(ctx, cluster.Replicas()[0]); err != nil {
		t.Fatal(err)
	}
}

// instanceFor is the server an endpoint of a default test proxy reaches.
func instanceFor(ep router.Endpoint) *pglocal.Instance {
	if ep == router.RO {
		return cluster.Replicas()[0]
	}
	return cluster.Primary()
}

// waitActive waits until pg_stat_activity on in shows a backend matching
// cond (a WHERE clause over pg_stat_activity with $1) running a statement.
func waitActive(t *testing.T, in *pglocal.Instance, cond string, arg any) {
	t.Helper()
	conn := superConnect(t, in, "postgres")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		var n int
		err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND "+cond, arg).Scan(&n)
		if err != nil {
			t.Fatalf("waiting for the statement to start on %s: %v", in.Name, err)
		}
		if n > 0 {
			return
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("statement never became active on %s", in.Name)
		}
	}
}

// sqlStateOf returns the SQLSTATE of a PostgreSQL error, "" for others.
func sqlStateOf(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func TestPsqlThroughBothEndpoints(t *testing.T) {
	p := startProxy(t, proxyOptions{})
	for _, tc := range []struct {
		name string
		ep   router.Endpoint
		want string
	}{
		{"rw reaches the writable primary", router.RW, "f|off|app_scram"},
		{"ro reaches the read-only replica", router.RO, "t|on|app_scram"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := psql(t, p, tc.ep, pglocal.UserSCRAM, "",
				"SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only'), current_user",
				"SELECT count(*) FROM generate_series(1, 1000)")
			if r.exitCode != 0 {
				t.Fatalf("psql failed: %s", r)
			}
			if got := strings.Fields(r.stdout); !slices.Equal(got, []string{tc.want, "1000"}) {
				t.Errorf("psql printed %q, want %q then 1000", got, tc.want)
			}
		})
	}
}

func TestPgbenchThroughProxy(t *testing.T) {
	p := startProxy(t, proxyOptions{})
	dropTablesAtEnd(t, "pgbench_accounts", "pgbench_branches", "pgbench_history", "pgbench_tellers")
	pgbench := func(t *testing.T, ep router.Endpoint, args ...string) programRun {
		t.Helper()
		host, port, _ := net.SplitHostPort(p.Addr(ep).String())
		args = append(args, "-h", host, "-p", port, "-U", pglocal.UserSCRAM, pglocal.AppDB)
		return runProgram(t, 60*time.Second, pglocal.PasswordSCRAM, "pgbench", args...)
	}
	// Steps depend on each other: each stops the test on failure.
	if r := pgbench(t, router.RW, "-i", "-s", "1", "-q"); r.exitCode != 0 {
		t.Fatalf("pgbench -i through rw: %s", r)
	}
	waitReplica(t)
	for _, tc := range []struct {
		name string
		ep   router.Endpoint
		args []string
	}{
		// -n: no VACUUM before the run, which a hot standby refuses.
		{"select-only on ro", router.RO, []string{"-n", "-S", "-T", "2", "-c", "4"}},
		{"tpcb-like on rw", router.RW, []string{"-T", "2", "-c", "4"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := pgbench(t, tc.ep, tc.args...)
			if r.exitCode != 0 {
				t.Fatalf("pgbench failed: %s", r)
			}
			if !strings.Contains(r.stdout, "number of failed transactions: 0 ") {
				t.Errorf("pgbench reported failed transactions or none at all: %s", r)
			}
			if !strings.Contains(r.stdout, "number of transactions actually processed: ") {
				t.Errorf("pgbench reported no processed transactions: %s", r)
			}
		})
	}
	if r := pgbench(t, router.RW, "-i", "-I", "d"); r.exitCode != 0 {
		t.Errorf("pgbench -i -I d (drop tables) through rw: %s", r)
	}
}

func TestQueryExecModes(t *testing.T) {
	p := startProxy(t, proxyOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, mode := range []pgx.QueryExecMode{
		pgx.QueryExecModeSimpleProtocol,
		pgx.QueryExecModeExec,
		pgx.QueryExecModeDescribeExec,
		pgx.QueryExecModeCacheDescribe,
		pgx.QueryExecModeCacheStatement,
	} {
		for _, ep := range []router.Endpoint{router.RW, router.RO} {
			t.Run(fmt.Sprintf("%s on %s", mode, ep), func(t *testing.T) {
				conn := connectConfig(t, p.DSN(ep, pglocal.UserSCRAM, ""), func(cfg *pgx.ConnConfig) {
					cfg.DefaultQueryExecMode = mode
				})
				for i := range 200 {
					var n int
					var s string
					if err := conn.QueryRow(ctx, "SELECT $1::int * 2, $2::text || '!'", i, "it's").Scan(&n, &s); err != nil {
						t.Fatalf("query %d: %v", i, err)
					}
					if n != 2*i || s != "it's!" {
						t.Fatalf("query %d returned %d, %q", i, n, s)
					}
				}
				// Only cache_statement leaves named statements on the server:
				// the mode really is in effect.
				var named int
				if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_prepared_statements").Scan(&named); err != nil {
					t.Fatal(err)
				}
				if want := mode == pgx.QueryExecModeCacheStatement; (named > 0) != want {
					t.Errorf("%d named statements on the server, want some: %v", named, want)
				}
				// An error mid-stream leaves the session usable.
				if _, err := conn.Exec(ctx, "SELECT 1/0"); sqlStateOf(err) != "22012" {
					t.Fatalf("division by zero gave %v, want SQLSTATE 22012", err)
				}
				var one int
				if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
					t.Fatalf("after an error: %d, %v", one, err)
				}
			})
		}
	}
	t.Run("simple protocol runs several statements in one query", func(t *testing.T) {
		conn := p.connect(t, router.RW, pglocal.UserSCRAM, "default_query_exec_mode=simple_protocol")
		dropTablesAtEnd(t, "clients_multi")
		if _, err := conn.Exec(ctx, "CREATE TABLE clients_multi (n int); INSERT INTO clients_multi SELECT generate_series(1, 10); DELETE FROM clients_multi WHERE n > 7"); err != nil {
			t.Fatal(err)
		}
		var sum int
		if err := conn.QueryRow(ctx, "SELECT sum(n) FROM clients_multi").Scan(&sum); err != nil || sum != 28 {
			t.Fatalf("sum %d, %v; want 28", sum, err)
		}
	})
}

func TestPreparedStatements(t *testing.T) {
	p := startProxy(t, proxyOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, ep := range []router.Endpoint{router.RW, router.RO} {
		t.Run(ep.String(), func(t *testing.T) {
			conn := p.connect(t, ep, pglocal.UserMD5, "")
			sd, err := conn.Prepare(ctx, "clients_square", "SELECT $1::bigint * $1::bigint, pg_backend_pid()")
			if err != nil {
				t.Fatal(err)
			}
			if len(sd.ParamOIDs) != 1 || len(sd.Fields) != 2 {
				t.Fatalf("statement description: %d params, %d fields", len(sd.ParamOIDs), len(sd.Fields))
			}
			var firstPID int32
			for i := range int64(1000) {
				var sq int64
				var pid int32
				if err := conn.QueryRow(ctx, "clients_square", i).Scan(&sq, &pid); err != nil {
					t.Fatalf("execution %d: %v", i, err)
				}
				if sq != i*i {
					t.Fatalf("execution %d returned %d", i, sq)
				}
				if i == 0 {
					firstPID = pid
				} else if pid != firstPID {
					t.Fatalf("execution %d ran on backend %d, the first on %d", i, pid, firstPID)
				}
			}
			if err := conn.Deallocate(ctx, "clients_square"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestCopyThroughProxy(t *testing.T) {
	p := startProxy(t, proxyOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dropTablesAtEnd(t, "clients_copy")
	const rows = 10000
	rw := p.connect(t, router.RW, pglocal.UserSCRAM, "")
	if _, err := rw.Exec(ctx, "CREATE TABLE clients_copy (id int PRIMARY KEY, payload text NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	n, err := rw.CopyFrom(ctx, pgx.Identifier{"clients_copy"}, []string{"id", "payload"},
		pgx.CopyFromFunc(func() func() ([]any, error) {
			i := 0
			return func() ([]any, error) {
				if i == rows {
					return nil, nil
				}
				i++
				return []any{i, fmt.Sprintf("row %d\twith a tab", i)}, nil
			}
		}()))
	if err != nil || n != rows {
		t.Fatalf("CopyFrom: %d rows, %v", n, err)
	}
	waitReplica(t)
	for _, ep := range []router.Endpoint{router.RW, router.RO} {
		t.Run("copy to stdout on "+ep.String(), func(t *testing.T) {
			conn := p.connect(t, ep, pglocal.UserSCRAM, "")
			var buf bytes.Buffer
			tag, err := conn.PgConn().CopyTo(ctx, &buf, "COPY clients_copy TO STDOUT")
			if err != nil {
				t.Fatal(err)
			}
			if tag.RowsAffected() != rows {
				t.Errorf("command tag %q, want %d rows", tag, rows)
			}
			lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
			if len(lines) != rows {
				t.Fatalf("%d lines, want %d", len(lines), rows)
			}
			for _, i := range []int{1, rows / 2, rows} {
				if want := fmt.Sprintf("%d\trow %d\\twith a tab", i, i); !slices.Contains(lines, want) {
					t.Errorf("no line %q among %q...", want, lines[:3])
				}
			}
		})
	}
	t.Run("copy from stdin refused on ro", func(t *testing.T) {
		conn := p.connect(t, router.RO, pglocal.UserSCRAM, "")
		_, err := conn.PgConn().CopyFrom(ctx, strings.NewReader("1\tx\n"), "COPY clients_copy FROM STDIN")
		if got := sqlStateOf(err); got != codeReadOnlySQLTx {
			t.Fatalf("COPY FROM on ro: %v (SQLSTATE %q), want %s", err, got, codeReadOnlySQLTx)
		}
		var one int
		if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatalf("session unusable after the refused COPY: %v", err)
		}
	})
}

func TestListenNotify(t *testing.T) {
	p := startProxy(t, proxyOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	listener := p.connect(t, router.RW, pglocal.UserSCRAM, "")
	notifier := p.connect(t, router.RW, pglocal.UserTrust, "")
	if _, err := listener.Exec(ctx, "LISTEN clients_channel"); err != nil {
		t.Fatal(err)
	}
	payloads := []string{"first", strings.Repeat("p", 7000)}
	for _, pl := range payloads {
		if _, err := notifier.Exec(ctx, "SELECT pg_notify('clients_channel', $1)", pl); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range payloads {
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		n, err := listener.WaitForNotification(wctx)
		wcancel()
		if err != nil {
			t.Fatalf("waiting for notification: %v", err)
		}
		if n.Channel != "clients_channel" || n.Payload != want || n.PID != notifier.PgConn().PID() {
			t.Errorf("notification on %q from pid %d with a %d-byte payload; want %q from %d with %d bytes",
				n.Channel, n.PID, len(n.Payload), "clients_channel", notifier.PgConn().PID(), len(want))
		}
	}
}

func TestLargeResultStreams(t *testing.T) {
	p := startProxy(t, proxyOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn := p.connect(t, router.RW, pglocal.UserSCRAM, "")
	const rowLen, nRows = 1 << 20, 100
	rows, err := conn.Query(ctx, "SELECT repeat('x', $1::int) FROM generate_series(1, $2::int)", rowLen, nRows)
	if err != nil {
		t.Fatal(err)
	}
	total, count := 0, 0
	for rows.Next() {
		// RawValues aliases pgx's read buffer: nothing accumulates.
		v := rows.RawValues()[0]
		if len(v) != rowLen || v[0] != 'x' || v[len(v)-1] != 'x' {
			t.Fatalf("row %d: %d bytes", count, len(v))
		}
		total += len(v)
		count++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if count != nRows || total != nRows*rowLen {
		t.Fatalf("%d rows, %d bytes; want %d rows, %d bytes", count, total, nRows, nRows*rowLen)
	}
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("after the large result: %v", err)
	}
}

// cancelByRequest makes pgx answer a cancelled context with a CancelRequest
// (through the connection's own address: the proxy endpoint) and give the
// server 10 s before falling back to cutting the connection.
func cancelByRequest(cfg *pgx.ConnConfig) {
	cfg.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: 10 * time.Second}
	}
}

// sleepUntilCancelled runs pg_sleep(30) on conn, calls cancel (with the
// function that cancels the query's context) once the server shows it
// running, and returns the query's error.
func sleepUntilCancelled(t *testing.T, conn *pgx.Conn, in *pglocal.Instance, cancel func(cancelQuery func())) error {
	t.Helper()
	qctx, qcancel := context.WithCancel(context.Background())
	defer qcancel()
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(qctx, "SELECT pg_sleep(30)")
		done <- err
	}()
	waitActive(t, in, "pid = $1 AND query LIKE '%pg_sleep%'", int32(conn.PgConn().PID()))
	cancel(qcancel)
	select {
	case err := <-done:
		return err
	case <-time.After(20 * time.Second):
		qcancel()
		<-done
		t.Fatal("pg_sleep(30) not cancelled within 20s")
		return nil
	}
}

func checkCancelled(t *testing.T, conn *pgx.Conn, err error) {
	t.Helper()
	if got := sqlStateOf(err); got != codeQueryCanceled {
		t.Fatalf("pg_sleep ended with %v (SQLSTATE %q), want %s", err, got, codeQueryCanceled)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var n int
	if err := conn.QueryRow(ctx, "SELECT 41 + 1").Scan(&n); err != nil || n != 42 {
		t.Fatalf("session unusable after the cancel: %d, %v", n, err)
	}
}

func TestCancelByContext(t *testing.T) {
	p := startProxy(t, proxyOptions{})
	for _, ep := range []router.Endpoint{router.RW, router.RO} {
		t.Run(ep.String(), func(t *testing.T) {
			conn := connectConfig(t, p.DSN(ep, pglocal.UserSCRAM, ""), cancelByRequest)
			before := counter(p.Metrics.Cancels, metrics.CancelForwarded)
			err := sleepUntilCancelled(t, conn, instanceFor(ep), func(cancelQuery func()) { cancelQuery() })
			checkCancelled(t, conn, err)
			if got := counter(p.Metrics.Cancels, metrics.CancelForwarded) - before; got != 1 {
				t.Errorf("%v cancel requests forwarded, want 1", got)
			}
		})
	}
}

// sendCancel writes a CancelRequest to addr and waits until the proxy
// closes the connection, which it does once the server has taken it.
func sendCancel(t *testing.T, addr string, pid uint32, key []byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(wire.AppendCancelRequest(nil, pid, key)); err != nil {
		t.Fatal(err)
	}
	if n, err := io.Copy(io.Discard, c); err != nil || n != 0 {
		t.Fatalf("after the CancelRequest: %d bytes, %v; want a plain close", n, err)
	}
}

func TestCancelRequestOnTheOtherEndpoint(t *testing.T) {
	p := startProxy(t, proxyOptions{})
	for _, tc := range []struct {
		name           string
		session, other router.Endpoint
	}{
		{"rw session cancelled through the ro listener", router.RW, router.RO},
		{"ro session cancelled through the rw listener", router.RO, router.RW},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := p.connect(t, tc.session, pglocal.UserSCRAM, "")
			pid, key := conn.PgConn().PID(), slices.Clone(conn.PgConn().SecretKey())
			if len(key) == 0 {
				t.Fatal("pgx exposes no secret key")
			}
			otherAddr := p.Addr(tc.other).String()
			unknown := counter(p.Metrics.Cancels, metrics.CancelUnknown)
			forwarded := counter(p.Metrics.Cancels, metrics.CancelForwarded)
			err := sleepUntilCancelled(t, conn, instanceFor(tc.session), func(func()) {
				// A wrong key must cancel nothing; the right one must.
				wrong := slices.Clone(key)
				wrong[0] ^= 0xff
				sendCancel(t, otherAddr, pid, wrong)
				waitActive(t, instanceFor(tc.session), "pid = $1 AND query LIKE '%pg_sleep%'", int32(pid))
				sendCancel(t, otherAddr, pid, key)
			})
			checkCancelled(t, conn, err)
			if got := counter(p.Metrics.Cancels, metrics.CancelUnknown) - unknown; got != 1 {
				t.Errorf("%v cancel requests counted unknown, want 1", got)
			}
			if got := counter(p.Metrics.Cancels, metrics.CancelForwarded) - forwarded; got != 1 {
				t.Errorf("%v cancel requests forwarded, want 1", got)
			}
		})
	}
}

func TestPsqlCancelOnInterrupt(t *testing.T) {
	p := startProxy(t, proxyOptions{})
	for _, ep := range []router.Endpoint{router.RW, router.RO} {
		t.Run(ep.String(), func(t *testing.T) {
			app := "clients_psql_cancel_" + ep.String()
			ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, "psql", "-X", "-d", libpqConnInfo(p, ep, pglocal.UserSCRAM, "application_name="+app),
				"-c", "select pg_sleep(30)")
			cmd.Env = clientEnv(pglocal.PasswordSCRAM)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			waited := make(chan error, 1)
			go func() { waited <- cmd.Wait() }()
			waitActive(t, instanceFor(ep), "application_name = $1 AND query LIKE '%pg_sleep%'", app)
			if err := cmd.Process.Signal(os.Interrupt); err != nil {
				t.Fatal(err)
			}
			err := <-waited // bounded by ctx: killed after 25 s
			if ctx.Err() != nil {
				t.Fatalf("psql did not end within 25s of starting; stderr:\n%s", stderr.String())
			}
			if err == nil || cmd.ProcessState.ExitCode() == 0 {
				t.Errorf("psql exited with %v, want a non-zero status", err)
			}
			if !strings.Contains(stderr.String(), "canceling statement due to user request") {
				t.Errorf("psql stderr:\n%s\nwant the server's cancel message", stderr.String())
			}
		})
	}
}

func TestAuthenticationPassesThrough(t *testing.T) {
	p := startProxy(t, proxyOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name string
		user string
	}{
		{"trust", pglocal.UserTrust},
		{"md5", pglocal.UserMD5},
		{"scram-sha-256", pglocal.UserSCRAM},
	} {
		for _, ep := range []router.Endpoint{router.RW, router.RO} {
			t.Run(tc.name+" on "+ep.String(), func(t *testing.T) {
				conn := p.connect(t, ep, tc.user, "")
				var user string
				if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&user); err != nil || user != tc.user {
					t.Fatalf("current_user %q, %v; want %q", user, err, tc.user)
				}
			})
		}
	}
	for _, tc := range []struct {
		name string
		user string
	}{
		{"wrong md5 password", pglocal.UserMD5},
		{"wrong scram password", pglocal.UserSCRAM},
	} {
		want := fmt.Sprintf("password authentication failed for user %q", tc.user)
		t.Run(tc.name+" with pgx", func(t *testing.T) {
			cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
			defer ccancel()
			conn, err := pgx.Connect(cctx, p.DSN(router.RW, tc.user, "password=wrong-secret"))
			if err == nil {
				_ = conn.Close(cctx)
				t.Fatal("connected with a wrong password")
			}
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != codeInvalidPassword || pe.Severity != "FATAL" || pe.Message != want {
				t.Fatalf("got %v, want FATAL %s %q from the server", err, codeInvalidPassword, want)
			}
		})
		t.Run(tc.name+" with psql", func(t *testing.T) {
			args := []string{"-X", "-w", "-d", libpqConnInfo(p, router.RO, tc.user, ""), "-c", "SELECT 1"}
			r := runProgram(t, 15*time.Second, "wrong-secret", "psql", args...)
			if r.exitCode != 2 || !strings.Contains(r.stderr, "FATAL:  "+want) {
				t.Fatalf("%s\nwant exit 2 and FATAL:  %s", r, want)
			}
		})
	}
}

func TestWriteOnROIsRefused(t *testing.T) {
	replicaProxy := startProxy(t, proxyOptions{})
	fallbackProxy := startProxy(t, proxyOptions{
		Backends: []*pglocal.Instance{cluster.Primary()},
		Router:   router.Config{ROFallbackToPrimary: true},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dropTablesAtEnd(t, "clients_ro_probe")
	for _, tc := range []struct {
		name         string
		p            *testProxy
		extra        string
		wantRecovery bool
	}{
		{"replica", replicaProxy, "", true},
		{"replica, client asks for read-write in options", replicaProxy, "options='-c default_transaction_read_only=off'", true},
		{"primary fallback", fallbackProxy, "", false},
		{"primary fallback, client asks for read-write in options", fallbackProxy, "options='-c default_transaction_read_only=off'", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := tc.p.connect(t, router.RO, pglocal.UserSCRAM, tc.extra)
			var inRecovery bool
			if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
				t.Fatal(err)
			}
			if inRecovery != tc.wantRecovery {
				t.Fatalf("ro session in recovery: %v, want %v", inRecovery, tc.wantRecovery)
			}
			_, err := conn.Exec(ctx, "CREATE TABLE clients_ro_probe (id int)")
			if got := sqlStateOf(err); got != codeReadOnlySQLTx {
				t.Fatalf("CREATE TABLE on ro: %v (SQLSTATE %q), want %s", err, got, codeReadOnlySQLTx)
			}
			var one int
			if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
				t.Fatalf("session unusable after the refused write: %v", err)
			}
		})
	}
}

func TestROWithoutReplicaIsRefused(t *testing.T) {
	p := startProxy(t, proxyOptions{
		Backends: []*pglocal.Instance{cluster.Primary()},
		Config:   proxy.Config{RouteWait: 200 * time.Millisecond},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.DSN(router.RO, pglocal.UserSCRAM, ""))
	if err == nil {
		_ = conn.Close(ctx)
		t.Fatal("ro connected without any replica")
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != codeCannotConnectNow || pe.Severity != "FATAL" {
		t.Fatalf("got %v, want FATAL %s", err, codeCannotConnectNow)
	}
	if !strings.Contains(pe.Message, "no replica is available") {
		t.Errorf("message %q does not say that no replica is available", pe.Message)
	}
	// rw is unaffected.
	rw := p.connect(t, router.RW, pglocal.UserSCRAM, "")
	if _, err := rw.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
}

func TestProtocolVersionNegotiation(t *testing.T) {
	p := startProxy(t, proxyOptions{})
	for _, tc := range []struct {
		name        string
		version     uint32
		extra       []wire.Param
		wantNegoOpt []string // nil: no NegotiateProtocolVersion expected
	}{
		{"3.0 gets no negotiation", 3<<16 | 0, nil, nil},
		{"3.2 is negotiated down to 3.0", 3<<16 | 2, nil, []string{}},
		{"unknown minor 3.9 is negotiated down to 3.0", 3<<16 | 9, nil, []string{}},
		{"unknown _pq_ option is reported", 3<<16 | 0, []wire.Param{{Name: "_pq_.pharos_test", Value: "1"}}, []string{"_pq_.pharos_test"}},
	} {
		for _, ep := range []router.Endpoint{router.RW, router.RO} {
			t.Run(tc.name+" on "+ep.String(), func(t *testing.T) {
				c, err := net.DialTimeout("tcp", p.Addr(ep).String(), 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				params := append([]wire.Param{{Name: "user", Value: pglocal.UserTrust}, {Name: "database", Value: pglocal.AppDB}}, tc.extra...)
				startup, err := wire.AppendStartupMessage(nil, tc.version, params)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := c.Write(startup); err != nil {
					t.Fatal(err)
				}
				fe := pgproto3.NewFrontend(c, c)
				var nego *pgproto3.NegotiateProtocolVersion
				var sawAuthOK, sawKey bool
			startup:
				for {
					msg, err := fe.Receive()
					if err != nil {
						t.Fatalf("during startup: %v", err)
					}
					switch m := msg.(type) {
					case *pgproto3.NegotiateProtocolVersion:
						if sawAuthOK || nego != nil {
							t.Fatal("NegotiateProtocolVersion out of place")
						}
						nego = &pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: m.NewestMinorProtocol, UnrecognizedOptions: slices.Clone(m.UnrecognizedOptions)}
					case *pgproto3.AuthenticationOk:
						sawAuthOK = true
					case *pgproto3.BackendKeyData:
						sawKey = true
					case *pgproto3.ErrorResponse:
						t.Fatalf("server refused: %s %s", m.Code, m.Message)
					case *pgproto3.ReadyForQuery:
						break startup
					}
				}
				switch {
				case tc.wantNegoOpt == nil && nego != nil:
					t.Errorf("unexpected NegotiateProtocolVersion %+v", nego)
				case tc.wantNegoOpt != nil && nego == nil:
					t.Errorf("no NegotiateProtocolVersion passed through")
				case nego != nil && (nego.NewestMinorProtocol != 3<<16 || !slices.Equal(nego.UnrecognizedOptions, tc.wantNegoOpt)):
					// The field carries the whole version, as the server sends it.
					t.Errorf("NegotiateProtocolVersion %+v, want version 3.0 (196608) and options %q", nego, tc.wantNegoOpt)
				}
				if !sawAuthOK || !sawKey {
					t.Errorf("AuthenticationOk seen %v, BackendKeyData seen %v", sawAuthOK, sawKey)
				}

				fe.Send(&pgproto3.Query{String: "SELECT current_user, 40 + 2"})
				if err := fe.Flush(); err != nil {
					t.Fatal(err)
				}
				var row []string
				for done := false; !done; {
					msg, err := fe.Receive()
					if err != nil {
						t.Fatalf("during the query: %v", err)
					}
					switch m := msg.(type) {
					case *pgproto3.DataRow:
						for _, v := range m.Values {
							row = append(row, string(v))
						}
					case *pgproto3.ErrorResponse:
						t.Fatalf("query failed: %s %s", m.Code, m.Message)
					case *pgproto3.ReadyForQuery:
						done = true
					}
				}
				if !slices.Equal(row, []string{pglocal.UserTrust, "42"}) {
					t.Errorf("row %q", row)
				}
				fe.Send(&pgproto3.Terminate{})
				_ = fe.Flush()
			})
		}
	}
	t.Run("pgx asking for 3.2", func(t *testing.T) {
		conn := p.connect(t, router.RW, pglocal.UserSCRAM, "max_protocol_version=3.2")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var n int
		if err := conn.QueryRow(ctx, "SELECT $1::int", 7).Scan(&n); err != nil || n != 7 {
			t.Fatalf("%d, %v", n, err)
		}
	})
}
