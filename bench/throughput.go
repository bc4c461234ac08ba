package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
)

// PgbenchQuery is the default workload: pgbench's built-in select-only
// transaction (pgbench -S), with aid drawn uniformly from [1, accounts].
const PgbenchQuery = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"

// ErrNoPgbenchTable reports a target without the pgbench_accounts table the
// default workload reads.
var ErrNoPgbenchTable = errors.New(`table pgbench_accounts not found (create it with "pgbench -i")`)

const (
	// defaultConnectTimeout bounds each connection attempt when the DSN
	// sets no connect_timeout.
	defaultConnectTimeout = 10 * time.Second
	// overrunLimit is how long a query may still run after its run's
	// measured window has ended before the run fails.
	overrunLimit = 10 * time.Second
	// closeTimeout bounds the polite close (Terminate) of each connection,
	// also after the caller's context was cancelled.
	closeTimeout = 2 * time.Second
)

// Config describes a throughput benchmark.
type Config struct {
	Targets []Target // at least one; the baseline is chosen by BaselineIndex
	// Workloads, Clients and Modes span the cases: every combination is
	// one case, run in this nesting order (workload, then client count,
	// then mode) within each round. Empty Workloads means select only.
	Workloads []Workload
	Clients   []int // connections per run, one goroutine each
	Modes     []Mode
	Duration  time.Duration
	Rounds    int
	// Warmup is the length of one unmeasured run per target, in the first
	// case, before round 1. Zero skips it.
	Warmup time.Duration

	// Query is the SQL the select and connect workloads run, with no
	// parameters. Empty means pgbench's select-only query, PgbenchQuery,
	// with a random aid in [1, Accounts], after checking that every
	// target's pgbench_accounts reaches that aid. The write workload
	// always runs pgbench's simple-update transaction on the pgbench
	// tables and so needs Accounts.
	Query    string
	Accounts int

	// Progress, if non-nil, is called after each run (the warm-up runs
	// included, with Round 0) on the goroutine that called Throughput. Nil
	// means no progress is reported.
	Progress func(RunResult)
}

// Case is one combination of workload, client count and protocol mode.
type Case struct {
	Workload Workload
	Clients  int
	Mode     Mode
}

func (c Case) String() string {
	return fmt.Sprintf("%s/%s/c%d", c.Workload, c.Mode, c.Clients)
}

// Cases lists the cases cfg spans, in the order each round runs them.
func (c *Config) Cases() []Case {
	var out []Case
	for _, w := range c.workloads() {
		for _, n := range c.Clients {
			for _, m := range c.Modes {
				out = append(out, Case{Workload: w, Clients: n, Mode: m})
			}
		}
	}
	return out
}

func (c *Config) workloads() []Workload {
	if len(c.Workloads) == 0 {
		return []Workload{WorkloadSelect}
	}
	return c.Workloads
}

// RunResult is what one run (one target, one case, one round) measured.
type RunResult struct {
	Target string
	Case
	Round        int // 1-based; 0 for the warm-up
	Transactions uint64
	Elapsed      time.Duration // start barrier to the end of the last transaction
	TPS          float64
}

func (c *Config) validate() error {
	if len(c.Targets) == 0 {
		return errors.New("no targets")
	}
	seen := make(map[string]bool)
	for _, t := range c.Targets {
		if seen[t.Name] {
			return fmt.Errorf("target %q given twice", t.Name)
		}
		seen[t.Name] = true
	}
	if len(c.Modes) == 0 {
		return errors.New("no modes")
	}
	for _, m := range c.Modes {
		if m != ModeSimple && m != ModeExtended {
			return fmt.Errorf("unknown mode %q", m)
		}
	}
	if len(c.Clients) == 0 {
		return errors.New("no client counts")
	}
	for _, n := range c.Clients {
		if n < 1 || n > MaxClients {
			return fmt.Errorf("clients %d: want 1 to %d", n, MaxClients)
		}
	}
	needAccounts := c.Query == ""
	for _, w := range c.workloads() {
		switch w {
		case WorkloadSelect, WorkloadConnect:
		case WorkloadWrite:
			needAccounts = true
		default:
			return fmt.Errorf("unknown workload %q", w)
		}
	}
	switch {
	case c.Duration <= 0:
		return fmt.Errorf("duration %s: want more than 0", c.Duration)
	case c.Rounds < 1:
		return fmt.Errorf("rounds %d: want at least 1", c.Rounds)
	case c.Warmup < 0:
		return fmt.Errorf("warmup %s: want 0 or more", c.Warmup)
	case needAccounts && (c.Accounts < 1 || c.Accounts > math.MaxInt32):
		return fmt.Errorf("accounts %d: want 1 to %d (the pgbench workloads need it)", c.Accounts, math.MaxInt32)
	}
	return nil
}

