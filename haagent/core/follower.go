package core

import (
	"fmt"
	"time"

	"github.com/pharos-ha/pharos/internal/cluster"
)

// decideFollower: another member leads.
func decideFollower(o Observation, r Rules, leader string, leaderRec cluster.Member, leaderUp bool) Plan {
	pg := o.PG
	if pg.Running && !pg.InRecovery {
		return plan("primary without the key while "+leader+" leads", act(ActDemote))
	}
	if !leaderUp {
		return plan("waiting for leader " + leader + " to run as primary")
	}
	if !pg.Running {
		// A former primary may hold WAL the new timeline does not have;
		// pg_rewind decides precisely from both servers' WAL and is a no-op
		// when nothing diverged, so it is always its way back in. A
		// stopped standby is started as one (its crash recovery must run in
		// standby mode: pg_rewind's single-user recovery would end its
		// timeline); only one that was stopped because it could not
		// follow the new timeline is rewound.
		if !pg.Standby || o.Memory.RewindNeeded {
			if o.Memory.RewindFailed == leader {
				if r.AutoReinit && o.DCS.SyncMode.Enabled && o.DCS.Sync != nil && o.DCS.Sync.Has(r.Name) {
					return plan("rewind from " + leader + " failed; this synchronous standby may hold the only copy of acknowledged commits, so it is not wiped: needs an operator")
				}
				why := string(o.Memory.RewindFailure)
				if r.AutoReinit {
					return plan("rewind from "+leader+" cannot work ("+why+"): cloning again",
						Action{Kind: ActReclone, Target: leader, Reason: why}, actOn(ActStartReplica, leader))
				}
				return plan("rewind from " + leader + " cannot work (" + why + ") and auto_reinit is off: needs an operator")
			}
			if !pg.Standby {
				return plan("former primary rejoins "+leader, actOn(ActRewind, leader), actOn(ActStartReplica, leader))
			}
			return plan("timeline diverged from "+leader, actOn(ActRewind, leader), actOn(ActStartReplica, leader))
		}
		return plan("replica down", actOn(ActStartReplica, leader))
	}
	if pg.Upstream != leader {
		return plan("following "+orNone(pg.Upstream)+" instead of "+leader, actOn(ActRepoint, leader))
	}
	// Only while the leader is alive (its record keeps changing): a
	// standby whose new upstream dies right away is behind too, and must
	// not be stopped, let alone rewound or cloned, for that.
	if !o.Memory.BehindSince.IsZero() && o.Now.Sub(o.Memory.BehindSince) >= timelineSwitchWait(r.Timing) &&
		o.DCS.MemberSeenAt[leader].After(o.Memory.BehindSince) {
		return plan(fmt.Sprintf("still on timeline %d after %v while %s is on %d: diverged, stopping to rewind",
			pg.Timeline, o.Now.Sub(o.Memory.BehindSince).Round(time.Millisecond), leader, leaderRec.Timeline), act(ActStop))
	}
	return plan("replica of " + leader)
}
