package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pharos-ha/pharos/internal/pglocal"
)

// testDSN returns the PostgreSQL server the integration tests run against:
// $PHAROS_TEST_DSN when set, else a server of its own, stopped when the
// test ends.
func testDSN(t *testing.T) string {
	t.Helper()
	if dsn := os.Getenv("PHAROS_TEST_DSN"); dsn != "" {
		return dsn
	}
	return testCluster(t).Primary().DSN(pglocal.SuperUser, "", "postgres")
}

// testCluster starts a durable PostgreSQL (not pglocal's Fast mode, which
// loses acknowledged writes when stopped) and stops it when the test ends.
func testCluster(t *testing.T) *pglocal.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	c, err := pglocal.NewCluster(ctx, pglocal.Options{Logger: failoverLogger(t)})
	if err != nil {
		t.Fatalf("start PostgreSQL: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.Close(ctx); err != nil {
			t.Errorf("stop PostgreSQL: %v", err)
		}
	})
	return c
}

// benchSchemas creates two throwaway schemas on the server: one holding a
// small pgbench_accounts (aid 1..accounts), one empty. It drops both when
// the test ends.
func benchSchemas(t *testing.T, dsn string, accounts int) (withTable, empty string) {
	t.Helper()
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect to PHAROS_TEST_DSN: %v", err)
	}
	defer conn.Close(context.Background())
	base := fmt.Sprintf("pharos_bench_test_%x", rand.Uint32())
	withTable, empty = base, base+"_empty"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Errorf("cleanup: connect: %v", err)
			return
		}
		defer conn.Close(ctx)
		for _, s := range []string{withTable, empty} {
			if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+s+" CASCADE"); err != nil {
				t.Errorf("cleanup: drop schema %s: %v", s, err)
			}
		}
	})
	for _, sql := range []string{
		"CREATE SCHEMA " + empty,
		"CREATE SCHEMA " + withTable,
		"CREATE TABLE " + withTable + ".pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84))",
		"CREATE TABLE " + withTable + ".pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22))",
		fmt.Sprintf("INSERT INTO %s.pgbench_accounts SELECT g, 1, 0, '' FROM generate_series(1, %d) g", withTable, accounts),
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	return withTable, empty
}

// withSearchPath returns dsn with its search_path set to schema, for URL
// and key=value connection strings alike.
func withSearchPath(t *testing.T, dsn, schema string) string {
	t.Helper()
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatalf("parse PHAROS_TEST_DSN: %v", err)
		}
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return dsn + " search_path=" + schema
}