// Throughput runs the benchmark described by cfg and returns its report.
// Every target is checked (connected to and, for the pgbench workloads,
// inspected) before anything is measured. The first failing run aborts the
// benchmark with an error naming the target. When ctx is cancelled it
// stops promptly, closes its connections and returns ctx's error.
func Throughput(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	e := &engine{cfg: cfg, query: cfg.Query, accounts: cfg.Accounts}
	if e.query == "" {
		e.query = PgbenchQuery
		e.bindAid = true
	}
	for _, w := range cfg.workloads() {
		e.needWriteTables = e.needWriteTables || w == WorkloadWrite
	}
	for _, t := range cfg.Targets {
		cc, err := pgx.ParseConfig(t.DSN)
		if err != nil {
			return nil, fmt.Errorf("target %q: %w", t.Name, err)
		}
		if cc.ConnectTimeout == 0 {
			cc.ConnectTimeout = defaultConnectTimeout
		}
		e.targets = append(e.targets, target{name: t.Name, conn: cc})
	}
	for range slices.Max(cfg.Clients) {
		e.hists = append(e.hists, NewHistogram())
	}

	for i := range e.targets {
		if err := e.preflight(ctx, &e.targets[i]); err != nil {
			return nil, stopped(ctx, err)
		}
	}
	cases := cfg.Cases()
	if cfg.Warmup > 0 {
		for i := range e.targets {
			r, err := e.run(ctx, &e.targets[i], cases[0], cfg.Warmup, nil)
			if err != nil {
				return nil, stopped(ctx, fmt.Errorf("warm-up: %w", err))
			}
			e.progress(r)
		}
	}

	rep := &Report{
		Started:  time.Now(),
		Duration: cfg.Duration,
		Rounds:   cfg.Rounds,
		Warmup:   cfg.Warmup,
		Query:    e.query,
		Baseline: cfg.Targets[BaselineIndex(cfg.Targets)].Name,
	}
	for _, c := range cases {
		cr := CaseResult{Case: c}
		for _, t := range cfg.Targets {
			cr.Targets = append(cr.Targets, TargetResult{Name: t.Name, Latency: NewHistogram()})
		}
		rep.Cases = append(rep.Cases, cr)
	}
	for round := range cfg.Rounds {
		for ci, c := range cases {
			for _, ti := range Rotation(len(e.targets), round) {
				tr := &rep.Cases[ci].Targets[ti]
				r, err := e.run(ctx, &e.targets[ti], c, cfg.Duration, tr.Latency)
				if err != nil {
					return nil, stopped(ctx, fmt.Errorf("round %d: %w", round+1, err))
				}
				r.Round = round + 1
				tr.RoundTPS = append(tr.RoundTPS, r.TPS)
				tr.Transactions += r.Transactions
				e.progress(r)
			}
		}
	}
	for i := range rep.Cases {
		rep.Cases[i].summarize(BaselineIndex(cfg.Targets))
	}
	return rep, nil
}

