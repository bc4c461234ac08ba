package haagent

import (
	"context"
	"errors"
	"fmt"

	"github.com/pharos-ha/pharos/haagent/core"
	"github.com/pharos-ha/pharos/internal/cluster"
)

// cloneFrom clones the data directory from up. A reclone first stops the
// server and wipes the data directory, once up answered as a primary and
// no process of the old server is left: never wipe for a source that
// would not give a copy back. A failed clone leaves an empty data
// directory, not a partial one.
func (a *Agent) cloneFrom(ctx context.Context, o core.Observation, up cluster.Member, act core.Action) error {
	if act.Kind == core.ActReclone {
		if err := a.pg.checkSource(ctx, up); err != nil {
			return err
		}
		if err := a.pg.stop(ctx, a.cfg.StopTimeout); err != nil {
			return err
		}
		if err := a.pg.wipe(); err != nil {
			return fmt.Errorf("wipe data directory: %w", err)
		}
		a.m.Reclones.WithLabelValues(act.Reason).Inc()
		a.log.Warn("data directory wiped for a fresh clone", "from", up.Name, "reason", act.Reason)
	}
	if err := a.clone(ctx, o, up); err != nil {
		_ = a.pg.wipe()
		return fmt.Errorf("clone from %s: %w", up.Name, err)
	}
	return nil
}

// clone copies the data directory from up with pg_basebackup, logging and
// publishing its progress: the member is "starting", with nothing of its
// own yet.
func (a *Agent) clone(ctx context.Context, o core.Observation, up cluster.Member) error {
	empty := o
	empty.PG = core.PGView{}
	live := a.startLive(ctx, a.record(empty, cluster.RoleStarting, "creating replica from "+up.Name))
	defer live.stop()
	log := a.log.With("from", up.Name)
	r := newCopyReporter(log, a.now, "pg_basebackup", "clone progress", "creating replica", live)
	// The steps without progress reports can be long on a big or busy
	// source: they are what an operator sees meanwhile.
	r.phases = []phase{
		{"waiting for checkpoint", "waiting for a checkpoint on " + up.Name},
		{"waiting for background process to finish streaming", "streaming the last WAL"},
		{"syncing data to disk", "syncing to disk"},
	}
	log.Info("cloning", "addr", up.Addr())
	return a.pg.basebackup(ctx, up, r.line)
}

// rewind runs pg_rewind from up, logging and publishing its progress, and
// decides from its failure whether a later round retries or only a fresh
// copy can help (Memory.RewindFailed, which Decide turns into a reclone).
func (a *Agent) rewind(ctx context.Context, o core.Observation, up cluster.Member) error {
	label := "rewinding from " + up.Name
	// pg_rewind runs on a stopped server only.
	live := a.startLive(ctx, a.record(o, cluster.RoleStopped, label))
	r := newCopyReporter(a.log.With("from", up.Name), a.now, "pg_rewind", "rewind progress", label, live)
	r.phases = []phase{
		{"complete crash recovery", "recovering this server first"},
		{"syncing target data directory", "syncing to disk"},
	}
	run, err := a.pg.rewind(ctx, up, r.line)
	live.stop()
	if err == nil {
		a.m.Rewinds.WithLabelValues("done").Inc()
		return nil
	}
	raw := core.ClassifyRewind(run.lines, err, run.copied, run.killed)
	if errors.Is(err, errServerAlive) {
		raw = core.RewindServerRunning
	}
	// What Memory will make of it once the result is applied.
	class := a.mem.RewindVerdict(raw)
	if !class.Permanent() {
		a.m.Rewinds.WithLabelValues("retry").Inc()
		a.log.Warn("rewind failed; retrying next round: nothing suggests a fresh copy is needed",
			"from", up.Name, "cause", string(class), "err", err)
		return &rewindError{class: raw, err: fmt.Errorf("rewind from %s (%s, will retry): %w", up.Name, class, err)}
	}
	a.m.Rewinds.WithLabelValues("failed").Inc()
	a.log.Error("rewind cannot work: this member needs a fresh copy", "from", up.Name, "cause", string(class), "err", err)
	return &rewindError{class: raw, err: fmt.Errorf("rewind from %s (%s): %w", up.Name, class, err)}
}

// rewindError is a failed rewind with its class as ClassifyRewind named
// it, for the step's Result.
type rewindError struct {
	class core.RewindFailure
	err   error
}

func (e *rewindError) Error() string { return e.err.Error() }

func (e *rewindError) Unwrap() error { return e.err }
