package pglocal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pharos-ha/pharos/internal/pgproc"
)

// Bounds on waits, applied on top of the caller's context so a
// context.Background() never waits forever.
const (
	startTimeout   = 60 * time.Second // postmaster accepting connections
	stopTimeout    = 30 * time.Second // fast shutdown before SIGKILL
	reapTimeout    = 10 * time.Second // exit after SIGKILL
	commandTimeout = 2 * time.Minute  // initdb, pg_basebackup
	waitTimeout    = 60 * time.Second // replication states
)

// Instance is one PostgreSQL server (data directory plus, while running, a
// postmaster child process). Its methods are safe for concurrent use.
type Instance struct {
	// Static once NewCluster or AddReplica has returned it.

	// Name is the instance's name, also its cluster_name, its replication
	// slot name (replicas) and the base name of its files.
	Name string
	// DataDir is the data directory (PGDATA).
	DataDir string
	// Port is the TCP port on 127.0.0.1.
	Port int

	sockDir string
	logPath string
	binDir  string
	workDir string // cwd for child processes, reachable by the owner
	owner   pgproc.Owner
	log     *slog.Logger

	mu   sync.Mutex
	proc *postmaster // guarded by mu; nil when never started
}

// postmaster is one run of the server process.
type postmaster struct {
	pid  int
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // exit status; read only after done is closed
}

func (p *postmaster) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Addr returns "127.0.0.1:port".
func (in *Instance) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(in.Port))
}

// SocketDir returns the directory holding the instance's unix socket.
func (in *Instance) SocketDir() string { return in.sockDir }

// LogPath returns the file the postmaster's stdout and stderr go to.
func (in *Instance) LogPath() string { return in.logPath }

// DSN returns a keyword/value connection string for TCP on 127.0.0.1 with
// sslmode=disable. An empty password is left out. Later keywords override
// earlier ones, so callers may append e.g. " sslmode=require".
func (in *Instance) DSN(user, password, db string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "host=127.0.0.1 port=%d user=%s", in.Port, pgproc.QuoteConninfo(user))
	if password != "" {
		fmt.Fprintf(&b, " password=%s", pgproc.QuoteConninfo(password))
	}
	fmt.Fprintf(&b, " dbname=%s sslmode=disable connect_timeout=5", pgproc.QuoteConninfo(db))
	return b.String()
}

// Connect opens a pgx connection over TCP (sslmode=disable).
func (in *Instance) Connect(ctx context.Context, user, password, db string) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, in.DSN(user, password, db))
	if err != nil {
		return nil, fmt.Errorf("connect %s as %s: %w", in.Name, user, err)
	}
	return conn, nil
}

// superConn connects as the superuser to the postgres database.
func (in *Instance) superConn(ctx context.Context) (*pgx.Conn, error) {
	return in.Connect(ctx, SuperUser, "", "postgres")
}

// Pid returns the postmaster's pid, or 0 when it is not running.
func (in *Instance) Pid() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.proc == nil || in.proc.exited() {
		return 0
	}
	return in.proc.pid
}

// Running reports whether the postmaster started by Start is still alive.
func (in *Instance) Running() bool { return in.Pid() != 0 }