// stopped returns ctx's error instead of err once ctx is done, so a
// Ctrl-C reads as a cancellation and not as a failing target.
func stopped(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

type target struct {
	name string
	conn *pgx.ConnConfig // as parsed; copied per client with its mode
}

// engine runs the benchmark. It is used by one goroutine; the clients of a
// run only touch their own histogram and result slot.
type engine struct {
	cfg             Config
	query           string // of the select and connect workloads
	bindAid         bool   // query takes a random aid in [1, accounts] as $1
	accounts        int
	needWriteTables bool
	targets         []target
	hists           []*Histogram // one per client, reused by every run
}

func (e *engine) progress(r RunResult) {
	if e.cfg.Progress != nil {
		e.cfg.Progress(r)
	}
}

// preflight connects to t once and, for the pgbench workloads, checks that
// the tables exist and that pgbench_accounts reaches the highest aid the
// clients will ask for.
func (e *engine) preflight(ctx context.Context, t *target) error {
	conn, err := pgx.ConnectConfig(ctx, t.conn)
	if err != nil {
		return fmt.Errorf("target %q: connect: %w", t.name, err)
	}
	defer closeConn(ctx, conn)
	if !e.bindAid && !e.needWriteTables {
		return nil
	}
	tables := []string{"pgbench_accounts"}
	if e.needWriteTables {
		tables = append(tables, "pgbench_history")
	}
	for _, table := range tables {
		var exists bool
		if err := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", table).Scan(&exists); err != nil {
			return fmt.Errorf("target %q: look for %s: %w", t.name, table, err)
		}
		if !exists {
			return fmt.Errorf("target %q: %s: %w", t.name, table, ErrNoPgbenchTable)
		}
	}
	var maxAid int64
	if err := conn.QueryRow(ctx, "SELECT coalesce(max(aid), 0) FROM pgbench_accounts").Scan(&maxAid); err != nil {
		return fmt.Errorf("target %q: read pgbench_accounts: %w", t.name, err)
	}
	if maxAid < int64(e.accounts) {
		return fmt.Errorf("target %q: pgbench_accounts goes up to aid %d, short of the %d accounts asked for (pgbench -i -s S creates S×100000)",
			t.name, maxAid, e.accounts)
	}
	return nil
}

// run opens c.Clients clients to t, primes each with one transaction, then
// releases all clients at once and lets them run transactions for d.
// Latencies are merged into into when it is not nil. Connection setup and
// priming are outside the measured window (except in the connect
// workload, where setting up connections is the transaction).
func (e *engine) run(ctx context.Context, t *target, c Case, d time.Duration, into *Histogram) (RunResult, error) {
	n := c.Clients
	hists := e.hists[:n]
	for _, h := range hists {
		h.Reset()
	}
	var (
		connected sync.WaitGroup
		start     = make(chan struct{})
		deadline  time.Time // written before start is closed
		counts    = make([]uint64, n)
		ends      = make([]time.Time, n)
	)
	connected.Add(n)
	g, gctx := errgroup.WithContext(ctx)
	for i := range n {
		g.Go(func() error {
			cl, err := e.openClient(gctx, t, c, uint64(i))
			connected.Done()
			if err != nil {
				return fmt.Errorf("client %d: %w", i+1, err)
			}
			defer cl.close(ctx)
			select {
			case <-start:
			case <-gctx.Done():
				return gctx.Err()
			}
			counts[i], ends[i], err = cl.loop(gctx, deadline, hists[i])
			if err != nil {
				return fmt.Errorf("client %d: %w", i+1, err)
			}
			return nil
		})
	}
	connected.Wait()
	var t0 time.Time
	if gctx.Err() == nil {
		t0 = time.Now()
		deadline = t0.Add(d)
		close(start)
	}
	if err := g.Wait(); err != nil {
		return RunResult{}, fmt.Errorf("target %q (%s): %w", t.name, c, err)
	}

	r := RunResult{Target: t.name, Case: c}
	var last time.Time
	for i := range n {
		r.Transactions += counts[i]
		if ends[i].After(last) {
			last = ends[i]
		}
		if into != nil {
			into.Merge(hists[i])
		}
	}
	r.Elapsed = last.Sub(t0)
	if r.Elapsed > 0 {
		r.TPS = float64(r.Transactions) / r.Elapsed.Seconds()
	}
	return r, nil
}

// client is one connection (or, in the connect workload, the recipe for
// one per transaction) and the state of its hot loop.
type client struct {
	workload Workload
	cc       *pgx.ConnConfig // the connect workload dials it per transaction
	conn     *pgx.Conn       // held for the run; nil in the connect workload
	sql      string
	accounts int
	bindAid  bool
	rng      *rand.Rand
	// The parameters are bound through pointers to these fields, so
	// binding them does not allocate.
	aid, tid, bid, delta int32
	aidArg               []any // a pointer to aid
	selectArgs           []any // nil, or aidArg when the query binds an aid
	updateArgs           []any
	historyArgs          []any
}

// The simple-update transaction of pgbench -N, statement by statement.
const (
	writeUpdate  = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2"
	writeSelect  = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
	writeHistory = "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)"
)

