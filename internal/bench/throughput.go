package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
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
	Targets  []Target // at least one; the baseline is chosen by BaselineIndex
	Modes    []Mode   // at least one, run in this order within each round
	Clients  int      // connections per run, one goroutine each
	Duration time.Duration
	Rounds   int
	// Warmup is the length of one unmeasured run per target, in the first
	// mode, before round 1. Zero skips it.
	Warmup time.Duration

	// Query is the SQL each client runs, with no parameters. Empty means the
	// pgbench select-only workload: PgbenchQuery with a random aid in
	// [1, Accounts], after checking that every target's pgbench_accounts
	// reaches that aid.
	Query    string
	Accounts int

	// Progress, if non-nil, is called after each run (the warm-up runs
	// included, with Round 0) on the goroutine that called Throughput. Nil
	// means no progress is reported.
	Progress func(RunResult)
}

// RunResult is what one run (one target, one mode, one round) measured.
type RunResult struct {
	Target       string
	Mode         Mode
	Round        int // 1-based; 0 for the warm-up
	Transactions uint64
	Elapsed      time.Duration // start barrier to the end of the last query
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
	switch {
	case c.Clients < 1:
		return fmt.Errorf("clients %d: want at least 1", c.Clients)
	case c.Duration <= 0:
		return fmt.Errorf("duration %s: want more than 0", c.Duration)
	case c.Rounds < 1:
		return fmt.Errorf("rounds %d: want at least 1", c.Rounds)
	case c.Warmup < 0:
		return fmt.Errorf("warmup %s: want 0 or more", c.Warmup)
	case c.Query == "" && (c.Accounts < 1 || c.Accounts > math.MaxInt32):
		return fmt.Errorf("accounts %d: want 1 to %d", c.Accounts, math.MaxInt32)
	}
	return nil
}

