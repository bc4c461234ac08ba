package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Defaults of FailoverOptions.
const (
	DefaultProbeTable     = "pharos_probe"
	defaultProbeInterval  = 5 * time.Millisecond
	defaultWriteTimeout   = 500 * time.Millisecond
	defaultProbeBefore    = 2 * time.Second
	defaultProbeAfter     = 30 * time.Second
	defaultProbeSettle    = 2 * time.Second
	probeSetupTimeout     = 10 * time.Second // creating the table, finding the first id
	probeCheckTimeout     = 10 * time.Second // reaching the final primary for the read-back
	probeCheckRetryPause  = 100 * time.Millisecond
	probeCheckConnTimeout = 2 * time.Second // one read-back attempt's connect
)

// FailoverOptions drive RunFailover. Zero durations take their defaults.
type FailoverOptions struct {
	// DSN is where the probe writes: a libpq URL or key=value string, as
	// pgx.Connect takes it (host lists and target_session_attrs work).
	DSN string
	// CheckDSN is where the writes are read back at the end; empty means
	// DSN. It must reach the final primary: a standby answering is
	// retried like an unreachable server.
	CheckDSN string
	// Table is the probe table, created if missing; empty means
	// DefaultProbeTable. A dot separates a schema.
	Table string

	Interval     time.Duration // between the starts of two writes; default 5ms
	WriteTimeout time.Duration // bounds one write, reconnect included; default 500ms
	Before       time.Duration // steady writes before the fault; default 2s
	// After bounds the writing after the fault began; default 30s. The
	// run stops earlier once the fault has returned and writes have been
	// acknowledged without a break for Settle (default 2s).
	After  time.Duration
	Settle time.Duration

	// Fault breaks something at the end of Before. It runs in its own
	// goroutine while the writes go on; its context is cancelled when
	// the run ends before it returns. Nil runs no fault: a baseline.
	Fault func(ctx context.Context) error
	// Logger receives progress (setup, fault, first failure, recovery);
	// nil discards it.
	Logger *slog.Logger
}

func (o *FailoverOptions) applyDefaults() error {
	if o.DSN == "" {
		return errors.New("failover: no DSN")
	}
	if o.CheckDSN == "" {
		o.CheckDSN = o.DSN
	}
	if o.Table == "" {
		o.Table = DefaultProbeTable
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"interval", &o.Interval, defaultProbeInterval},
		{"write timeout", &o.WriteTimeout, defaultWriteTimeout},
		{"before", &o.Before, defaultProbeBefore},
		{"after", &o.After, defaultProbeAfter},
		{"settle", &o.Settle, defaultProbeSettle},
	} {
		if *d.v < 0 {
			return fmt.Errorf("failover: %s %s: want 0 (the default) or more", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// RunFailover writes one row at a time through a single connection to
// o.DSN, runs o.Fault after o.Before, keeps writing until recovery has
// settled (or o.After has passed), then reads this run's rows back from
// o.CheckDSN and checks that every acknowledged write is there.
//
// Each write is `INSERT … (id, node) VALUES ($1, current_setting(
// 'cluster_name')) RETURNING node`, with a fresh id: the returned node names
// the member that acknowledged it. After any error the connection is
// dropped and the next write reconnects. A write the server refused, or
// one never sent, failed; one without an answer (timeout, connection lost)
// has an unknown outcome and is never counted as lost.
//
// An error before the first write (bad DSN, server unreachable, table not
// creatable) returns no report. When only the read-back fails, RunFailover
// returns the report without it (Checked false) and the error. When ctx
// is cancelled it waits for the fault to return and returns ctx's error.
func RunFailover(ctx context.Context, o FailoverOptions) (*FailoverReport, error) {
	if err := o.applyDefaults(); err != nil {
		return nil, err
	}
	cc, err := pgx.ParseConfig(o.DSN)
	if err != nil {
		return nil, fmt.Errorf("failover: dsn: %w", err)
	}
	cc.DefaultQueryExecMode = pgx.QueryExecModeExec // one round trip, no statement to prepare
	checkCC, err := pgx.ParseConfig(o.CheckDSN)
	if err != nil {
		return nil, fmt.Errorf("failover: check dsn: %w", err)
	}
	table := pgx.Identifier(strings.Split(o.Table, ".")).Sanitize()

	firstID, err := setupProbe(ctx, cc, table)
	if err != nil {
		return nil, stopped(ctx, fmt.Errorf("failover: setup %s: %w", o.Table, err))
	}
	o.Logger.Info("probe table ready", "table", o.Table, "first_id", firstID)

	p := &prober{
		o:      o,
		cc:     cc,
		insert: "INSERT INTO " + table + " (id, node) VALUES ($1, current_setting('cluster_name')) RETURNING node",
		nextID: firstID,
		log:    o.Logger,
	}
	rep := &FailoverReport{Table: o.Table, FirstID: firstID}
	err = p.run(ctx, rep)
	if err != nil {
		return nil, err
	}
	rep.LastID = p.nextID - 1

	present, err := readBack(ctx, checkCC, table, rep.FirstID, rep.LastID, o.Logger)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		rep.CheckResult = p.check.analyze()
		return rep, fmt.Errorf("failover: read back: %w", err)
	}
	rep.CheckResult = p.check.Check(present)
	rep.Checked = true
	o.Logger.Info("read back", "rows", len(present), "acked", rep.Acked, "lost", len(rep.Lost))
	return rep, nil
}

// setupProbe creates the probe table if needed and returns the first id
// of this run: one past the highest already there.
func setupProbe(ctx context.Context, cc *pgx.ConnConfig, table string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, probeSetupTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return 0, fmt.Errorf("connect: %w", err)
	}
	defer closeConn(ctx, conn)
	_, err = conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+table+
		" (id bigint PRIMARY KEY, node text NOT NULL, written_at timestamptz NOT NULL DEFAULT clock_timestamp())")
	if err != nil {
		return 0, fmt.Errorf("create table: %w", err)
	}
	var first int64
	if err := conn.QueryRow(ctx, "SELECT coalesce(max(id), 0) + 1 FROM "+table).Scan(&first); err != nil {
		return 0, fmt.Errorf("first id: %w", err)
	}
	return first, nil
}