func (e *engine) openClient(ctx context.Context, t *target, c Case, seq uint64) (*client, error) {
	cc := t.conn.Copy()
	cc.DefaultQueryExecMode = c.Mode.execMode()
	cl := &client{
		workload: c.Workload,
		cc:       cc,
		sql:      e.query,
		accounts: e.accounts,
		bindAid:  e.bindAid,
		rng:      rand.New(rand.NewPCG(rand.Uint64(), seq)),
	}
	cl.aidArg = []any{&cl.aid}
	if cl.bindAid {
		cl.selectArgs = cl.aidArg
	}
	cl.updateArgs = []any{&cl.delta, &cl.aid}
	cl.historyArgs = []any{&cl.tid, &cl.bid, &cl.aid, &cl.delta}
	if c.Workload != WorkloadConnect {
		conn, err := pgx.ConnectConfig(ctx, cc)
		if err != nil {
			return nil, fmt.Errorf("connect: %w", err)
		}
		cl.conn = conn
	}
	// Prime: checks the transaction works and, in extended mode, prepares
	// its statements.
	if err := cl.txn(ctx); err != nil {
		cl.close(ctx)
		return nil, fmt.Errorf("first transaction: %w", err)
	}
	return cl, nil
}

func (c *client) close(ctx context.Context) {
	if c.conn != nil {
		closeConn(ctx, c.conn)
		c.conn = nil
	}
}

// txn runs the workload's transaction once and discards its rows.
func (c *client) txn(ctx context.Context) error {
	switch c.workload {
	case WorkloadWrite:
		return c.write(ctx)
	case WorkloadConnect:
		conn, err := pgx.ConnectConfig(ctx, c.cc)
		if err != nil {
			return fmt.Errorf("connect: %w", err)
		}
		err = c.selectOnce(ctx, conn)
		closeConn(ctx, conn)
		return err
	}
	return c.selectOnce(ctx, c.conn)
}

func (c *client) selectOnce(ctx context.Context, conn *pgx.Conn) error {
	if c.bindAid {
		c.aid = int32(c.rng.IntN(c.accounts)) + 1
	}
	rows, _ := conn.Query(ctx, c.sql, c.selectArgs...) // the error is also in rows.Err
	rows.Close()
	return rows.Err()
}

// write is pgbench's simple-update transaction: like pgbench, each
// statement is its own round trip. tid and bid only fill the history row,
// drawn from the ranges pgbench -i gives them for this scale.
func (c *client) write(ctx context.Context) error {
	scale := max(c.accounts/100000, 1)
	c.aid = int32(c.rng.IntN(c.accounts)) + 1
	c.tid = int32(c.rng.IntN(10*scale)) + 1
	c.bid = int32(c.rng.IntN(scale)) + 1
	c.delta = int32(c.rng.IntN(10001)) - 5000
	if _, err := c.conn.Exec(ctx, "BEGIN"); err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if _, err := c.conn.Exec(ctx, writeUpdate, c.updateArgs...); err != nil {
		return fmt.Errorf("update: %w", err)
	}
	rows, _ := c.conn.Query(ctx, writeSelect, c.aidArg...)
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("select: %w", err)
	}
	if _, err := c.conn.Exec(ctx, writeHistory, c.historyArgs...); err != nil {
		return fmt.Errorf("insert: %w", err)
	}
	if _, err := c.conn.Exec(ctx, "END"); err != nil {
		return fmt.Errorf("end: %w", err)
	}
	return nil
}

// loop runs transactions until one ends at or after deadline, recording
// each latency in h. It returns the number of transactions and when the
// last ended.
func (c *client) loop(ctx context.Context, deadline time.Time, h *Histogram) (n uint64, end time.Time, err error) {
	qctx, cancel := context.WithDeadline(ctx, deadline.Add(overrunLimit))
	defer cancel()
	begin := time.Now()
	for {
		if err := c.txn(qctx); err != nil {
			if ctx.Err() == nil && qctx.Err() != nil {
				return n, end, fmt.Errorf("transaction still running %s after the run's end: %w", overrunLimit, err)
			}
			return n, end, fmt.Errorf("transaction: %w", err)
		}
		end = time.Now()
		h.Record(end.Sub(begin))
		n++
		if !end.Before(deadline) {
			return n, end, nil
		}
		begin = end
	}
}

// closeConn ends conn politely, within closeTimeout even when ctx is
// already cancelled.
func closeConn(ctx context.Context, conn *pgx.Conn) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
	defer cancel()
	_ = conn.Close(cctx)
}