func TestThroughputAgainstPostgres(t *testing.T) {
	dsn := testDSN(t)
	const accounts = 1000
	schema, empty := benchSchemas(t, dsn, accounts)
	pgbench := withSearchPath(t, dsn, schema)

	base := func() Config {
		return Config{
			Targets:  []Target{{Name: "first", DSN: pgbench}, {Name: BaselineName, DSN: pgbench}},
			Modes:    []Mode{ModeSimple, ModeExtended},
			Clients:  []int{2},
			Duration: 500 * time.Millisecond,
			Rounds:   1,
			Accounts: accounts,
		}
	}

	t.Run("pgbench select-only, both modes, two targets", func(t *testing.T) {
		cfg := base()
		var runs []RunResult
		cfg.Progress = func(r RunResult) { runs = append(runs, r) }
		rep, err := Throughput(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if len(runs) != 4 {
			t.Fatalf("Progress saw %d runs, want 4 (2 modes × 2 targets): %+v", len(runs), runs)
		}
		for _, r := range runs {
			if r.Round != 1 || r.Transactions == 0 || r.Elapsed < cfg.Duration || r.Elapsed > cfg.Duration+time.Second {
				t.Errorf("run %+v: want round 1, transactions > 0, elapsed just over %v", r, cfg.Duration)
			}
		}
		if rep.Baseline != BaselineName || len(rep.Cases) != 2 {
			t.Fatalf("report baseline %q with %d cases, want %q and 2", rep.Baseline, len(rep.Cases), BaselineName)
		}
		for _, m := range rep.Cases {
			for _, tr := range m.Targets {
				if len(tr.RoundTPS) != 1 || tr.MedianTPS <= 0 || tr.Latency.Count() != tr.Transactions {
					t.Errorf("%s/%s: round tps %v, median %v, %d latencies for %d transactions",
						m.Mode, tr.Name, tr.RoundTPS, tr.MedianTPS, tr.Latency.Count(), tr.Transactions)
				}
				if p50 := tr.Latency.Quantile(0.5); p50 <= 0 || p50 > time.Second {
					t.Errorf("%s/%s: p50 %v, want between 0 and 1s", m.Mode, tr.Name, p50)
				}
			}
			if m.Targets[1].Ratio != 1 {
				t.Errorf("%s: baseline ratio %v, want 1", m.Mode, m.Targets[1].Ratio)
			}
		}
		var out strings.Builder
		if err := rep.WriteText(&out); err != nil {
			t.Fatal(err)
		}
		t.Logf("\n%s", out.String())
	})

	t.Run("write and connect workloads at two client counts", func(t *testing.T) {
		cfg := base()
		cfg.Targets = cfg.Targets[:1]
		cfg.Workloads = []Workload{WorkloadWrite, WorkloadConnect}
		cfg.Clients = []int{1, 3}
		cfg.Modes = []Mode{ModeSimple}
		conn, err := pgx.Connect(t.Context(), pgbench)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		sessions := func() int64 {
			var n int64
			if err := conn.QueryRow(t.Context(), "SELECT pg_stat_clear_snapshot(), sessions FROM pg_stat_database WHERE datname = current_database()").Scan(nil, &n); err != nil {
				t.Fatal(err)
			}
			return n
		}
		sessionsBefore := sessions()
		rep, err := Throughput(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Cases) != 4 {
			t.Fatalf("%d cases, want 4 (2 workloads × 2 client counts)", len(rep.Cases))
		}
		var writes, connects uint64
		for _, c := range rep.Cases {
			tr := c.Targets[0]
			if tr.Transactions == 0 || tr.Latency.Count() != tr.Transactions {
				t.Errorf("%s: %d transactions, %d latencies", c.Case, tr.Transactions, tr.Latency.Count())
			}
			switch c.Workload {
			case WorkloadWrite:
				writes += tr.Transactions
			case WorkloadConnect:
				connects += tr.Transactions
			}
		}
		// Every write transaction committed one history row, priming
		// included (one per client per run: 1 + 3), and, as pgbench's own
		// check has it, the balances moved by exactly the deltas logged.
		var rows, balance, deltas int64
		if err := conn.QueryRow(t.Context(),
			"SELECT (SELECT count(*) FROM pgbench_history), (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts), (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
		).Scan(&rows, &balance, &deltas); err != nil {
			t.Fatal(err)
		}
		if rows != int64(writes)+4 || balance != deltas {
			t.Errorf("history has %d rows for %d measured write transactions + 4 primed; balances sum to %d, deltas to %d", rows, writes, balance, deltas)
		}
		// Each connect transaction was a session of its own. The counter
		// is flushed as sessions end, so give it a moment.
		want := sessionsBefore + int64(connects)
		deadline := time.Now().Add(5 * time.Second)
		for got := sessions(); got < want; got = sessions() {
			if time.Now().After(deadline) {
				t.Fatalf("server counted %d new sessions, want at least %d (one per connect transaction)", got-sessionsBefore, connects)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	t.Run("custom query binds no parameters", func(t *testing.T) {
		cfg := base()
		cfg.Targets = cfg.Targets[:1]
		cfg.Query, cfg.Accounts = "SELECT 1", 0
		cfg.Warmup = 100 * time.Millisecond
		rep, err := Throughput(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Query != "SELECT 1" || rep.Cases[1].Targets[0].Transactions == 0 {
			t.Errorf("query %q, extended transactions %d", rep.Query, rep.Cases[1].Targets[0].Transactions)
		}
	})

	t.Run("missing pgbench table", func(t *testing.T) {
		cfg := base()
		cfg.Targets[1].DSN = withSearchPath(t, dsn, empty)
		_, err := Throughput(t.Context(), cfg)
		if !errors.Is(err, ErrNoPgbenchTable) || !strings.Contains(err.Error(), `"direct"`) {
			t.Fatalf("err = %v, want ErrNoPgbenchTable naming target \"direct\"", err)
		}
	})

	t.Run("fewer accounts than asked for", func(t *testing.T) {
		cfg := base()
		cfg.Accounts = accounts + 1
		_, err := Throughput(t.Context(), cfg)
		if err == nil || !strings.Contains(err.Error(), "short of the 1001 accounts") {
			t.Fatalf("err = %v, want the accounts shortfall", err)
		}
	})

	t.Run("a failing query aborts naming the target", func(t *testing.T) {
		cfg := base()
		cfg.Query = "SELECT no_such_column FROM pgbench_accounts"
		_, err := Throughput(t.Context(), cfg)
		if err == nil || !strings.Contains(err.Error(), `target "first" (select/simple/c2)`) || !strings.Contains(err.Error(), "no_such_column") {
			t.Fatalf("err = %v, want a failure of target \"first\" quoting the server error", err)
		}
	})

	t.Run("cancel stops a long run promptly", func(t *testing.T) {
		cfg := base()
		cfg.Duration = time.Minute
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(300*time.Millisecond, cancel)
		began := time.Now()
		_, err := Throughput(ctx, cfg)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		if took := time.Since(began); took > 5*time.Second {
			t.Fatalf("took %v to stop after cancel, want well under 5s", took)
		}
	})
}
