package core

import (
	"fmt"
	"time"

	"github.com/pharos-ha/pharos/internal/cluster"
)

// Decide owns every HA rule: given one observation it returns what this
// member must do. It is pure: no clock, no I/O, same input, same plan.
func Decide(o Observation, r Rules) Plan {
	p := decide(o, r)
	// A changed dynamic configuration is applied to a running server when
	// nothing else is going on (a start writes it anyway).
	if o.PG.Running && o.DCS.Reachable && o.DCS.ConfigRev != o.Memory.AppliedConfigRev && !changesServer(p) {
		p.Actions = append(p.Actions, act(ActApplyConfig))
	}
	return p
}

// changesServer reports whether a plan stops, starts or replaces the server.
func changesServer(p Plan) bool {
	for _, a := range p.Actions {
		switch a.Kind {
		case ActSyncSlots, ActRecordHistory, ActAcquireLeader, ActCancelSwitchover, ActRepoint:
		default:
			return true
		}
	}
	return false
}

func decide(o Observation, r Rules) Plan {
	pg, dcs := o.PG, o.DCS

	// Fencing comes before everything: a leader that cannot prove its
	// lease is alive must stop accepting writes before etcd can expire it
	// and let another member promote.
	// Pause does not suspend it: a paused leader cut off from etcd cannot
	// know that an operator resumed the cluster meanwhile.
	if dcs.LeaderIsMine {
		if since := o.Now.Sub(o.Lease.LastRenewed); !o.Lease.Held || since >= r.Timing.FenceAfter() {
			reason := fmt.Sprintf("lease not renewed for %v (fence after %v)", since.Round(time.Millisecond), r.Timing.FenceAfter())
			if !o.Lease.Held {
				reason = "lease lost"
			}
			steps := []Action{}
			if pg.Running && !pg.InRecovery {
				steps = append(steps, act(ActDemote))
			}
			if dcs.Reachable {
				steps = append(steps, act(ActReleaseLeader))
			}
			return plan(reason, steps...)
		}
	}

	if !dcs.Reachable {
		if pg.Running && !pg.InRecovery && !dcs.LeaderIsMine && !dcs.Paused {
			return plan("etcd unreachable and this primary does not hold the key", act(ActDemote))
		}
		return plan("etcd unreachable: keeping the last state")
	}

	if !dcs.Initialized {
		if pg.Data == DataMissing && watchdogBlocked(o, r) {
			return plan("cluster not initialized, but the required watchdog cannot be armed: leaving the bootstrap to others")
		}
		if pg.Data == DataMissing {
			return plan("cluster not initialized", act(ActBootstrap))
		}
		return plan("cluster not initialized but this data directory exists: refusing to bootstrap over it")
	}
	if dcs.SystemID == "" && !dcs.LeaderIsMine {
		// Whatever this node holds, the cluster's identity is not known
		// yet: nothing here may start, lead or clone.
		return plan("bootstrap in progress elsewhere")
	}
	if dcs.SystemID != "" && pg.Data == DataPresent && pg.SystemID != "" && pg.SystemID != dcs.SystemID {
		return plan(fmt.Sprintf("data directory belongs to system %s, cluster is %s", pg.SystemID, dcs.SystemID))
	}

	leader, leaderRec, leaderUp := dcs.Leader, cluster.Member{}, false
	if leader != "" {
		leaderRec, leaderUp = dcs.Members[leader]
		leaderUp = leaderUp && leaderRec.Role == cluster.RolePrimary
	}

	if o.Request == RequestReinitialize {
		return decideReinitialize(o, r, leader, leaderUp)
	}

	if pg.Data == DataMissing {
		switch {
		case dcs.LeaderIsMine && !dcs.Paused:
			return plan("leader without a data directory", act(ActReleaseLeader))
		case leader == "" || dcs.LeaderIsMine:
			return plan("no primary to clone from")
		case !leaderUp:
			return plan("leader " + leader + " is not a running primary yet")
		}
		return plan("new member", actOn(ActClone, leader), actOn(ActStartReplica, leader))
	}

	if dcs.Paused {
		return plan("paused: no automatic action")
	}

	switch {
	case dcs.LeaderIsMine:
		return decideLeader(o, r)
	case leader != "":
		return decideFollower(o, r, leader, leaderRec, leaderUp)
	}
	return decideElection(o, r)
}

// decideReinitialize answers an operator's reinitialize: a fresh copy from
// the running leader, refused (no actions, the reason says why) wherever
// the loop itself would not wipe. Pause does not stop it: an operator asked.
func decideReinitialize(o Observation, r Rules, leader string, leaderUp bool) Plan {
	dcs := o.DCS
	switch {
	case dcs.LeaderIsMine:
		return plan("reinitialize refused: this member leads, and its data is the cluster's")
	case leader == "":
		return plan("reinitialize refused: no leader to clone from")
	case !leaderUp:
		return plan("reinitialize refused: leader " + leader + " is not a running primary")
	case o.Now.Sub(dcs.MemberSeenAt[leader]) > r.Timing.StaleAfter():
		return plan("reinitialize refused: leader " + leader + "'s record is stale")
	case dcs.SyncMode.Enabled && dcs.Sync != nil && dcs.Sync.Has(r.Name):
		return plan("reinitialize refused: this synchronous standby may hold the only copy of acknowledged commits")
	}
	return plan("reinitialize requested: cloning again from "+leader,
		Action{Kind: ActReclone, Target: leader, Reason: ReinitializeRequested}, actOn(ActStartReplica, leader))
}

// PublishedRole is the role this member's record shows for what the loop
// observed.
func PublishedRole(o Observation) (cluster.Role, string) {
	pg := o.PG
	switch {
	case !pg.Running:
		return cluster.RoleStopped, "stopped"
	case !pg.InRecovery && o.DCS.LeaderIsMine:
		return cluster.RolePrimary, "running"
	case !pg.InRecovery:
		return cluster.RoleDemoted, "primary without the leader key"
	case pg.Upstream == "":
		return cluster.RoleReplica, "in recovery, no upstream"
	case !pg.Streaming:
		return cluster.RoleReplica, "connecting to " + pg.Upstream
	}
	return cluster.RoleReplica, "streaming from " + pg.Upstream
}
