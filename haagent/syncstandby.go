package haagent

import (
	"context"
	"fmt"
	"time"

	"github.com/pharos-ha/pharos/haagent/core"
	"github.com/pharos-ha/pharos/internal/cluster"
)

// syncStep carries out one step of the synchronous-standby protocol
// (Decide orders them so that the sync key stays true) and keeps the
// gauges: the key's standbys after each write, degraded as the step's
// reason says.
func (a *Agent) syncStep(ctx context.Context, o core.Observation, act core.Action) error {
	me, mode := a.rules.Name, o.DCS.SyncMode
	write := func(list []string) error {
		cctx, cancel := a.callCtx(ctx)
		defer cancel()
		if list == nil {
			list = []string{}
		}
		return a.dcs.writeSync(cctx, a.epoch, &cluster.SyncState{Leader: me, Standbys: list})
	}
	switch act.Kind {
	case core.ActSyncLeave:
		if err := write(act.Standbys); err != nil {
			return err
		}
		a.m.SyncStandbys.Set(float64(len(act.Standbys)))
	case core.ActSyncNames:
		names := act.Standbys
		a.syncNames = names
		if err := a.pg.writeConf(a.serverConf(false, nil)); err != nil {
			return err
		}
		if err := a.pg.reload(ctx); err != nil {
			return err
		}
		a.log.Info("synchronous_standby_names changed", "to", formatSyncNames(names))
		if mode.Enabled && len(names) > 0 {
			a.m.SyncDegraded.Set(0)
		}
	case core.ActSyncJoin:
		want := act.Standbys
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		for {
			states, err := a.pg.syncStates(wctx)
			if err != nil {
				return err
			}
			ready := true
			for _, n := range want {
				if st := states[n]; st != "sync" && st != "quorum" {
					ready = false
				}
			}
			if ready {
				break
			}
			select {
			case <-wctx.Done():
				return fmt.Errorf("standbys %v not synchronous yet: %v", want, states)
			case <-time.After(50 * time.Millisecond):
			}
		}
		if err := write(want); err != nil {
			return err
		}
		a.log.Info("synchronous standbys", "standbys", want)
		a.m.SyncStandbys.Set(float64(len(want)))
		a.m.SyncDegraded.Set(0)
	case core.ActSyncClear:
		cctx, cancel := a.callCtx(ctx)
		defer cancel()
		if err := a.dcs.writeSync(cctx, a.epoch, nil); err != nil {
			return err
		}
		a.m.SyncStandbys.Set(0)
	}
	if act.Reason == core.SyncDegraded {
		a.log.Warn("synchronous mode degraded: no healthy standby, commits are not waiting for any")
		a.m.SyncDegraded.Set(1)
	}
	return nil
}