// Throughput runs the benchmark described by cfg and returns its report.
// Every target is checked (connected to and, for the pgbench workload,
// inspected) before anything is measured. The first failing run aborts the
// benchmark with an error naming the target. When ctx is cancelled it
// stops promptly, closes its connections and returns ctx's error.
func Throughput(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	e := &engine{cfg: cfg, query: cfg.Query}
	if e.query == "" {
		e.query = PgbenchQuery
		e.accounts = cfg.Accounts
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
	for range cfg.Clients {
		e.hists = append(e.hists, NewHistogram())
	}

	for i := range e.targets {
		if err := e.preflight(ctx, &e.targets[i]); err != nil {
			return nil, stopped(ctx, err)
		}
	}
	if cfg.Warmup > 0 {
		for i := range e.targets {
			r, err := e.run(ctx, &e.targets[i], cfg.Modes[0], cfg.Warmup, nil)
			if err != nil {
				return nil, stopped(ctx, fmt.Errorf("warm-up: %w", err))
			}
			e.progress(r)
		}
	}

	rep := &Report{
		Started:  time.Now(),
		Clients:  cfg.Clients,
		Duration: cfg.Duration,
		Rounds:   cfg.Rounds,
		Warmup:   cfg.Warmup,
		Query:    e.query,
		Baseline: cfg.Targets[BaselineIndex(cfg.Targets)].Name,
	}
	for _, m := range cfg.Modes {
		mr := ModeResult{Mode: m}
		for _, t := range cfg.Targets {
			mr.Targets = append(mr.Targets, TargetResult{Name: t.Name, Latency: NewHistogram()})
		}
		rep.Modes = append(rep.Modes, mr)
	}
	for round := range cfg.Rounds {
		for mi, m := range cfg.Modes {
			for _, ti := range Rotation(len(e.targets), round) {
				tr := &rep.Modes[mi].Targets[ti]
				r, err := e.run(ctx, &e.targets[ti], m, cfg.Duration, tr.Latency)
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
	for i := range rep.Modes {
		rep.Modes[i].summarize(BaselineIndex(cfg.Targets))
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
	cfg      Config
	query    string
	accounts int // > 0: bind a random aid in [1, accounts] as $1
	targets  []target
	hists    []*Histogram // one per client, reused by every run
}

func (e *engine) progress(r RunResult) {
	if e.cfg.Progress != nil {
		e.cfg.Progress(r)
	}
}

// preflight connects to t once and, for the pgbench workload, checks that
// pgbench_accounts exists and reaches the highest aid the clients will ask
// for.
func (e *engine) preflight(ctx context.Context, t *target) error {
	conn, err := pgx.ConnectConfig(ctx, t.conn)
	if err != nil {
		return fmt.Errorf("target %q: connect: %w", t.name, err)
	}
	defer closeConn(ctx, conn)
	if e.accounts == 0 {
		return nil
	}
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass('pgbench_accounts') IS NOT NULL").Scan(&exists); err != nil {
		return fmt.Errorf("target %q: look for pgbench_accounts: %w", t.name, err)
	}
	if !exists {
		return fmt.Errorf("target %q: %w", t.name, ErrNoPgbenchTable)
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

// run opens Clients connections to t in mode, primes each with one query,
// then releases all clients at once and lets them query for d. Latencies
// are merged into into when it is not nil. Connection setup and priming
// are outside the measured window.
func (e *engine) run(ctx context.Context, t *target, mode Mode, d time.Duration, into *Histogram) (RunResult, error) {
	n := e.cfg.Clients
	for _, h := range e.hists {
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
			c, err := e.openClient(gctx, t, mode, uint64(i))
			connected.Done()
			if err != nil {
				return fmt.Errorf("client %d: %w", i+1, err)
			}
			defer closeConn(ctx, c.conn)
			select {
			case <-start:
			case <-gctx.Done():
				return gctx.Err()
			}
			counts[i], ends[i], err = c.loop(gctx, deadline, e.hists[i])
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
		return RunResult{}, fmt.Errorf("target %q (%s): %w", t.name, mode, err)
	}

	r := RunResult{Target: t.name, Mode: mode}
	var last time.Time
	for i := range n {
		r.Transactions += counts[i]
		if ends[i].After(last) {
			last = ends[i]
		}
		if into != nil {
			into.Merge(e.hists[i])
		}
	}
	r.Elapsed = last.Sub(t0)
	if r.Elapsed > 0 {
		r.TPS = float64(r.Transactions) / r.Elapsed.Seconds()
	}
	return r, nil
}

// client is one connection and the state of its hot loop.
type client struct {
	conn     *pgx.Conn
	sql      string
	accounts int
	rng      *rand.Rand
	aid      int32
	args     []any // nil, or one pointer to aid: binding it does not allocate
}

func (e *engine) openClient(ctx context.Context, t *target, mode Mode, seq uint64) (*client, error) {
	cc := t.conn.Copy()
	cc.DefaultQueryExecMode = mode.execMode()
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	c := &client{
		conn:     conn,
		sql:      e.query,
		accounts: e.accounts,
		rng:      rand.New(rand.NewPCG(rand.Uint64(), seq)),
	}
	if c.accounts > 0 {
		c.args = []any{&c.aid}
	}
	// Prime: checks the query works and, in extended mode, prepares it.
	if err := c.query(ctx); err != nil {
		closeConn(ctx, conn)
		return nil, fmt.Errorf("first query: %w", err)
	}
	return c, nil
}

// query runs the workload once and discards its rows.
func (c *client) query(ctx context.Context) error {
	if c.accounts > 0 {
		c.aid = int32(c.rng.IntN(c.accounts)) + 1
	}
	rows, _ := c.conn.Query(ctx, c.sql, c.args...) // the error is also in rows.Err
	rows.Close()
	return rows.Err()
}

// loop queries until a query ends at or after deadline, recording each
// latency in h. It returns the number of queries and when the last ended.
func (c *client) loop(ctx context.Context, deadline time.Time, h *Histogram) (n uint64, end time.Time, err error) {
	qctx, cancel := context.WithDeadline(ctx, deadline.Add(overrunLimit))
	defer cancel()
	begin := time.Now()
	for {
		if err := c.query(qctx); err != nil {
			if ctx.Err() == nil && qctx.Err() != nil {
				return n, end, fmt.Errorf("query still running %s after the run's end: %w", overrunLimit, err)
			}
			return n, end, fmt.Errorf("query: %w", err)
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
