package haagent

import (
	"context"
	"time"

	"github.com/pharos-ha/pharos/haagent/core"
)

func (a *Agent) observe(ctx context.Context) core.Observation {
	now := a.now()
	if a.lease.Gone() {
		a.replaceLease(ctx)
	}
	// A leader's read must not outlast its fencing deadline: a hung etcd
	// would otherwise hold the decision to fence back by a whole
	// retry_timeout.
	cctx, cancel := a.callCtx(ctx)
	if a.view.LeaderIsMine {
		cancel()
		deadline := now.Add(a.rules.Timing.RetryTimeout)
		if fd := a.fenceDeadline(); fd.Before(deadline) {
			deadline = fd
		}
		cctx, cancel = context.WithDeadline(ctx, deadline)
	}
	snap, err := a.dcs.read(cctx)
	cancel()
	if err != nil {
		a.view.Reachable = false
		a.m.EtcdUp.Set(0)
	} else {
		a.view = a.viewOf(snap, now)
		a.m.EtcdUp.Set(1)
	}
	now = a.now()
	a.m.RenewalAge.Set(now.Sub(a.lease.LastRenewed()).Seconds())
	o := core.Observation{
		Now:           now,
		WatchdogArmed: a.wd.armed(),
		DCS:           a.view,
		Lease: core.LeaseView{
			Held:        a.lease.ID() != 0 && !a.lease.Gone(),
			LastRenewed: a.lease.LastRenewed(),
		},
	}
	o.DCS.LeaderDeletedRev = a.leaderGoneRev.Load()
	o.PG = a.pg.observe(ctx)
	if o.PG.Running && !o.PG.InRecovery {
		a.syncNames = o.PG.SyncNames // what the server has, after an agent restart too
	}
	if leader := a.view.Leader; leader != "" && leader != a.rules.Name {
		a.lastLeader = leader
	}
	a.mem.Apply(o)
	o.Memory = a.mem
	return o
}

func (a *Agent) viewOf(s snapshot, now time.Time) core.DCSView {
	v := core.DCSView{
		Reachable:    true,
		Revision:     s.Revision,
		Initialized:  s.Initialized,
		SystemID:     s.Initialize.SystemID,
		Leader:       s.Leader,
		LeaderEpoch:  s.LeaderEpoch,
		Members:      s.Members,
		MemberRev:    s.MemberRev,
		MemberSeenAt: map[string]time.Time{},
		History:      s.History,
		Paused:       s.Paused,
		Switchover:   s.Switchover,
		ConfigRev:    s.ConfigRev,
		SyncMode:     s.SyncMode,
		Sync:         s.Sync,
	}
	a.dynamic, a.maxLag = s.Params, s.MaxLag
	a.m.Paused.Set(b2f(s.Paused))
	if s.SwitchRev != a.switchRev {
		a.switchRev, a.switchSeen = s.SwitchRev, now
	}
	v.SwitchoverSeenAt, v.SwitchoverRev = a.switchSeen, s.SwitchRev
	lease := a.lease.ID()
	v.LeaderIsMine = s.Leader == a.rules.Name && lease != 0 && s.LeaderLease == lease
	if v.LeaderIsMine {
		a.epoch = s.LeaderEpoch
	} else {
		a.epoch = 0
	}
	for name, rev := range s.MemberRev {
		r, ok := a.seen[name]
		if !ok || r.rev != rev {
			r = seenRecord{rev: rev, at: now}
			a.seen[name] = r
		}
		v.MemberSeenAt[name] = r.at
	}
	return v
}
