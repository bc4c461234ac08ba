package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pharos-ha/pharos/internal/pglocal"
)

// failoverLogger sends slog records to t.Log.
func failoverLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, nil))
}

type tlogWriter struct{ t *testing.T }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// probeOptions are short runs against dsn, each with its own table.
func probeOptions(t *testing.T, dsn, table string) FailoverOptions {
	return FailoverOptions{
		DSN:    dsn,
		Table:  table,
		Before: 300 * time.Millisecond,
		After:  3 * time.Second,
		Settle: 500 * time.Millisecond,
		Logger: failoverLogger(t),
	}
}

func logReport(t *testing.T, rep *FailoverReport) {
	t.Helper()
	var b strings.Builder
	if err := rep.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", b.String())
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// TestRunFailover runs the probe against a real, durable PostgreSQL. The
// subtests share it and leave it running.
func TestRunFailover(t *testing.T) {
	primary := testCluster(t).Primary()
	dsn := primary.DSN(pglocal.SuperUser, "", "postgres")

	t.Run("primary stopped and started again", func(t *testing.T) {
		const down = 300 * time.Millisecond
		o := probeOptions(t, dsn, "probe_restart")
		o.Fault = func(ctx context.Context) error {
			if err := primary.Stop(ctx); err != nil {
				return err
			}
			if err := sleepCtx(ctx, down); err != nil {
				return err
			}
			return primary.Start(ctx)
		}
		rep, err := RunFailover(t.Context(), o)
		if err != nil {
			t.Fatal(err)
		}
		logReport(t, rep)
		if rep.FaultErr != "" || !rep.Checked || !rep.Settled {
			t.Fatalf("fault error %q, checked %v, settled %v; want none, true, true", rep.FaultErr, rep.Checked, rep.Settled)
		}
		if len(rep.Lost) != 0 {
			t.Errorf("lost %v, want none: a clean restart of a durable server loses nothing", rep.Lost)
		}
		if rep.MaxOutage < down || rep.RecoveredAfter < down {
			t.Errorf("max outage %v, recovered after %v; want both at least the %v the server was down", rep.MaxOutage, rep.RecoveredAfter, down)
		}
		if rep.Acked == 0 || rep.Failed+rep.Unknown == 0 || len(rep.Errors) == 0 {
			t.Errorf("acked %d, failed %d, unknown %d, errors %v; want some of each", rep.Acked, rep.Failed, rep.Unknown, rep.Errors)
		}
		if rep.NodeBefore != primary.Name || rep.NodeAfter != primary.Name || !rep.NewPrimaryAt.IsZero() {
			t.Errorf("nodes %q → %q, new primary %q; want %s throughout", rep.NodeBefore, rep.NodeAfter, rep.NewPrimary, primary.Name)
		}
		if got := rep.Acked + rep.UnknownCommitted + len(rep.FailedCommitted); rep.Present != got {
			t.Errorf("read back %d of the run's writes, want %d (acked + committed unknown + committed failed)", rep.Present, got)
		}
		var doc map[string]any
		if b, err := json.Marshal(rep); err != nil {
			t.Fatalf("json: %v", err)
		} else if err := json.Unmarshal(b, &doc); err != nil {
			t.Fatalf("json: %v", err)
		}
		if ms, _ := doc["max_outage_ms"].(float64); ms < float64(down/time.Millisecond) {
			t.Errorf("json max_outage_ms %v, want at least %d", doc["max_outage_ms"], down/time.Millisecond)
		}
		// The timeline accounts for every write, and the 300 ms the
		// server was down span at least two whole buckets after the fault
		// without an acknowledgement.
		sum, silent := 0, 0
		for _, p := range rep.Timeline {
			sum += p.Acked + p.Failed + p.Unknown
			if p.Offset >= 0 && p.Acked == 0 {
				silent++
			}
		}
		if sum != rep.Writes || silent < 2 {
			t.Errorf("timeline holds %d writes, the run made %d; %d buckets after the fault without an ack, want at least 2: %+v", sum, rep.Writes, silent, rep.Timeline)
		}
		tl, _ := doc["timeline"].(map[string]any)
		if points, _ := tl["points"].([]any); len(points) != len(rep.Timeline) || tl["bucket_ms"] != 100.0 {
			t.Errorf("json timeline: %v", tl)
		}
	})

	t.Run("deleted acknowledged rows are lost", func(t *testing.T) {
		const table = "probe_lost"
		// A first run leaves rows in the table; the second must start
		// after them and check only its own.
		prev, err := RunFailover(t.Context(), probeOptions(t, dsn, table))
		if err != nil {
			t.Fatalf("first run: %v", err)
		}
		if !prev.Checked || len(prev.Lost) != 0 || prev.Acked == 0 {
			t.Fatalf("first run: checked %v, lost %v, acked %d", prev.Checked, prev.Lost, prev.Acked)
		}

		var deleted []int64
		o := probeOptions(t, dsn, table)
		o.Fault = func(ctx context.Context) error {
			conn, err := primary.Connect(ctx, pglocal.SuperUser, "", "postgres")
			if err != nil {
				return err
			}
			defer conn.Close(context.WithoutCancel(ctx))
			// Three of this run's rows, and one of the first run's, which
			// this run must not count.
			rows, _ := conn.Query(ctx, `DELETE FROM probe_lost WHERE id = $1 OR id IN (
				SELECT id FROM probe_lost WHERE id > $2 ORDER BY id LIMIT 3) RETURNING id`, prev.FirstID, prev.LastID)
			ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
			for _, id := range ids {
				if id > prev.LastID {
					deleted = append(deleted, id)
				}
			}
			return err
		}
		rep, err := RunFailover(t.Context(), o)
		if err != nil {
			t.Fatal(err)
		}
		logReport(t, rep)
		if rep.FirstID != prev.LastID+1 {
			t.Errorf("second run starts at id %d, want %d (after the first run's)", rep.FirstID, prev.LastID+1)
		}
		slices.Sort(deleted)
		if len(deleted) != 3 || rep.FaultErr != "" {
			t.Fatalf("fault deleted %v (error %q), want 3 of this run's rows", deleted, rep.FaultErr)
		}
		if !rep.Checked || !slices.Equal(rep.Lost, deleted) {
			t.Errorf("checked %v, lost %v; want the deleted %v", rep.Checked, rep.Lost, deleted)
		}
		if rep.Failed+rep.Unknown != 0 {
			t.Errorf("failed %d, unknown %d (%v); want none, the server never went away", rep.Failed, rep.Unknown, rep.Errors)
		}
		var text strings.Builder
		if err := rep.WriteText(&text); err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("LOST 3 of %d acknowledged writes: %d %d %d", rep.Acked, deleted[0], deleted[1], deleted[2]); !strings.Contains(text.String(), want) {
			t.Errorf("text report lacks %q", want)
		}
	})

	t.Run("a fault outliving the run is cancelled and reported", func(t *testing.T) {
		o := probeOptions(t, dsn, "probe_slow_fault")
		o.After = 300 * time.Millisecond
		o.Fault = func(ctx context.Context) error {
			<-ctx.Done()
			return fmt.Errorf("slow fault: %w", context.Cause(ctx))
		}
		rep, err := RunFailover(t.Context(), o)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(rep.FaultErr, "slow fault: context canceled") || rep.Settled || len(rep.Lost) != 0 {
			t.Errorf("fault error %q, settled %v, lost %v; want the cancellation, false, none", rep.FaultErr, rep.Settled, rep.Lost)
		}
	})

	t.Run("cancel stops the run and waits for the fault", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		var faultReturned atomic.Bool
		o := probeOptions(t, dsn, "probe_cancel")
		o.After = time.Minute
		o.Fault = func(ctx context.Context) error {
			time.AfterFunc(200*time.Millisecond, cancel)
			<-ctx.Done()
			faultReturned.Store(true)
			return ctx.Err()
		}
		began := time.Now()
		rep, err := RunFailover(ctx, o)
		if !errors.Is(err, context.Canceled) || rep != nil {
			t.Fatalf("report %v, err %v; want none and context.Canceled", rep, err)
		}
		if !faultReturned.Load() {
			t.Error("RunFailover returned before the fault did")
		}
		if took := time.Since(began); took > 5*time.Second {
			t.Errorf("took %v, want well under 5s", took)
		}
	})
}

