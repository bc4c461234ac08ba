package haagent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pharos-ha/pharos/haagent/core"
	"github.com/pharos-ha/pharos/internal/cluster"
)

func (a *Agent) member(o core.Observation, name string) (cluster.Member, error) {
	m, ok := o.DCS.Members[name]
	if !ok {
		return cluster.Member{}, fmt.Errorf("member %s has no record", name)
	}
	return m, nil
}

// serverConf is what the server's files say for the next start or
// reload: standby (following up, nil for none) or not, with the
// cluster's parameters and the synchronous standbys as they stand.
func (a *Agent) serverConf(standby bool, up *cluster.Member) serverConf {
	return serverConf{Standby: standby, Upstream: up, Dynamic: a.dynamic, SyncNames: a.syncNames}
}

// execute runs one action and lets Memory learn what it did.
func (a *Agent) execute(ctx context.Context, act core.Action, o core.Observation) error {
	err := a.run(ctx, act, o)
	res := core.Result{Action: act, At: a.now(), OK: err == nil, ConfigRev: o.DCS.ConfigRev,
		WatchdogFailed: errors.Is(err, errWatchdogRequired)}
	if rf := (*rewindError)(nil); errors.As(err, &rf) {
		res.Rewind = rf.class
	}
	a.mem.Apply(res)
	return err
}

// run runs one action with its own deadline.
func (a *Agent) run(ctx context.Context, act core.Action, o core.Observation) error {
	t := a.rules.Timing
	switch act.Kind {
	case core.ActBootstrap:
		return a.bootstrap(ctx, o)
	case core.ActClone, core.ActReclone:
		up, err := a.member(o, act.Target)
		if err != nil {
			return err
		}
		return a.cloneFrom(ctx, o, up, act)
	case core.ActRewind:
		up, err := a.member(o, act.Target)
		if err != nil {
			return err
		}
		return a.rewind(ctx, o, up)
	case core.ActStartPrimary:
		if err := a.pg.writeConf(a.serverConf(false, nil)); err != nil {
			return err
		}
		action := "on_start"
		if !o.Memory.CrashedAt.IsZero() {
			action = "on_restart" // in place, after a crash
		}
		return a.started(a.pg.start(ctx, a.cfg.StartTimeout), action, cluster.RolePrimary)
	case core.ActStartReplica:
		var up *cluster.Member
		if act.Target != "" {
			m, err := a.member(o, act.Target)
			if err != nil {
				return err
			}
			up = &m
		}
		if err := a.pg.writeConf(a.serverConf(true, up)); err != nil {
			return err
		}
		return a.started(a.pg.start(ctx, a.cfg.StartTimeout), "on_start", cluster.RoleReplica)
	case core.ActRepoint:
		up, err := a.member(o, act.Target)
		if err != nil {
			return err
		}
		if err := a.pg.writeConf(a.serverConf(true, &up)); err != nil {
			return err
		}
		return a.pg.reload(ctx)
	case core.ActAcquireLeader:
		cctx, cancel := a.callCtx(ctx)
		defer cancel()
		// Armed before the key is ours: from the moment others can see
		// this member lead, a hang kills its server in time.
		if err := a.armWatchdog(); err != nil {
			return err
		}
		epoch, err := a.dcs.acquire(cctx, a.lease.ID(), act.Rev)
		if err != nil || epoch == 0 {
			a.disarmWatchdog()
		}
		if err != nil {
			return err
		}
		if epoch == 0 {
			return errors.New("another member took the leader key first")
		}
		a.epoch = epoch
		a.view.LeaderIsMine, a.view.Leader, a.view.LeaderEpoch = true, a.rules.Name, epoch
		a.log.Info("leader key acquired", "epoch", epoch, "lsn", o.PG.Position().String())
		return nil
	case core.ActPromote:
		// In synchronous mode the new primary waits for any standby from
		// its first commit; the next round narrows it to named standbys.
		a.syncNames = nil
		if o.DCS.SyncMode.Enabled {
			a.syncNames = []string{"*"}
			var up *cluster.Member
			if m, ok := o.DCS.Members[o.PG.Upstream]; ok {
				up = &m
			}
			if err := a.pg.writeConf(a.serverConf(true, up)); err != nil {
				return err
			}
			if err := a.pg.reload(ctx); err != nil {
				return err
			}
		}
		if err := a.pg.promote(ctx); err != nil {
			return err
		}
		reason := act.Cause
		if reason == "" {
			reason = core.PromotionFailover
		}
		a.m.Promotions.WithLabelValues(reason).Inc()
		if err := a.pg.writeConf(a.serverConf(false, nil)); err != nil {
			return err
		}
		a.publishNow(ctx)
		// Writes are open; the checkpoint only updates the control file's
		// timeline, which pg_rewind on the former primary reads.
		if err := a.pg.checkpoint(ctx, nil); err != nil {
			a.log.Warn("checkpoint after promotion", "err", err)
		}
		return nil
	case core.ActRecordHistory:
		return a.recordHistory(ctx, act.Cause)
	case core.ActSyncSlots:
		return a.syncSlots(ctx, o)
	case core.ActStop:
		// Decide stops a running standby only when it cannot follow the
		// leader's timeline: Memory marks it for a rewind.
		return a.stopped(a.pg.stop(ctx, a.cfg.StopTimeout), cluster.RoleReplica)
	case core.ActDemote:
		a.log.Warn("demoting: stopping PostgreSQL", "grace", t.SafetyMargin/2)
		a.m.Demotions.Inc()
		err := a.stopped(a.pg.stop(ctx, t.SafetyMargin/2), cluster.RolePrimary)
		if err == nil {
			a.disarmWatchdog()
		}
		return err
	case core.ActSwitchover:
		return a.switchover(ctx, o, act)
	case core.ActSyncLeave, core.ActSyncNames, core.ActSyncJoin, core.ActSyncClear:
		return a.syncStep(ctx, o, act)
	case core.ActApplyConfig:
		var up *cluster.Member
		if m, ok := o.DCS.Members[o.PG.Upstream]; ok && o.PG.Standby {
			up = &m
		}
		if err := a.pg.writeConf(a.serverConf(o.PG.Standby, up)); err != nil {
			return err
		}
		if err := a.pg.reload(ctx); err != nil {
			return err
		}
		a.log.Info("dynamic configuration applied", "revision", o.DCS.ConfigRev)
		return nil
	case core.ActCancelSwitchover:
		cctx, cancel := a.callCtx(ctx)
		defer cancel()
		a.log.Warn("switchover request cancelled", "reason", act.Cause)
		return a.dcs.cancelSwitchover(cctx, act.Rev)
	case core.ActReleaseLeader:
		cctx, cancel := a.callCtx(ctx)
		defer cancel()
		if a.epoch == 0 {
			a.epoch = o.DCS.LeaderEpoch
		}
		released, err := a.dcs.release(cctx, a.epoch)
		if err != nil {
			return err
		}
		// Not released: the key with this epoch is gone (the lease
		// expired) or another member's. The epoch is over either way.
		if released {
			a.log.Info("leader key released", "epoch", a.epoch)
		} else {
			a.log.Warn("leader key not released: it is no longer this member's (lease expired or another member leads)", "epoch", a.epoch)
		}
		a.epoch = 0
		if !o.PG.Running || o.PG.InRecovery {
			a.disarmWatchdog()
		}
		return nil
	}
	return fmt.Errorf("unknown action %v", act)
}

