package haagent

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pharos-ha/pharos/haagent/core"
)

// watchLoop wakes the loop on every change under the cluster prefix, so a
// vanished leader key starts an election at once instead of at the next
// tick, and records the revision of leader deletions.
func (a *Agent) watchLoop(ctx context.Context) {
	leaderKey, ownKey := a.dcs.keys.Leader(), a.dcs.keys.Member(a.rules.Name)
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for resp := range a.dcs.cli.Watch(wctx, a.dcs.keys.Prefix(), clientv3.WithPrefix()) {
			if resp.Err() != nil {
				break
			}
			wake := false
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypeDelete && string(ev.Kv.Key) == leaderKey {
					a.leaderGoneRev.Store(ev.Kv.ModRevision)
				}
				// Its own record changes every round: waking for it
				// would make the loop feed itself.
				if string(ev.Kv.Key) != ownKey || ev.Type == clientv3.EventTypeDelete {
					wake = true
				}
			}
			if wake {
				a.poke()
			}
		}
		cancel()
		select {
		case <-ctx.Done():
		case <-time.After(a.rules.Timing.LoopWait / 4):
		}
	}
}

// postmasterLoop wakes the loop within 50 ms of the postmaster dying, so a
// crash under a live leader is restarted at once.
func (a *Agent) postmasterLoop(ctx context.Context) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	last := a.pg.postmasterPid()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pid := a.pg.postmasterPid()
		if last != 0 && pid != last {
			a.poke()
		}
		last = pid
	}
}

// fenceDeadline is when a leader without a newer renewal must fence.
func (a *Agent) fenceDeadline() time.Time {
	return a.lease.LastRenewed().Add(a.rules.Timing.FenceAfter())
}

func (a *Agent) loop(ctx context.Context) {
	tick := time.NewTicker(a.rules.Timing.LoopWait)
	defer tick.Stop()
	fence := time.NewTimer(time.Hour)
	defer fence.Stop()
	for {
		progressed := a.iterate(ctx)
		if progressed {
			continue
		}
		// A leader also wakes at its fencing deadline, whatever else is
		// going on.
		// Only a deadline still ahead: once it passed, the round that
		// just ran fenced, and waking again every millisecond would spin.
		if until := time.Until(a.fenceDeadline()); a.view.LeaderIsMine && until > 0 {
			fence.Reset(until + time.Millisecond)
		} else {
			fence.Stop()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-fence.C:
		case <-a.wake:
		case req := <-a.requests:
			req.reply <- a.serveRequest(ctx, req)
		}
	}
}

// waitLogEvery paces the reminders that a member whose server is down is
// still waiting (for the bootstrap elsewhere, for a leader to run): the
// plan is logged when it changes, and a wait can last minutes.
const waitLogEvery = 15 * time.Second

// iterate is one observe → decide → execute round. It reports whether the
// plan changed the state, so the next round should follow at once.
func (a *Agent) iterate(ctx context.Context) bool {
	obs := a.observe(ctx)
	// Decided before publishing: a member without data publishes what it
	// waits for or is about to do.
	p := core.Decide(obs, a.currentRules())
	a.publish(ctx, obs, p)
	if s := p.String(); s != a.lastPlan {
		a.log.Info("plan", "plan", s, "leader", obs.DCS.Leader, "epoch", obs.DCS.LeaderEpoch,
			"timeline", obs.PG.Timeline, "lsn", obs.PG.Position().String())
		a.lastPlan, a.planSince = s, obs.Now
		a.waitLog.reset(obs.Now)
	} else if len(p.Actions) == 0 && !obs.PG.Running && a.waitLog.due(obs.Now, 0) {
		a.log.Info("still waiting", "reason", p.Reason, "for", obs.Now.Sub(a.planSince).Round(time.Second))
	}
	changed, _ := a.executePlan(ctx, p, obs)
	return changed
}

// currentRules are the rules with the dynamic configuration's overrides.
func (a *Agent) currentRules() core.Rules {
	rules := a.rules
	if a.maxLag != nil {
		rules.MaximumLagOnFailover = *a.maxLag
	}
	return rules
}

// executePlan runs p's steps in order, stopping at the first that fails.
// changed reports whether a step changed the state (so the next round
// should follow at once).
func (a *Agent) executePlan(ctx context.Context, p core.Plan, obs core.Observation) (changed bool, err error) {
	for _, act := range p.Actions {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		t0 := a.now()
		if err := a.execute(ctx, act, obs); err != nil {
			a.m.ActionFailures.WithLabelValues(act.Kind.String()).Inc()
			a.log.Error("action failed", "action", act.String(), "err", err, "took", a.now().Sub(t0).Round(time.Millisecond))
			return false, err
		}
		if act.Kind != core.ActSyncSlots {
			changed = true
			a.log.Info("action done", "action", act.String(), "took", a.now().Sub(t0).Round(time.Millisecond), "epoch", a.epoch)
		}
	}
	return changed, nil
}
