package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/pharos-ha/pharos/bench"
)

func benchUsage(w io.Writer) {
	fmt.Fprint(w, `usage: pharos bench <verb> [flags]

verbs:
  throughput  compare throughput and latency of several targets in alternation
  switch      flip the leader key between real backends and time the proxy's reroute
  failover    write through a fault and check that no acknowledged write was lost
  report      build report.md and SVG charts from a results directory's JSON files

Run "pharos bench <verb> -h" for the verb's flags.
`)
}

// runBench dispatches `pharos bench <verb>`.
func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		benchUsage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "throughput":
		return runBenchThroughput(ctx, args[1:], stdout, stderr)
	case "switch":
		return runBenchSwitch(ctx, args[1:], stdout, stderr)
	case "failover":
		return runBenchFailover(ctx, args[1:], stdout, stderr)
	case "report":
		return runBenchReport(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		benchUsage(stderr)
		return exitOK
	}
	fmt.Fprintf(stderr, "pharos bench: unknown verb %q\n", args[0])
	benchUsage(stderr)
	return exitUsage
}

// benchFlagSet is the flag set of a bench verb: a bad flag prints the flag
// package's one line naming it; the full usage is only for -h.
func benchFlagSet(cmd string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {}
	return fs
}

// parseBenchFlags parses a bench verb's arguments; -h prints the usage
// line "usage: <verb> synopsis", about and the flags. With done, the verb
// returns code at once.
func parseBenchFlags(fs *flag.FlagSet, args []string, synopsis, about string) (code int, done bool) {
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprintf(fs.Output(), "usage: %s %s\n\n%s\n\nflags:\n", fs.Name(), synopsis, about)
		fs.PrintDefaults()
		return exitOK, true
	case err != nil:
		return exitUsage, true // the flag package printed the line
	}
	return exitOK, false
}

// benchBad returns the usage-error reporter of the bench verb cmd: one line
// "cmd: message", exit code 2.
func benchBad(cmd string, stderr io.Writer) func(format string, a ...any) int {
	return func(format string, a ...any) int {
		fmt.Fprintf(stderr, "%s: %s\n", cmd, fmt.Sprintf(format, a...))
		return exitUsage
	}
}

// rawList collects the values of a repeatable flag. It never fails, so the
// flag package never echoes a value, which for --target may hold a
// password; the values are checked after parsing.
type rawList []string

func (l *rawList) String() string     { return fmt.Sprint(len(*l), " values") }
func (l *rawList) Set(s string) error { *l = append(*l, s); return nil }