// An unreachable server fails the run before its first write, with an
// error naming the setup, and the fault never runs.
func TestRunFailoverUnreachable(t *testing.T) {
	port, err := pglocal.FreePort() // free a moment ago: nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	var faulted atomic.Bool
	o := probeOptions(t, fmt.Sprintf("host=127.0.0.1 port=%d user=pharos dbname=postgres sslmode=disable connect_timeout=2", port), "")
	o.Fault = func(context.Context) error { faulted.Store(true); return nil }
	began := time.Now()
	rep, err := RunFailover(t.Context(), o)
	if err == nil || rep != nil {
		t.Fatalf("report %+v, err %v; want no report and an error", rep, err)
	}
	if msg := err.Error(); !strings.Contains(msg, "setup pharos_probe: connect") {
		t.Errorf("err %q, want it to name the setup's connect", msg)
	}
	if faulted.Load() {
		t.Error("the fault ran")
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("took %v, want a prompt failure", took)
	}
}

func TestFailoverOptionsRejectNegativeDurations(t *testing.T) {
	o := FailoverOptions{DSN: "host=127.0.0.1", Settle: -time.Second}
	_, err := RunFailover(t.Context(), o)
	if err == nil || !strings.Contains(err.Error(), "settle -1s") {
		t.Fatalf("err %v, want one naming settle", err)
	}
	if _, err := RunFailover(t.Context(), FailoverOptions{}); err == nil || !strings.Contains(err.Error(), "no DSN") {
		t.Fatalf("err %v, want one naming the DSN", err)
	}
}

func TestFailoverReportText(t *testing.T) {
	h := failoverHistory()
	rep := &FailoverReport{Table: "t", FirstID: 1, LastID: 20, Started: h.t0, Ended: h.at(702), FaultTook: 400 * time.Millisecond, Checked: true, Settled: true}
	present := ids("n2", idRange(1, 20)...)
	delete(present, 7)
	rep.CheckResult = h.c.Check(present)
	var b bytes.Buffer
	if err := rep.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"ids 1..20, 20 writes in 0.702s (writes settled)",
		"fault:       began at 0.100s, ran 400.000 ms",
		"writes:      16 acknowledged, 3 failed, 1 unknown outcome (1 of them committed)",
		"max outage:  558.000 ms without an acknowledged write, 0.092s to 0.650s",
		"recovery:    550.000 ms after the fault",
		"new primary: n2, first acknowledgement 550.000 ms after the fault (before: n1)",
		"LOST 1 of 16 acknowledged writes: 7",
		"note:        3 writes reported failed were committed anyway: 11 12 14",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, b.String())
		}
	}
}
