package haagent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pharos-ha/pharos/internal/pgproc"
)

// lockedPid is the PID postmaster.pid names, 0 when there is none.
func (p *postgres) lockedPid() int {
	pid, _ := pgproc.PidFile(p.cfg.DataDir)
	return pid
}

// postmasterPid returns the PID in postmaster.pid when it is a live server
// of this data directory (or a live process /proc cannot describe: never
// take a running server for a dead one). A zombie or a process that reused
// the PID is no server.
func (p *postgres) postmasterPid() int {
	pid := p.lockedPid()
	if pid == 0 {
		return 0
	}
	switch pgproc.HolderOf(pid, p.cfg.DataDir) {
	case pgproc.HolderServer, pgproc.HolderUnknown:
		return pid
	}
	return 0
}

// errServerAlive: a process of the data directory's server still runs, so
// nothing may touch the directory without it yet. A later round retries.
var errServerAlive = errors.New("server still running")

// awaitDead returns once no process of this data directory's server is
// alive, before anything works on the directory without the server
// (pg_rewind, pg_ctl start, a wipe). A live postmaster is waited for,
// never killed: whoever stops it decides how. Backends that outlive their
// postmaster hold its shared memory and are killed. Lock files naming a
// dead or foreign process are then removed: PostgreSQL's own check
// (kill(pid, 0)) takes a zombie that init has not reaped yet, or a PID
// reused by another program, for a live postmaster and refuses to run,
// which made a rewind fail right after a watchdog killed the server.
// It waits at most bound, then fails with errServerAlive.
func (p *postgres) awaitDead(ctx context.Context, bound time.Duration) error {
	deadline := time.Now().Add(bound)
	waiting := false
	for {
		pid, holder := p.lockedPid(), pgproc.HolderGone
		if pid != 0 {
			holder = pgproc.HolderOf(pid, p.cfg.DataDir)
		}
		postmaster := holder == pgproc.HolderServer || holder == pgproc.HolderUnknown
		var left []int
		if postmaster {
			left = pgproc.ServerProcesses(p.cfg.DataDir)
		} else {
			left = pgproc.KillServer(p.cfg.DataDir, 0)
		}
		if !postmaster && len(left) == 0 {
			if pid != 0 {
				p.log.Info("removing the lock file of a server that is gone", "pid", pid, "process", holder.String())
			}
			break
		}
		if time.Now().After(deadline) {
			if postmaster {
				return fmt.Errorf("%w: postmaster %d still alive after %v", errServerAlive, pid, bound)
			}
			return fmt.Errorf("%w: processes %v of a dead postmaster do not go away after %v", errServerAlive, left, bound)
		}
		if !waiting {
			waiting = true
			p.log.Info("waiting for the server's processes to exit", "postmaster", pid, "postmaster_alive", postmaster,
				"processes", left, "up_to", bound)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", errServerAlive, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	sock := filepath.Join(p.cfg.SocketDir, fmt.Sprintf(".s.PGSQL.%d", p.cfg.Port))
	for _, stale := range []string{p.path("postmaster.pid"), sock + ".lock", sock} {
		if err := os.Remove(stale); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stale lock file: %w", err)
		}
	}
	return nil
}

// run runs a PostgreSQL program as the owner, bounded by timeout and ctx;
// env adds variables (passwords go there, never on the command line).
func (p *postgres) run(ctx context.Context, timeout time.Duration, env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out, err := p.command(ctx, env, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", name, err, lastLines(string(out), 5))
	}
	return string(out), nil
}

// command prepares a PostgreSQL program to run as the owner beside the
// data directory, killed when ctx ends; env adds variables.
func (p *postgres) command(ctx context.Context, env []string, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(p.cfg.BinDir, name), args...)
	cmd.Dir = filepath.Dir(p.cfg.DataDir)
	cmd.Env = append(pgproc.ChildEnv(), env...)
	p.cfg.Owner.Apply(cmd)
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// errStalled is the cause of a copy killed after printing nothing for
// copyStallTimeout.
var errStalled = errors.New("no output")

// runLines runs a program like run, but hands each line of its output to
// onLine as it comes (from exec's output goroutine; run returns after the
// last call). Lines for which onLine returns false, the ones that are not
// progress reports, are kept: the error names the last of them, and they
// are returned. The program is killed once it has printed nothing for
// stall.
func (p *postgres) runLines(ctx context.Context, timeout, stall time.Duration, env []string, onLine func(string) bool, name string, args ...string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ctx, stalled := context.WithCancelCause(ctx)
	defer stalled(nil)
	quiet := time.AfterFunc(stall, func() { stalled(fmt.Errorf("%w for %s", errStalled, stall)) })
	defer quiet.Stop()
	cmd := p.command(ctx, env, name, args...)
	// Enough for the whole of an error (libpq's come with a hint line, a
	// pg_rewind's with the server's log lines) without keeping a long
	// run's every line.
	kept := tailLines{max: 20}
	w := &lineWriter{fn: func(l string) {
		quiet.Reset(stall)
		if !onLine(l) {
			kept.add(l)
		}
	}}
	cmd.Stdout, cmd.Stderr = w, w
	err := cmd.Run()
	w.flush()
	if err != nil {
		if cause := context.Cause(ctx); errors.Is(cause, errStalled) {
			err = fmt.Errorf("%w (killed: %w)", err, cause)
		}
		return kept.lines, fmt.Errorf("%s: %w: %s", name, err, kept.String())
	}
	return kept.lines, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// start starts the server with pg_ctl and waits until it accepts
// connections, once nothing of an earlier server lives (awaitDead).
func (p *postgres) start(ctx context.Context, timeout time.Duration) error {
	if p.postmasterPid() != 0 {
		return nil
	}
	if err := p.awaitDead(ctx, p.deadWait); err != nil {
		return err
	}
	secs := max(int(timeout/time.Second), 1)
	_, err := p.run(ctx, timeout+5*time.Second, nil, "pg_ctl", "start", "-D", p.cfg.DataDir, "-l", p.logPath,
		"-w", "-t", strconv.Itoa(secs), "-s")
	if err != nil {
		logTail, _ := pgproc.Tail(p.logPath, 600)
		return fmt.Errorf("%w (log %s: %s)", err, p.logPath, logTail)
	}
	return nil
}

// stop shuts the server down: fast (sessions cut, shutdown checkpoint,
// standbys sent all WAL), escalated to SIGKILL of every server process
// when it takes longer than grace. It returns once no process is left.
func (p *postgres) stop(ctx context.Context, grace time.Duration) error {
	// Bounded by awaitDead, also when ctx ended: a stop that was asked for
	// finishes.
	done := context.WithoutCancel(ctx)
	pid := p.postmasterPid()
	if pid == 0 {
		return p.awaitDead(done, p.deadWait)
	}
	_ = syscall.Kill(pid, syscall.SIGINT)
	deadline := time.NewTimer(grace)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for pgproc.ProcessAlive(pid) {
		select {
		case <-tick.C:
			continue
		case <-deadline.C:
		case <-ctx.Done():
		}
		p.log.Warn("fast shutdown too slow: killing the server", "grace", grace)
		pgproc.KillServer(p.cfg.DataDir, pid)
		break
	}
	return p.awaitDead(done, p.deadWait)
}

func (p *postgres) promote(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := p.connect(ctx, nil)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_promote(true, 25)").Scan(&ok); err != nil {
		return err
	}
	if !ok {
		return errors.New("pg_promote returned false")
	}
	return nil
}