// Exited returns a channel closed when the current postmaster exits (already
// closed when none is running).
func (in *Instance) Exited() <-chan struct{} {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.proc == nil {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	return in.proc.done
}

// Start starts the postmaster and waits until it accepts connections (a
// standby: until it reached a consistent state and allows read-only
// connections). It fails at once if the postmaster exits, quoting the log.
func (in *Instance) Start(ctx context.Context) error {
	in.mu.Lock()
	if in.proc != nil && !in.proc.exited() {
		in.mu.Unlock()
		return fmt.Errorf("start %s: already running (pid %d)", in.Name, in.proc.pid)
	}
	// Backends of a postmaster that was killed behind our back outlive it
	// briefly and keep its shared memory, which a new postmaster refuses.
	if err := in.killLeftovers(); err != nil {
		in.mu.Unlock()
		return fmt.Errorf("start %s: %w", in.Name, err)
	}
	p, err := in.spawn()
	if err != nil {
		in.mu.Unlock()
		return fmt.Errorf("start %s: %w", in.Name, err)
	}
	in.proc = p
	in.mu.Unlock()

	in.log.Info("postmaster started", "instance", in.Name, "port", in.Port, "pid", p.pid)
	if err := in.waitReady(ctx, p); err != nil {
		if !p.exited() {
			err = errors.Join(err, in.killProcesses(p))
		}
		return fmt.Errorf("start %s: %w", in.Name, err)
	}
	return nil
}

// spawn starts the postmaster from a goroutine locked to its OS thread. The
// goroutine, and so the thread, lives until the postmaster exits: Pdeathsig
// fires when the creating thread exits, not the process.
func (in *Instance) spawn() (*postmaster, error) {
	logf, err := os.OpenFile(in.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	cmd := exec.Command(filepath.Join(in.binDir, "postgres"),
		"-D", in.DataDir,
		"-c", "port="+strconv.Itoa(in.Port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories="+in.sockDir,
		"-c", "cluster_name="+in.Name,
	)
	cmd.Dir = in.workDir
	cmd.Env = pgproc.ChildEnv()
	cmd.Stdout = logf
	cmd.Stderr = logf
	in.owner.Apply(cmd)
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL

	p := &postmaster{done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// Never unlocked: when this goroutine returns, the runtime ends the
		// thread, and by then the postmaster has exited.
		runtime.LockOSThread()
		err := cmd.Start()
		logf.Close() // the child has its own copy
		if err != nil {
			started <- err
			return
		}
		p.pid = cmd.Process.Pid
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("exec postgres: %w", err)
	}
	return p, nil
}

// waitReady polls with a superuser connection until the server accepts it.
func (in *Instance) waitReady(ctx context.Context, p *postmaster) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	var lastErr error
	err := poll(ctx, func(ctx context.Context) (bool, error) {
		if p.exited() {
			return false, fmt.Errorf("postmaster exited (%v): %s", p.err, in.logTail())
		}
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		defer ccancel()
		conn, err := in.superConn(cctx)
		if err != nil {
			lastErr = err
			return false, nil
		}
		conn.Close(cctx)
		return true, nil
	})
	if err != nil && ctx.Err() != nil && lastErr != nil {
		return fmt.Errorf("not accepting connections: %w (last error: %v)", err, lastErr)
	}
	return err
}

// Stop shuts the server down with SIGINT (fast shutdown: sessions are
// terminated, a shutdown checkpoint is written) and waits for the
// postmaster to exit. When ctx ends first (or after 30 s), it kills the
// server's processes and reports that. A server not running is not an error.
func (in *Instance) Stop(ctx context.Context) error {
	in.mu.Lock()
	p := in.proc
	in.mu.Unlock()
	if p == nil || p.exited() {
		return nil
	}
	// Thaw a server frozen with Signal(SIGSTOP), or it cannot shut down.
	_ = in.Signal(syscall.SIGCONT)
	if err := syscall.Kill(p.pid, syscall.SIGINT); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stop %s: signal: %w", in.Name, err)
	}
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-p.done:
		in.log.Info("postmaster stopped", "instance", in.Name, "pid", p.pid)
		return nil
	case <-ctx.Done():
	case <-timer.C:
	}
	if err := in.killProcesses(p); err != nil {
		return fmt.Errorf("stop %s: %w", in.Name, err)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("stop %s: fast shutdown did not finish, killed: %w", in.Name, context.Cause(ctx))
	}
	return fmt.Errorf("stop %s: fast shutdown did not finish in %v, killed", in.Name, stopTimeout)
}

