package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/pharos-ha/pharos/internal/watchdog"
)

// watchdogSettings are the flags of `pharos watchdog` (no config file: the
// agent starts it).
type watchdogSettings struct {
	DataDir  string
	Timeout  time.Duration
	LogLevel string
	ReadyFD  int // 0: none
}

func parseWatchdogArgs(args []string, stderr io.Writer) (watchdogSettings, error) {
	s := watchdogSettings{LogLevel: "info"}
	fs := flag.NewFlagSet("pharos watchdog", flag.ContinueOnError)
	fs.StringVar(&s.DataDir, "data-dir", "", "PostgreSQL data directory whose server is killed when the watchdog fires")
	fs.DurationVar(&s.Timeout, "timeout", 0, "fire when no feed arrives for this long (e.g. 3s)")
	fs.StringVar(&s.LogLevel, "log-level", s.LogLevel, "debug, info, warn or error")
	fs.IntVar(&s.ReadyFD, "ready-fd", 0, `file descriptor to write "armed" (or "error: why") to once counting (set by the agent)`)
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fmt.Fprintln(stderr, "usage: pharos watchdog --data-dir DIR --timeout 3s [flags]")
			fmt.Fprintln(stderr, "\nReads '.' (feed), \"T <duration>\\n\" (new timeout) and 'V' (magic close, then EOF) on stdin;\n"+
				"kills the PostgreSQL server of DIR when not fed in time. SIGTERM does not disarm it.")
			fs.PrintDefaults()
			return s, err
		}
		return s, usageErrorf("%v", err)
	}
	if fs.NArg() > 0 {
		return s, usageErrorf("unexpected argument %q", fs.Arg(0))
	}
	if s.ReadyFD != 0 && !isPipe(s.ReadyFD) {
		fd := s.ReadyFD
		s.ReadyFD = 0 // not ours to write to or close
		return s, usageErrorf("ready-fd: %d is not an open pipe", fd)
	}
	if s.DataDir == "" {
		return s, usageErrorf("data-dir: required (--data-dir)")
	}
	if st, err := os.Stat(s.DataDir); err != nil {
		return s, usageErrorf("data-dir: %v", err)
	} else if !st.IsDir() {
		return s, usageErrorf("data-dir: %s is not a directory", s.DataDir)
	}
	if s.Timeout <= 0 {
		return s, usageErrorf("timeout: %s must be positive (--timeout)", s.Timeout)
	}
	return s, nil
}

// runWatchdog is the software watchdog process: it reports readiness on
// --ready-fd, then counts until the magic close or until it fires. SIGTERM,
// SIGINT and SIGHUP do not stop it (only the magic close disarms); they are
// logged.
func runWatchdog(ctx context.Context, args []string, _, stderr io.Writer) int {
	s, err := parseWatchdogArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	var log *slog.Logger
	if err == nil {
		log, err = newLogger(stderr, s.LogLevel)
	}
	if err != nil {
		fmt.Fprintln(stderr, "pharos watchdog:", err)
		reportReady(s.ReadyFD, "error: "+err.Error())
		return exitUsage
	}

	// The signals that would end a daemon are ignored while armed. main's
	// context is cancelled by SIGTERM: RunSoftware gets one that is not.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case sig := <-sigs:
				log.Warn("watchdog ignores the signal while armed: only the magic close disarms it", "signal", sig.String())
			case <-done:
				return
			}
		}
	}()

	reportReady(s.ReadyFD, "armed")
	if err := watchdog.RunSoftware(context.WithoutCancel(ctx), os.Stdin, s.DataDir, s.Timeout, log); err != nil {
		fmt.Fprintln(stderr, "pharos watchdog:", err)
		return exitFailure
	}
	return exitOK
}

// reportReady writes one line to the readiness descriptor, if any, and
// closes it.
func reportReady(fd int, line string) {
	if fd == 0 {
		return
	}
	f := os.NewFile(uintptr(fd), "ready-fd")
	if f == nil {
		return
	}
	fmt.Fprintln(f, line)
	f.Close()
}

// isPipe reports whether fd is an open pipe (what the agent passes), so a
// mistaken --ready-fd never writes to or closes a descriptor of the runtime.
func isPipe(fd int) bool {
	var st syscall.Stat_t
	return fd > 2 && syscall.Fstat(fd, &st) == nil && st.Mode&syscall.S_IFMT == syscall.S_IFIFO
}
