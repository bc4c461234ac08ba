// Command pharos is high availability for PostgreSQL in one binary: the
// wire-protocol proxy, the per-node agent and the tools around them.
//
// This package owns flag and config parsing and the wiring of the other
// packages; it must not know protocol details or HA rules.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=…"; a
// plain go build in a checkout gets the commit instead (see init).
var version = "dev"

func init() {
	if version != "dev" {
		return
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return
	}
	var rev, dirty string
	for _, kv := range info.Settings {
		switch {
		case kv.Key == "vcs.revision" && len(kv.Value) >= 12:
			rev = kv.Value[:12]
		case kv.Key == "vcs.modified" && kv.Value == "true":
			dirty = "-dirty"
		}
	}
	if rev != "" {
		version = "dev-" + rev + dirty
	}
}

// Exit codes shared by every subcommand.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2 // bad flags or config: one line naming the key and why
)

type subcommand struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

func subcommands() []subcommand {
	return []subcommand{
		{"proxy", "run the PostgreSQL proxy (rw and ro endpoints)", runProxy},
		{"agent", "run the HA agent of one PostgreSQL node", runAgent},
		{"ctl", "inspect and operate a cluster through etcd", runCtl},
		{"bench", "measure throughput, latency and failover against several targets; build reports", runBench},
		{"demo", "run a local three-node cluster (embedded etcd, agents) with the proxy in front", runDemo},
		{"watchdog", "kill the local PostgreSQL when the agent stops feeding (software watchdog)", runWatchdog},
		{"version", "print the version", func(_ context.Context, _ []string, stdout, _ io.Writer) int {
			fmt.Fprintln(stdout, "pharos", version)
			return exitOK
		}},
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: pharos <command> [flags]\n\ncommands:")
	for _, c := range subcommands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	for _, c := range subcommands() {
		if c.name == args[0] {
			// SIGTERM is handled by the daemons themselves (drain); the
			// context here only carries Ctrl-C for short-lived commands.
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "pharos: unknown command %q\n", args[0])
	usage(stderr)
	return exitUsage
}