// faultResult is what the fault goroutine hands back.
type faultResult struct {
	err error
	end time.Time
}

// prober runs the writes. It is owned by the goroutine calling run; the
// fault goroutine only sends on its channel.
type prober struct {
	o      FailoverOptions
	cc     *pgx.ConnConfig
	insert string
	log    *slog.Logger

	conn   *pgx.Conn // nil after an error, until the next write reconnects
	nextID int64
	check  Checker
}

// run writes until the run is over, running the fault on the way, and
// fills in rep's timing and fault fields. It returns only ctx's error.
func (p *prober) run(ctx context.Context, rep *FailoverReport) error {
	defer p.closeConn(ctx)
	var (
		start    = time.Now()
		faultDue = start.Add(p.o.Before)
		hardEnd  = faultDue.Add(p.o.After)

		faultDone   chan faultResult // nil until the fault starts
		faultEnded  time.Time        // zero while the fault runs
		streakStart time.Time        // first write of the current unbroken run of acks; zero after a failure
		failing     bool             // the last write was not acknowledged, for the log
	)
	rep.Started = start
	fctx, faultCancel := context.WithCancel(ctx)
	defer faultCancel()
	// The fault goroutine is waited for on every return.
	defer func() {
		if faultDone == nil || !faultEnded.IsZero() {
			return
		}
		p.log.Info("fault still running at the end of the run, cancelling it")
		faultCancel()
		p.faultReturned(rep, <-faultDone)
	}()

	next := start
	for {
		now := time.Now()
		if faultDone == nil && !now.Before(faultDue) {
			faultDone = make(chan faultResult, 1)
			rep.FaultAt = now
			p.check.RecordFault(now)
			p.log.Info("fault started", "writes", p.check.Len())
			if p.o.Fault == nil {
				faultDone <- faultResult{end: now}
			} else {
				go func(fault func(context.Context) error) {
					err := fault(fctx)
					faultDone <- faultResult{err: err, end: time.Now()}
				}(p.o.Fault)
			}
		}
		if faultDone != nil && faultEnded.IsZero() {
			select {
			case r := <-faultDone:
				faultEnded = r.end
				p.faultReturned(rep, r)
			default:
			}
		}
		if !faultEnded.IsZero() && !streakStart.IsZero() {
			since := streakStart
			if faultEnded.After(since) {
				since = faultEnded
			}
			if rep.Ended.Sub(since) >= p.o.Settle {
				rep.Settled = true
				p.log.Info("writes settled", "acked_for", rep.Ended.Sub(since).Round(time.Millisecond))
				return nil
			}
		}
		if !now.Before(hardEnd) {
			p.log.Info("run time over", "after", p.o.After)
			return nil
		}

		w := p.write(ctx)
		if ctx.Err() != nil {
			return ctx.Err() // the write's outcome is the cancellation's, not the server's
		}
		p.check.Record(w)
		rep.Ended = w.Done
		if w.Outcome == OutcomeAcked {
			if failing {
				p.log.Info("writes acknowledged again", "node", w.Node, "id", w.ID)
				failing = false
			}
			if streakStart.IsZero() {
				streakStart = w.Sent
			}
		} else {
			if !failing {
				p.log.Info("writes failing", "outcome", w.Outcome, "class", w.Class, "id", w.ID)
				failing = true
			}
			streakStart = time.Time{}
		}

		next = next.Add(p.o.Interval)
		if wait := time.Until(next); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		} else {
			next = time.Now() // a slow write: no burst to catch up
		}
	}
}