// armWatchdog arms the watchdog before this member leads. A failure stops
// the step when the watchdog is required and is only logged otherwise.
func (a *Agent) armWatchdog() error {
	err := a.wd.arm()
	a.m.WatchdogArmed.Set(b2f(a.wd.armed()))
	if err == nil {
		return nil
	}
	if a.wd.mode == core.WatchdogRequired {
		return fmt.Errorf("%w: %w", errWatchdogRequired, err)
	}
	a.log.Warn("watchdog not armed; leading without it", "err", err)
	return nil
}

// disarmWatchdog disarms it once this member stopped leading cleanly.
func (a *Agent) disarmWatchdog() {
	if err := a.wd.disarm(); err != nil {
		a.log.Error("watchdog disarm failed", "err", err)
	}
	a.m.WatchdogArmed.Set(b2f(a.wd.armed()))
}

// started fires the start callback after a successful start (Memory
// records that the start applied the round's dynamic configuration).
func (a *Agent) started(err error, action string, role cluster.Role) error {
	if err == nil {
		a.cb.fire(action, role)
	}
	return err
}

// stopped fires on_stop after a successful stop.
func (a *Agent) stopped(err error, role cluster.Role) error {
	if err == nil {
		a.cb.fire("on_stop", role)
	}
	return err
}

func (a *Agent) recordHistory(ctx context.Context, reason string) error {
	var v core.PGView
	if err := a.pg.query(ctx, &v); err != nil {
		return err
	}
	if reason == "" {
		reason = core.PromotionFailover
	}
	e := cluster.HistoryEntry{Timeline: v.Timeline, Reason: reason, Time: a.now().UTC(), NewLeader: a.rules.Name, Epoch: a.epoch}
	if reason != core.PromotionBootstrap {
		e.OldLeader = a.lastLeader
	}
	if v.Timeline > 1 {
		sp, err := a.pg.switchPoint(v.Timeline)
		if err != nil {
			return err
		}
		e.LSN = sp
	}
	cctx, cancel := a.callCtx(ctx)
	defer cancel()
	return a.dcs.recordHistory(cctx, a.epoch, e)
}

// slotGrace is how long a member may be absent before its slot is dropped:
// a restarting agent's record disappears with its lease for a few seconds,
// and dropping its slot then would let the primary recycle WAL it needs.
func (a *Agent) slotGrace() time.Duration { return 10 * a.rules.Timing.TTL }

func (a *Agent) syncSlots(ctx context.Context, o core.Observation) error {
	var want, drop []string
	for name := range o.DCS.Members {
		if name != a.rules.Name {
			want = append(want, name)
		}
	}
	for name, r := range a.seen {
		if _, ok := o.DCS.Members[name]; !ok && name != a.rules.Name && o.Now.Sub(r.at) > a.slotGrace() {
			drop = append(drop, name)
			delete(a.seen, name)
		}
	}
	want, drop, shared := core.SlotPlan(want, drop)
	if err := a.pg.syncSlots(ctx, want, drop); err != nil {
		return err
	}
	return core.SharedSlotsError(shared)
}

// errWatchdogRequired marks a step that could not arm the required
// watchdog (Memory keeps this member out of elections for a while).
var errWatchdogRequired = errors.New("required watchdog")
