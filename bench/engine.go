package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
)

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