func (p *prober) faultReturned(rep *FailoverReport, r faultResult) {
	rep.FaultTook = r.end.Sub(rep.FaultAt)
	if r.err != nil {
		rep.FaultErr = r.err.Error()
		p.log.Warn("fault failed", "took", rep.FaultTook.Round(time.Millisecond), "err", r.err)
		return
	}
	p.log.Info("fault returned", "took", rep.FaultTook.Round(time.Millisecond))
}

// write makes one write with a fresh id, connecting first if needed, all
// within WriteTimeout.
func (p *prober) write(ctx context.Context) Write {
	w := Write{ID: p.nextID, Sent: time.Now()}
	p.nextID++
	wctx, cancel := context.WithTimeout(ctx, p.o.WriteTimeout)
	defer cancel()
	if p.conn == nil {
		conn, err := pgx.ConnectConfig(wctx, p.cc)
		if err != nil {
			// Nothing was sent: whatever went wrong, the row is not there.
			w.Outcome, w.Class, w.Done = OutcomeFailed, errorClass(err), time.Now()
			return w
		}
		p.conn = conn
	}
	err := p.conn.QueryRow(wctx, p.insert, w.ID).Scan(&w.Node)
	w.Done = time.Now()
	if err == nil {
		w.Outcome = OutcomeAcked
		return w
	}
	p.closeConn(ctx)
	w.Class = errorClass(err)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) || pgconn.SafeToRetry(err) {
		w.Outcome = OutcomeFailed
	} else {
		w.Outcome = OutcomeUnknown
	}
	return w
}

func (p *prober) closeConn(ctx context.Context) {
	if p.conn == nil {
		return
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.o.WriteTimeout)
	defer cancel()
	_ = p.conn.Close(cctx)
	p.conn = nil
}

// errorClass names err by its SQLSTATE, else as ClassTimeout or
// ClassNetwork.
func errorClass(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	var netErr net.Error
	if pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded) ||
		(errors.As(err, &netErr) && netErr.Timeout()) {
		return ClassTimeout
	}
	return ClassNetwork
}

// readBack returns the ids in [first, last] and their node, read from the
// primary behind cc. It retries for probeCheckTimeout while the server is
// unreachable or a standby.
func readBack(ctx context.Context, cc *pgx.ConnConfig, table string, first, last int64, log *slog.Logger) (map[int64]string, error) {
	ctx, cancel := context.WithTimeout(ctx, probeCheckTimeout)
	defer cancel()
	for attempt := 1; ; attempt++ {
		present, err := readBackOnce(ctx, cc, table, first, last)
		if err == nil {
			return present, nil
		}
		if attempt == 1 {
			log.Info("read back failed, retrying", "for", probeCheckTimeout, "err", err)
		}
		t := time.NewTimer(probeCheckRetryPause)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%d attempts in %s, the last: %w", attempt, probeCheckTimeout, err)
		case <-t.C:
		}
	}
}

func readBackOnce(ctx context.Context, cc *pgx.ConnConfig, table string, first, last int64) (map[int64]string, error) {
	cctx, cancel := context.WithTimeout(ctx, probeCheckConnTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, cc)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	defer closeConn(ctx, conn)
	var standby bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&standby); err != nil {
		return nil, err
	}
	if standby {
		return nil, errors.New("the server is a standby, not the primary")
	}
	rows, _ := conn.Query(ctx, "SELECT id, node FROM "+table+" WHERE id BETWEEN $1 AND $2", first, last)
	present := make(map[int64]string)
	var (
		id   int64
		node string
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &node}, func() error {
		present[id] = node
		return nil
	})
	if err != nil {
		return nil, err
	}
	return present, nil
}
