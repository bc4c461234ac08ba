package core

import (
	"fmt"
	"time"

	"github.com/pharos-ha/pharos/internal/cluster"
)

// decideElection: nobody holds the key.
func decideElection(o Observation, r Rules) Plan {
	pg := o.PG
	if sw := o.DCS.Switchover; sw != nil && sw.Handover {
		switch {
		case sw.Candidate == r.Name && watchdogBlocked(o, r):
			return plan("switchover: the lead was handed to this member, but its required watchdog cannot be armed")
		case sw.Candidate == r.Name && pg.Running:
			cause := PromotionSwitchover
			if sw.Failover {
				cause = PromotionManualFailover
			}
			return plan("switchover: the lead was handed to this member",
				append([]Action{{Kind: ActAcquireLeader, Cause: cause, Rev: o.DCS.SwitchoverRev}}, promotion(pg, cause)...)...)
		case sw.Candidate == r.Name:
			return plan("switchover: the lead was handed to this member, but its server is down", actOn(ActStartReplica, ""))
		case o.Now.Sub(o.DCS.SwitchoverSeenAt) < handoverWait(r.Timing):
			return plan("switchover to " + sw.Candidate + " in progress")
		}
		// The candidate did not take the key in time: elect as usual.
	}
	if !pg.Running {
		return plan("no leader: start read-only to take part", actOn(ActStartReplica, ""))
	}
	// A primary that will not lead must stop taking writes before the
	// winner promotes, not one loop after.
	var lose []Action
	if !pg.InRecovery {
		lose = []Action{act(ActDemote)}
	}
	if why := ineligible(o, r); why != "" {
		return plan("no leader, not a candidate: "+why, lose...)
	}
	if late := unpublished(o, r); late != "" {
		return plan("no leader, waiting for " + late + " to publish its position")
	}
	if better := betterCandidate(o, r); better != "" {
		return plan("no leader, "+better+" is the better candidate", lose...)
	}
	return plan("no leader, healthiest eligible member",
		append([]Action{{Kind: ActAcquireLeader, Cause: PromotionFailover}}, promotion(pg, PromotionFailover)...)...)
}

// watchdogRetry is how long a member whose required watchdog could not be
// armed stays out of elections before it tries again.
const watchdogRetry = 30 * time.Second

// watchdogBlocked: a required watchdog failed to arm recently.
func watchdogBlocked(o Observation, r Rules) bool {
	return r.WatchdogRequired && !o.Memory.WatchdogFailedAt.IsZero() && o.Now.Sub(o.Memory.WatchdogFailedAt) < watchdogRetry
}

// ineligible says why this member must not take the lead, or "".
func ineligible(o Observation, r Rules) string {
	if r.Tags.NoFailover {
		return "tagged nofailover"
	}
	if watchdogBlocked(o, r) {
		return "the required watchdog cannot be armed"
	}
	if o.DCS.SyncMode.Enabled && (o.DCS.Sync == nil || !o.DCS.Sync.Has(r.Name)) {
		return "synchronous mode is on and this member is not a synchronous standby"
	}
	pos := o.PG.Position()
	if r.MaximumLagOnFailover > 0 && o.Memory.LastLeaderLSN > pos && int64(o.Memory.LastLeaderLSN-pos) > r.MaximumLagOnFailover {
		return fmt.Sprintf("%d bytes behind the last primary position %s (maximum_lag_on_failover %d)",
			int64(o.Memory.LastLeaderLSN-pos), o.Memory.LastLeaderLSN, r.MaximumLagOnFailover)
	}
	return ""
}

// timelineSwitchWait is how long a standby may follow the leader from an
// older timeline before it counts as diverged: a healthy one switches as
// soon as its walreceiver reconnects (wal_retrieve_retry_interval 500 ms).
func timelineSwitchWait(t Timing) time.Duration { return 2*t.LoopWait + t.RetryTimeout }

// electionWait bounds how long a candidate waits for peers to publish
// after the leader vanished: peers publish as soon as the same watch event
// wakes them, so this only matters when one of them is slow or dying.
func electionWait(t Timing) time.Duration { return min(t.RetryTimeout, 500*time.Millisecond) }

// candidates are the other members whose records count in an election:
// seen to change recently, running, not nofailover.
func candidates(o Observation, r Rules) []string {
	var out []string
	for name, m := range o.DCS.Members {
		if name == r.Name || m.Tags.NoFailover || o.Now.Sub(o.DCS.MemberSeenAt[name]) > r.Timing.StaleAfter() {
			continue
		}
		if m.Role != cluster.RoleReplica && m.Role != cluster.RolePrimary && m.Role != cluster.RoleDemoted {
			continue
		}
		if o.DCS.SyncMode.Enabled && (o.DCS.Sync == nil || !o.DCS.Sync.Has(name)) {
			continue
		}
		out = append(out, name)
	}
	return out
}

// unpublished names a candidate that has not published since the leader
// vanished, while the wait for it lasts.
func unpublished(o Observation, r Rules) string {
	if o.Memory.LeaderGoneRev == 0 || o.Now.Sub(o.Memory.LeaderGoneAt) >= electionWait(r.Timing) {
		return ""
	}
	for _, name := range candidates(o, r) {
		if o.DCS.MemberRev[name] < o.Memory.LeaderGoneRev {
			return name
		}
	}
	return ""
}

// betterCandidate names a fresh, eligible member that should win instead of
// this one, or "": the highest position wins, then the higher
// failover_priority, then the smaller name, so all members agree.
func betterCandidate(o Observation, r Rules) string {
	mine, myPrio := o.PG.Position(), r.Tags.FailoverPriority
	best := ""
	for _, name := range candidates(o, r) {
		m := o.DCS.Members[name]
		if r.MaximumLagOnFailover > 0 && o.Memory.LastLeaderLSN > max(m.LSN, m.ReceiveLSN) &&
			int64(o.Memory.LastLeaderLSN-max(m.LSN, m.ReceiveLSN)) > r.MaximumLagOnFailover {
			continue
		}
		theirs := max(m.LSN, m.ReceiveLSN)
		switch {
		case theirs > mine,
			theirs == mine && m.Tags.FailoverPriority > myPrio,
			theirs == mine && m.Tags.FailoverPriority == myPrio && name < r.Name:
			if best == "" || name < best {
				best = name // deterministic whatever the map order
			}
		}
	}
	return best
}

func orNone(s string) string {
	if s == "" {
		return "nobody"
	}
	return s
}
