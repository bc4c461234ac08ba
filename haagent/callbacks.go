package haagent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/pgproc"
)

// Callbacks are operator commands run on events, Patroni-style: each is
// called as `<command> <action> <role> <cluster>` with PHAROS_MEMBER,
// PHAROS_ROLE and PHAROS_CLUSTER in its environment, and none of the
// agent's secrets (pgproc.IsSecretEnv).
type Callbacks struct {
	OnStart, OnStop, OnRestart, OnRoleChange string
	// Timeout bounds one run; the command's process group is killed then.
	Timeout time.Duration
}

func (c Callbacks) command(action string) string {
	switch action {
	case "on_start":
		return c.OnStart
	case "on_stop":
		return c.OnStop
	case "on_restart":
		return c.OnRestart
	case "on_role_change":
		return c.OnRoleChange
	}
	return ""
}

type callbackJob struct {
	action string
	role   cluster.Role
}

// callbackRunner runs callbacks one at a time, in order, on its own
// goroutine, so that a slow or hung command never holds the HA loop back.
// When more than queueSize are waiting, new ones are dropped and logged.
type callbackRunner struct {
	cfg         Callbacks
	member, clu string
	log         *slog.Logger
	queue       chan callbackJob
}

const callbackQueueSize = 32

func newCallbackRunner(cfg Callbacks, member, clu string, log *slog.Logger) *callbackRunner {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	return &callbackRunner{cfg: cfg, member: member, clu: clu, log: log, queue: make(chan callbackJob, callbackQueueSize)}
}

// fire queues action without blocking.
func (r *callbackRunner) fire(action string, role cluster.Role) {
	if r.cfg.command(action) == "" {
		return
	}
	select {
	case r.queue <- callbackJob{action, role}:
	default:
		r.log.Warn("callback dropped: too many waiting", "action", action, "role", role)
	}
}

// run executes queued callbacks until ctx ends.
func (r *callbackRunner) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case j := <-r.queue:
			r.exec(ctx, j)
		}
	}
}

// exec runs one callback, bounded by the timeout and ctx.
func (r *callbackRunner) exec(ctx context.Context, j callbackJob) {
	fields := strings.Fields(r.cfg.command(j.action))
	if len(fields) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	cmd := exec.Command(fields[0], append(fields[1:], j.action, string(j.role), r.clu)...)
	cmd.Env = append(pgproc.WithoutSecrets(os.Environ()), "PHAROS_MEMBER="+r.member, "PHAROS_ROLE="+string(j.role), "PHAROS_CLUSTER="+r.clu)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		r.log.Error("callback failed to start", "action", j.action, "err", err)
		return
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		err = <-done
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = errors.New("killed after " + r.cfg.Timeout.String())
		}
	}
	if err != nil {
		r.log.Error("callback failed", "action", j.action, "role", j.role, "err", err, "output", lastLines(out.String(), 3))
		return
	}
	r.log.Info("callback done", "action", j.action, "role", j.role, "took", time.Since(t0).Round(time.Millisecond))
}
