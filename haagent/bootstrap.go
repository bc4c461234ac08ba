package haagent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pharos-ha/pharos/haagent/core"
	"github.com/pharos-ha/pharos/internal/cluster"
)

// bootstrap claims the initialize key, runs initdb, starts and leads.
func (a *Agent) bootstrap(ctx context.Context, o core.Observation) error {
	lease := a.lease.ID()
	// The software watchdog watches the data directory: it must exist
	// (empty; initdb fills it) before arming.
	if err := a.cfg.Postgres.Owner.MkdirAll(a.cfg.Postgres.DataDir, 0o700); err != nil {
		return err
	}
	if err := a.armWatchdog(); err != nil {
		return err
	}
	cctx, cancel := a.callCtx(ctx)
	ok, err := a.dcs.claimInitialize(cctx, lease)
	cancel()
	if err != nil {
		return err
	}
	if !ok {
		a.disarmWatchdog()
		a.log.Info("another member is bootstrapping the cluster")
		return nil
	}
	a.log.Info("bootstrapping the cluster", "data_dir", a.cfg.Postgres.DataDir)
	live := a.startLive(ctx, a.record(o, cluster.RoleStarting, "bootstrapping: initdb"))
	defer live.stop()
	t0 := a.now()
	last := t0
	// Each step is logged with its duration: initdb and the first start
	// can take a while on slow disks, and the member record shows which
	// one runs.
	done := func(step, next string) {
		now := a.now()
		a.log.Info("bootstrap step done", "step", step, "took", now.Sub(last).Round(time.Millisecond), "elapsed", now.Sub(t0).Round(time.Millisecond))
		last = now
		live.set("bootstrapping: " + next)
	}
	fail := func(err error) error {
		_ = a.pg.stop(context.WithoutCancel(ctx), 10*time.Second)
		a.disarmWatchdog()
		_ = a.pg.wipe()
		cctx, cancel := a.callCtx(context.WithoutCancel(ctx))
		defer cancel()
		switch dropped, derr := a.dcs.dropInitialize(cctx, lease); {
		case derr != nil:
			err = errors.Join(err, fmt.Errorf("remove initialize key: %w", derr))
		case !dropped:
			a.log.Warn("initialize key left alone: it is no longer this member's claim (the lease expired meanwhile)")
		}
		return fmt.Errorf("bootstrap: %w", err)
	}
	if err := a.pg.initdb(ctx); err != nil {
		return fail(err)
	}
	if err := a.pg.writeConf(a.serverConf(false, nil)); err != nil {
		return fail(err)
	}
	done("initdb", "first start")
	if err := a.pg.start(ctx, a.cfg.StartTimeout); err != nil {
		return fail(err)
	}
	done("first start", "creating roles")
	if err := a.pg.createRoles(ctx); err != nil {
		return fail(err)
	}
	done("roles", "taking the leader key")
	cctx, cancel = a.callCtx(ctx)
	epoch, err := a.dcs.acquire(cctx, lease, 0)
	cancel()
	if err != nil || epoch == 0 {
		return fail(fmt.Errorf("take the leader key: %v", err))
	}
	a.epoch = epoch
	done("leader key", "recording the system identifier")
	var v core.PGView
	if err := a.pg.query(ctx, &v); err != nil {
		return fail(err)
	}
	cctx, cancel = a.callCtx(ctx)
	err = a.dcs.finishInitialize(cctx, epoch, v.SystemID)
	cancel()
	if err != nil {
		return fail(err)
	}
	if err := a.recordHistory(ctx, core.PromotionBootstrap); err != nil {
		a.log.Warn("bootstrap history not recorded", "err", err)
	}
	a.m.Promotions.WithLabelValues(core.PromotionBootstrap).Inc()
	a.log.Info("cluster bootstrapped", "system_id", v.SystemID, "epoch", epoch, "took", a.now().Sub(t0).Round(time.Millisecond))
	return nil
}
