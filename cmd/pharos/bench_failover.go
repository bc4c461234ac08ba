package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pharos-ha/pharos/bench"
)

// faultWaitDelay bounds the wait for the fault command's output pipes
// after it was killed or exited while a child still holds them.
const faultWaitDelay = 2 * time.Second

// runBenchFailover is `pharos bench failover`: a write probe around a
// fault. Exit 0 when no acknowledged write was lost; 1 when some were, or
// the run, the fault command or the read-back failed.
func runBenchFailover(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	const cmd = "pharos bench failover"
	fs := benchFlagSet(cmd, stderr)
	var (
		dsn      = fs.String("dsn", "", "where the probe writes: a libpq URL or key=value string (a proxy's rw endpoint, or a host list with target_session_attrs=read-write)")
		fault    = fs.String("fault", "", "shell command run with sh -c after --before, e.g. 'ssh db1 sudo systemctl kill -s KILL postgresql'")
		checkDSN = fs.String("check-dsn", "", "where the writes are read back at the end; it must reach the final primary (default: --dsn)")
		table    = fs.String("table", bench.DefaultProbeTable, "probe table, created if missing; ids continue after the rows already there")
		interval = fs.Duration("interval", 5*time.Millisecond, "time between the starts of two writes")
		timeout  = fs.Duration("timeout", 500*time.Millisecond, "bound on one write, reconnecting included")
		before   = fs.Duration("before", 2*time.Second, "steady writes before the fault")
		after    = fs.Duration("after", 30*time.Second, "longest time to keep writing after the fault began")
		settle   = fs.Duration("settle", 2*time.Second, "stop early once the fault command has returned and writes have succeeded this long")
		jsonPath = fs.String("json", "", "also write the report as JSON to this file")
	)
	if code, done := parseBenchFlags(fs, args, "--dsn DSN --fault 'command' [flags]",
		"Writes one row at a time to --dsn, runs --fault, keeps writing until writes\n"+
			"have recovered and settled, then reads the rows back and reports every\n"+
			"acknowledged write that is missing, the longest time without an acknowledged\n"+
			"write and the time to recover. Exit 0 when no acknowledged write was lost,\n"+
			"1 when some were or the run, the fault command or the read-back failed."); done {
		return code
	}
	bad := benchBad(cmd, stderr)
	if fs.NArg() > 0 {
		return bad("unexpected argument %q (quote the fault command: --fault 'command')", fs.Arg(0))
	}
	switch {
	case *dsn == "":
		return bad("--dsn: the connection string to write to is required")
	case *fault == "":
		return bad("--fault: the shell command that breaks something is required")
	case *table == "":
		return bad("--table: must not be empty")
	}
	// The DSNs are not echoed: they may hold a password (pgx redacts it
	// from its own errors).
	if _, err := pgx.ParseConfig(*dsn); err != nil {
		return bad("--dsn: %v", err)
	}
	if *checkDSN != "" {
		if _, err := pgx.ParseConfig(*checkDSN); err != nil {
			return bad("--check-dsn: %v", err)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"interval", *interval}, {"timeout", *timeout}, {"before", *before}, {"after", *after}, {"settle", *settle},
	} {
		if d.v <= 0 {
			return bad("--%s %s: must be more than 0", d.name, d.v)
		}
	}

	errOut := &lockedWriter{w: stderr} // the logger and the fault command share it
	fmt.Fprintf(errOut, "bench: a write every %s, fault after %s, then writing for at most %s (until %s without errors)\n",
		*interval, *before, *after, *settle)
	rep, err := bench.RunFailover(ctx, bench.FailoverOptions{
		DSN:          *dsn,
		CheckDSN:     *checkDSN,
		Table:        *table,
		Interval:     *interval,
		WriteTimeout: *timeout,
		Before:       *before,
		After:        *after,
		Settle:       *settle,
		Fault:        shellFault(*fault, errOut),
		Logger:       slog.New(slog.NewTextHandler(errOut, nil)),
	})
	if rep == nil {
		if errors.Is(err, context.Canceled) {
			fmt.Fprintf(errOut, "%s: interrupted\n", cmd)
		} else {
			fmt.Fprintf(errOut, "%s: %v\n", cmd, err)
		}
		return exitFailure
	}
	code := exitOK
	if werr := rep.WriteText(stdout); werr != nil {
		fmt.Fprintf(errOut, "%s: write report: %v\n", cmd, werr)
		code = exitFailure
	}
	if *jsonPath != "" {
		if jerr := writeJSONFile(*jsonPath, rep); jerr != nil {
			fmt.Fprintf(errOut, "%s: --json: %v\n", cmd, jerr)
			code = exitFailure
		}
	}
	switch {
	case err != nil: // the read-back failed
		fmt.Fprintf(errOut, "%s: %v\n", cmd, err)
		return exitFailure
	case len(rep.Lost) > 0:
		fmt.Fprintf(errOut, "%s: %d acknowledged writes lost\n", cmd, len(rep.Lost))
		return exitFailure
	case rep.FaultErr != "":
		fmt.Fprintf(errOut, "%s: %s\n", cmd, rep.FaultErr) // "fault command: …"
		return exitFailure
	}
	return code
}

// shellFault runs command with sh -c in its own process group, output to
// out. Cancelling ctx kills the whole group, so a command that started
// children (ssh, sleep) does not outlive the run.
func shellFault(command string, out io.Writer) func(context.Context) error {
	return func(ctx context.Context) error {
		c := exec.CommandContext(ctx, "sh", "-c", command)
		c.Stdout, c.Stderr = out, out
		c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		c.Cancel = func() error { return syscall.Kill(-c.Process.Pid, syscall.SIGKILL) }
		c.WaitDelay = faultWaitDelay
		if err := c.Run(); err != nil {
			return fmt.Errorf("fault command: %w", err)
		}
		return nil
	}
}

// lockedWriter serialises writes from the logger and the fault command's
// output copier.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