func runBenchThroughput(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	const cmd = "pharos bench throughput"
	fs := benchFlagSet(cmd, stderr)
	var (
		rawTargets   rawList
		clientsFlag  = fs.String("clients", "16", "client connections per run, one goroutine each; a comma-separated list (1,16,64) runs each count")
		workloadFlag = fs.String("workload", "select", "comma-separated: select (pgbench -S), write (pgbench -N: update, select, insert in one transaction), connect (a new connection per select, pgbench -C)")
		duration     = fs.Duration("duration", 10*time.Second, "measured time of each run (one target, one case, one round)")
		rounds       = fs.Int("rounds", 4, "rounds; each runs every case (workload × clients × mode) against every target, in rotated order")
		warmup       = fs.Duration("warmup", 2*time.Second, "unmeasured run per target before round 1 (0 skips it)")
		modeFlag     = fs.String("mode", "both", "protocol: simple, extended (prepared statements, like pgbench -M prepared) or both")
		pgbenchTable = fs.Bool("pgbench-table", true, "run pgbench's select-only query on pgbench_accounts (create it with pgbench -i); false runs SELECT 1 (the write workload always needs the pgbench tables)")
		accounts     = fs.Int("accounts", 100000, "aid range of pgbench_accounts: 100000 per pgbench scale unit")
		query        = fs.String("query", "", "SQL to run instead of the pgbench query, without parameters (e.g. 'SELECT 1')")
		jsonPath     = fs.String("json", "", "also write the results as JSON to this file")
	)
	fs.Var(&rawTargets, "target", "`name=DSN` of an endpoint to measure; repeat for each. The one named \"direct\", or else the first, is the baseline")
	if code, done := parseBenchFlags(fs, args, "--target name=DSN [--target name=DSN ...] [flags]",
		"Runs the same load against each target in alternation and prints, per case\n"+
			"(workload, client count, protocol mode), the median tps over rounds, p50/p99\n"+
			"latency, the ratio to the baseline target and every round's tps."); done {
		return code
	}
	bad := benchBad(cmd, stderr)
	if fs.NArg() > 0 {
		return bad("unexpected argument %q (targets go in --target name=DSN)", fs.Arg(0))
	}
	if len(rawTargets) == 0 {
		return bad("--target: at least one name=DSN is required")
	}
	var targets []bench.Target
	seen := make(map[string]bool)
	for i, raw := range rawTargets {
		t, err := bench.ParseTarget(raw)
		if err != nil {
			// The raw value is not echoed: it may hold a password.
			return bad("--target #%d: %v", i+1, err)
		}
		if seen[t.Name] {
			return bad("--target %s: name given twice", t.Name)
		}
		seen[t.Name] = true
		targets = append(targets, t)
	}
	modes, err := bench.ParseModes(*modeFlag)
	if err != nil {
		return bad("--mode: %v", err)
	}
	clients, err := bench.ParseClients(*clientsFlag)
	if err != nil {
		return bad("--clients: %v", err)
	}
	workloads, err := bench.ParseWorkloads(*workloadFlag)
	if err != nil {
		return bad("--workload: %v", err)
	}
	switch {
	case *duration <= 0:
		return bad("--duration %s: must be more than 0", *duration)
	case *rounds < 1:
		return bad("--rounds %d: must be at least 1", *rounds)
	case *warmup < 0:
		return bad("--warmup %s: must not be negative", *warmup)
	case *accounts < 1 || *accounts > 1<<31-1:
		return bad("--accounts %d: must be between 1 and %d", *accounts, 1<<31-1)
	}
	q := *query
	if q == "" && !*pgbenchTable {
		q = "SELECT 1"
	}

	cfg := bench.Config{
		Targets:   targets,
		Workloads: workloads,
		Clients:   clients,
		Modes:     modes,
		Duration:  *duration,
		Rounds:    *rounds,
		Warmup:    *warmup,
		Query:     q,
		Accounts:  *accounts,
	}
	runs := len(cfg.Cases()) * *rounds * len(targets)
	total := time.Duration(runs)*(*duration) + time.Duration(len(targets))*(*warmup)
	fmt.Fprintf(stderr, "bench: %d targets × %d cases × %d rounds = %d runs of %s (+ warm-up): about %s\n",
		len(targets), len(cfg.Cases()), *rounds, runs, *duration, total.Round(time.Second))
	width := 0
	for _, t := range targets {
		width = max(width, len(t.Name))
	}
	allRuns := runs
	if *warmup > 0 {
		allRuns += len(targets)
	}
	// The time left is the nominal time of the runs left plus, for each,
	// the mean overhead (connection setup, priming) seen so far, which a
	// guess from the flags alone would miss.
	done, began := 0, time.Now()
	var nominalDone time.Duration
	nominalLeft := total
	cfg.Progress = func(r bench.RunResult) {
		done++
		round, d := "warm-up", *warmup
		if r.Round > 0 {
			round, d = fmt.Sprintf("round %d/%d", r.Round, *rounds), *duration
		}
		nominalDone += d
		nominalLeft -= d
		left := ""
		if done < allRuns {
			overhead := max(time.Since(began)-nominalDone, 0) / time.Duration(done)
			left = fmt.Sprintf("; run %d/%d, about %s left", done, allRuns, (nominalLeft + overhead*time.Duration(allRuns-done)).Round(time.Second))
		}
		fmt.Fprintf(stderr, "bench: %-11s %-22s %-*s %10.1f tps (%d transactions in %s%s)\n",
			round, r.Case, width, r.Target, r.TPS, r.Transactions, r.Elapsed.Round(time.Millisecond), left)
	}
	rep, err := bench.Throughput(ctx, cfg)
	switch {
	case errors.Is(err, context.Canceled):
		fmt.Fprintf(stderr, "%s: interrupted\n", cmd)
		return exitFailure
	case errors.Is(err, bench.ErrNoPgbenchTable):
		fmt.Fprintf(stderr, "%s: %v, or pass --query\n", cmd, err)
		return exitFailure
	case err != nil:
		fmt.Fprintf(stderr, "%s: %v\n", cmd, err)
		return exitFailure
	}
	if err := rep.WriteText(stdout); err != nil {
		fmt.Fprintf(stderr, "%s: write report: %v\n", cmd, err)
		return exitFailure
	}
	if *jsonPath != "" {
		if err := writeJSONFile(*jsonPath, rep); err != nil {
			fmt.Fprintf(stderr, "%s: --json: %v\n", cmd, err)
			return exitFailure
		}
	}
	return exitOK
}

// writeJSONFile writes a report (anything with WriteJSON) to path.
func writeJSONFile(path string, rep interface{ WriteJSON(io.Writer) error }) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := rep.WriteJSON(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

func runBenchReport(args []string, stdout, stderr io.Writer) int {
	const cmd = "pharos bench report"
	fs := benchFlagSet(cmd, stderr)
	dir := fs.String("dir", "", "results directory: "+bench.ThroughputFile+", failover-<kind>-<n>.json and "+bench.EnvironmentFile+" (all optional, at least one result); the report is written there")
	if code, done := parseBenchFlags(fs, args, "--dir DIR",
		"Writes DIR/"+bench.ReportFile+" and one SVG chart per workload and failover kind,\n"+
			"from the JSON files of `bench throughput --json` and the failover benchmark."); done {
		return code
	}
	bad := benchBad(cmd, stderr)
	if fs.NArg() > 0 {
		return bad("unexpected argument %q", fs.Arg(0))
	}
	if *dir == "" {
		return bad("--dir is required")
	}
	res, err := bench.LoadResults(*dir)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", cmd, err)
		return exitFailure
	}
	written, err := res.WriteReport(*dir)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", cmd, err)
		return exitFailure
	}
	for _, name := range written {
		fmt.Fprintln(stdout, filepath.Join(*dir, name))
	}
	return exitOK
}
