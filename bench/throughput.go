package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
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
