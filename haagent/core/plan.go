package core

import (
	"fmt"
	"strings"
)

// ActionKind names one step of a plan.
type ActionKind uint8

const (
	// ActBootstrap claims the initialize key, runs initdb, starts the
	// server and takes the leader key.
	ActBootstrap ActionKind = iota + 1
	// ActClone copies the data directory from Target with pg_basebackup.
	ActClone
	// ActReclone wipes the data directory and clones from Target.
	ActReclone
	// ActRewind runs pg_rewind from Target (after a clean stop).
	ActRewind
	// ActStartPrimary starts the server without standby.signal: only ever
	// planned for the holder of the leader key.
	ActStartPrimary
	// ActStartReplica starts the server as a standby of Target ("": no
	// upstream, read-only until someone leads).
	ActStartReplica
	// ActRepoint makes a running standby follow Target with a reload.
	ActRepoint
	// ActAcquireLeader creates the leader key on this agent's lease.
	ActAcquireLeader
	// ActPromote ends recovery.
	ActPromote
	// ActRecordHistory appends the promotion to the history key.
	ActRecordHistory
	// ActSyncSlots creates a physical slot per other member and drops the
	// slots of members gone from the cluster.
	ActSyncSlots
	// ActStop stops the server cleanly (a standby that must be rewound).
	ActStop
	// ActDemote stops a server that accepts writes without the key: a fast
	// shutdown, escalated to an immediate one within the safety margin.
	ActDemote
	// ActReleaseLeader deletes the leader key if it is still this agent's.
	ActReleaseLeader
	// ActSwitchover hands the lead to Target: checkpoint, clean stop,
	// check that Target received all WAL, then delete the leader key and
	// mark the hand-over in one transaction.
	ActSwitchover
	// The synchronous-standby protocol, in the order that keeps the sync
	// key true: a standby leaves the key before the server stops waiting
	// for it, and joins the key only after the server waits for it.
	//
	// ActSyncLeave writes the sync key naming only Standbys (those that
	// stay).
	ActSyncLeave
	// ActSyncNames sets synchronous_standby_names to Standbys and reloads.
	ActSyncNames
	// ActSyncJoin waits until the server reports every one of Standbys
	// synchronous, then writes the sync key naming them.
	ActSyncJoin
	// ActSyncClear deletes the sync key (synchronous mode is off).
	ActSyncClear
	// ActApplyConfig rewrites the server's parameters from the dynamic
	// configuration and reloads.
	ActApplyConfig
	// ActCancelSwitchover deletes a switchover request that cannot be
	// carried out (the plan's reason says why).
	ActCancelSwitchover
)

var actionNames = map[ActionKind]string{
	ActBootstrap: "bootstrap", ActClone: "clone", ActReclone: "reclone", ActRewind: "rewind",
	ActStartPrimary: "start-primary", ActStartReplica: "start-replica", ActRepoint: "repoint",
	ActAcquireLeader: "acquire-leader", ActPromote: "promote", ActRecordHistory: "record-history",
	ActSyncSlots: "sync-slots", ActStop: "stop", ActDemote: "demote", ActReleaseLeader: "release-leader",
	ActSwitchover: "switchover", ActCancelSwitchover: "cancel-switchover", ActApplyConfig: "apply-config",
	ActSyncLeave: "sync-leave", ActSyncNames: "sync-names", ActSyncJoin: "sync-join", ActSyncClear: "sync-clear",
}

// ActionKinds lists every kind of action, in no particular order (the
// executor pre-creates a metric series per kind).
func ActionKinds() []ActionKind {
	out := make([]ActionKind, 0, len(actionNames))
	for k := range actionNames {
		out = append(out, k)
	}
	return out
}

func (k ActionKind) String() string {
	if s, ok := actionNames[k]; ok {
		return s
	}
	return fmt.Sprintf("action(%d)", k)
}

// Action is one step with the data the executor needs for it: the driver
// carries nothing from Decide to the executor besides the plan.
type Action struct {
	Kind ActionKind
	// Target is a member name where the step needs one.
	Target string
	// Reason is a closed-set cause the executor counts: a reclone's
	// (RecloneReasons), SyncDegraded on the last step of a
	// synchronous-standby change that leaves none.
	Reason string
	// Standbys are the names a sync-leave or sync-join writes into the
	// sync key, or a sync-names into synchronous_standby_names ("*" for
	// any).
	Standbys []string
	// Cause is what the executor records or logs, left out of the
	// one-line String: a promotion's reason for acquire-leader, promote
	// and record-history (PromotionReasons), the refusal a
	// cancel-switchover logs.
	Cause string
	// Rev is the switchover key's revision a switchover, a
	// cancel-switchover or a hand-over's acquire-leader is conditional on
	// (0: an acquire that is no hand-over).
	Rev int64
}

// Promotion reasons: the history entry's reason and the label of
// pharos_agent_promotions_total.
const (
	PromotionFailover       = "failover"
	PromotionSwitchover     = "switchover"
	PromotionManualFailover = "manual failover"
	PromotionBootstrap      = "bootstrap"
)

// SyncDegraded is the reason on the last step of a synchronous-standby
// change that leaves no synchronous standby in synchronous mode that is
// not strict: commits stop waiting for any.
const SyncDegraded = "degraded"

func (a Action) String() string {
	s := a.Kind.String()
	if a.Target != "" {
		s += " " + a.Target
	}
	switch a.Kind {
	case ActSyncLeave, ActSyncNames, ActSyncJoin:
		if len(a.Standbys) == 0 {
			s += " -"
		} else {
			s += " " + strings.Join(a.Standbys, ",")
		}
	}
	if a.Reason != "" {
		s += " [" + a.Reason + "]"
	}
	return s
}

// Plan is Decide's answer: the steps to run in order (the loop stops at the
// first that fails) and a one-line reason for humans and tests.
type Plan struct {
	Actions []Action
	Reason  string
}

func (p Plan) String() string {
	parts := make([]string, len(p.Actions))
	for i, a := range p.Actions {
		parts[i] = a.String()
	}
	if len(parts) == 0 {
		return "none (" + p.Reason + ")"
	}
	return strings.Join(parts, ", ") + " (" + p.Reason + ")"
}

func plan(reason string, actions ...Action) Plan { return Plan{Actions: actions, Reason: reason} }

func act(k ActionKind) Action { return Action{Kind: k} }

func actOn(k ActionKind, target string) Action { return Action{Kind: k, Target: target} }