// Kill SIGKILLs the postmaster and every other process of the server
// (backends, walsenders, checkpointer…), like a crash of the whole server,
// and waits (at most 10 s) until they are gone. The other processes are
// killed too so that a following Start does not find the old shared memory
// still in use.
func (in *Instance) Kill() error {
	in.mu.Lock()
	p := in.proc
	in.mu.Unlock()
	if p == nil || p.exited() {
		return nil
	}
	if err := in.killProcesses(p); err != nil {
		return fmt.Errorf("kill %s: %w", in.Name, err)
	}
	in.log.Info("postmaster killed", "instance", in.Name, "pid", p.pid)
	return nil
}

// Signal sends sig to every process of the server, e.g. SIGSTOP and
// SIGCONT to freeze and thaw it.
func (in *Instance) Signal(sig syscall.Signal) error {
	in.mu.Lock()
	p := in.proc
	in.mu.Unlock()
	if p == nil || p.exited() {
		return fmt.Errorf("signal %s: not running", in.Name)
	}
	for _, pid := range pgproc.ServerPids(in.DataDir, p.pid) {
		if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("signal %s pid %d: %w", in.Name, pid, err)
		}
	}
	return nil
}

// killProcesses SIGKILLs the postmaster, waits until it is reaped, then
// kills every remaining process of the server (its children outlive it
// briefly, reparented to init; they are found by their working directory,
// the data directory). Each wait is bounded by reapTimeout.
func (in *Instance) killProcesses(p *postmaster) error {
	_ = syscall.Kill(p.pid, syscall.SIGKILL)
	timer := time.NewTimer(reapTimeout)
	defer timer.Stop()
	select {
	case <-p.done:
	case <-timer.C:
		return fmt.Errorf("postmaster %d not reaped %v after SIGKILL", p.pid, reapTimeout)
	}
	return in.killLeftovers()
}

// killLeftovers SIGKILLs processes of the server that survive a dead
// postmaster, waiting up to reapTimeout for them to go.
func (in *Instance) killLeftovers() error {
	ctx, cancel := context.WithTimeout(context.Background(), reapTimeout)
	defer cancel()
	var left []int
	err := poll(ctx, func(context.Context) (bool, error) {
		left = pgproc.KillServer(in.DataDir, 0)
		return len(left) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("processes %v of an old postmaster still there after %v", left, reapTimeout)
	}
	return nil
}

// Promote ends recovery on a standby (pg_promote, waiting up to 60 s) and
// returns once it accepts writes.
func (in *Instance) Promote(ctx context.Context) error {
	conn, err := in.superConn(ctx)
	if err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_promote(true, 60)").Scan(&ok); err != nil {
		return fmt.Errorf("promote %s: %w", in.Name, err)
	}
	if !ok {
		return fmt.Errorf("promote %s: pg_promote returned false", in.Name)
	}
	in.log.Info("promoted", "instance", in.Name)
	return nil
}

// InRecovery returns pg_is_in_recovery().
func (in *Instance) InRecovery(ctx context.Context) (bool, error) {
	conn, err := in.superConn(ctx)
	if err != nil {
		return false, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var rec bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
		return false, fmt.Errorf("pg_is_in_recovery on %s: %w", in.Name, err)
	}
	return rec, nil
}

// logTail returns the end of the instance's log, for error messages.
func (in *Instance) logTail() string {
	tail, err := pgproc.Tail(in.logPath, 1500)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	return tail
}

// poll calls f with growing pauses (10 ms to 250 ms) until it reports done,
// returns an error, or ctx ends.
func poll(ctx context.Context, f func(context.Context) (bool, error)) error {
	pause := 10 * time.Millisecond
	for {
		done, err := f(ctx)
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return context.Cause(ctx)
		case <-t.C:
		}
		pause = min(pause*2, 250*time.Millisecond)
	}
}

// runCommand runs one of the PostgreSQL programs as the owner, bounded by
// ctx and commandTimeout, and returns its output in the error.
func runCommand(ctx context.Context, owner pgproc.Owner, workDir, binDir, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, name), args...)
	cmd.Dir = workDir
	cmd.Env = pgproc.ChildEnv()
	owner.Apply(cmd)
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}
