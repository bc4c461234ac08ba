package haagent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pharos-ha/pharos/haagent/core"
	"github.com/pharos-ha/pharos/internal/cluster"
)

// switchover hands the lead to target. Writes stop when the record says
// demoted (the proxy stops routing new sessions here and holds them for
// its route wait) and resume when target publishes primary.
func (a *Agent) switchover(ctx context.Context, o core.Observation, act core.Action) error {
	target := act.Target
	up, err := a.member(o, target)
	if err != nil {
		return err
	}
	sw := *o.DCS.Switchover
	epoch, rev := a.epoch, act.Rev
	a.log.Info("switchover: checkpoint before the stop", "to", target)
	if err := a.pg.checkpoint(ctx, nil); err != nil {
		return fmt.Errorf("switchover: checkpoint: %w", err)
	}
	// From here writes stop.
	demoted := o
	demoted.PG.Running = false
	a.publishRecord(ctx, demoted, cluster.RoleDemoted, "switchover to "+target)
	t0 := a.now()
	abort := func(cause error) error {
		a.log.Error("switchover aborted: restarting as primary", "err", cause)
		err := errors.Join(cause, a.pg.start(ctx, a.cfg.StartTimeout))
		cctx, cancel := a.callCtx(ctx)
		defer cancel()
		return errors.Join(err, a.dcs.cancelSwitchover(cctx, rev))
	}
	if err := a.pg.stop(ctx, a.cfg.StopTimeout); err != nil {
		return abort(fmt.Errorf("stop: %w", err))
	}
	a.cb.fire("on_stop", cluster.RolePrimary)
	a.m.Demotions.Inc()
	end, err := a.pg.shutdownCheckpoint(ctx)
	if err != nil {
		return abort(err)
	}
	if err := a.pg.waitReceived(ctx, up, end, 5*time.Second); err != nil {
		return abort(fmt.Errorf("%s did not receive all WAL: %w", target, err))
	}
	sw.Candidate, sw.Handover, sw.HandoverAt = target, true, a.now().UTC()
	cctx, cancel := a.callCtx(ctx)
	defer cancel()
	if err := a.dcs.handover(cctx, epoch, rev, sw); err != nil {
		return abort(err)
	}
	a.epoch = 0
	a.view.LeaderIsMine = false
	a.disarmWatchdog()
	a.log.Info("switchover: lead handed over", "to", target, "shutdown_checkpoint", end.String(), "stopped_in", a.now().Sub(t0).Round(time.Millisecond))
	return nil
}
