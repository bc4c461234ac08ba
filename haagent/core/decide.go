package core

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/pharos-ha/pharos/internal/cluster"
)

// Observation is everything Decide may look at: one loop's view of etcd and
// of the local PostgreSQL, and what the agent remembers between loops. The
// loop builds it; Decide never reads a clock, etcd or the disk itself.
type Observation struct {
	Now time.Time
	// WatchdogArmed: this member's watchdog is armed.
	WatchdogArmed bool
	DCS           DCSView
	Lease         LeaseView
	PG            PGView
	Memory        Memory
	// Request is the operator's request this round serves (RequestNone in
	// the loop's own rounds): requests go through Decide so that the rules
	// that protect data apply to them as to the loop.
	Request Request
}

// Request is an operator's request that changes the local server.
type Request uint8

const (
	RequestNone Request = iota
	// RequestReinitialize: wipe the data directory and clone it again
	// from the leader (REST POST /reinitialize).
	RequestReinitialize
	// RequestRestart: stop and start the server in place (REST POST
	// /restart). Not decided: it only appears in a Result.
	RequestRestart
)

// DCSView is the cluster as the last successful read of etcd saw it. When
// Reachable is false the rest is the last good view, which may be stale.
type DCSView struct {
	Reachable bool
	// Revision is the etcd revision of the read; LeaderDeletedRev the
	// revision of the last deletion of the leader key the watch saw (0:
	// none). Memory takes the election's reference revision from them.
	Revision         int64
	LeaderDeletedRev int64
	// Initialized: the initialize key exists. SystemID is empty while the
	// bootstrapping member has not finished initdb.
	Initialized bool
	SystemID    string
	// Leader names the leader key's holder ("" when there is none), and
	// LeaderEpoch is the key's create revision.
	Leader      string
	LeaderEpoch int64
	// LeaderIsMine: the leader key is attached to this agent's lease.
	LeaderIsMine bool
	// Members are the records present, keyed by name (this member's own
	// included when published). MemberRev is each record's etcd mod
	// revision and MemberSeenAt when this agent saw it change, on its own
	// clock: freshness never compares two machines' clocks.
	Members      map[string]cluster.Member
	MemberRev    map[string]int64
	MemberSeenAt map[string]time.Time
	History      cluster.History
	// Paused stops automatic promotion and demotion.
	Paused bool
	// ConfigRev is the revision of the dynamic configuration (0: none).
	ConfigRev int64
	// SyncMode is synchronous replication as the dynamic configuration
	// asks for it; Sync is the sync key (nil when absent).
	SyncMode SyncMode
	Sync     *cluster.SyncState
	// Switchover is the pending request, nil when none; SwitchoverSeenAt
	// is when this agent first saw it in its current form (local clock).
	Switchover       *cluster.Switchover
	SwitchoverSeenAt time.Time
	// SwitchoverRev is the switchover key's mod revision (0: none).
	SwitchoverRev int64
}

// LeaseView describes this agent's lease.
type LeaseView struct {
	Held bool
	// LastRenewed is when the last keep-alive that etcd acknowledged was
	// sent: etcd restarted the TTL no earlier than that.
	LastRenewed time.Time
}

// SyncMode is the synchronous replication setting.
type SyncMode struct {
	Enabled bool
	// Strict blocks writes rather than go asynchronous when no standby is
	// left.
	Strict bool
	// Count is synchronous_node_count (at least 1).
	Count int
}

// DataDirState is what the data directory holds.
type DataDirState uint8

const (
	DataMissing DataDirState = iota // empty or absent: needs bootstrap or a clone
	DataPresent                     // a PostgreSQL data directory
)

// PGView is the local PostgreSQL.
type PGView struct {
	Data     DataDirState
	SystemID string
	Running  bool
	// InRecovery is pg_is_in_recovery() when running.
	InRecovery bool
	// PendingRestart: a parameter waits for a restart to take effect.
	PendingRestart bool
	// Streaming: a standby's walreceiver streams from its upstream.
	Streaming bool
	// SyncNames are the standbys synchronous_standby_names names on a
	// running primary, "*" for any.
	SyncNames []string
	// Standby: standby.signal is present (a stopped standby, or a running
	// one).
	Standby bool
	// Timeline is the current timeline (the control file's when stopped).
	Timeline int64
	// LSN is the write position on a primary, the replay position on a
	// standby, the last checkpoint's when stopped; ReceiveLSN the last
	// position received from upstream on a standby.
	LSN        cluster.LSN
	ReceiveLSN cluster.LSN
	// Upstream is the member the standby is configured to follow ("" for
	// none).
	Upstream string
}

// Position is the furthest WAL position this server has.
func (p PGView) Position() cluster.LSN { return max(p.LSN, p.ReceiveLSN) }

// Memory is what the agent carries from one loop to the next. It changes
// only through Apply (memory.go).
type Memory struct {
	// CrashedAt is when PostgreSQL was found dead while this member led;
	// zero when it is not in that state.
	CrashedAt time.Time
	// RewindFailed names the member a pg_rewind from failed in a way no
	// retry can fix, and RewindFailure says how (one of the permanent
	// RewindFailure classes). A failure a retry may get past (the server
	// still shutting down, the source not answering) is not remembered:
	// the next round rewinds again.
	RewindFailed  string
	RewindFailure RewindFailure
	// LastLeaderLSN is the leader's position as last seen in its record,
	// the reference for maximum_lag_on_failover once it is gone.
	LastLeaderLSN cluster.LSN
	// LeaderGoneRev is the etcd revision of the read that first found the
	// leader key gone, LeaderGoneAt when (local clock); zero while a
	// leader is known. Candidates wait briefly for every peer to publish
	// its position after that revision, so that they compare current
	// positions, not a loop-old ones.
	LeaderGoneRev int64
	LeaderGoneAt  time.Time
	// AppliedConfigRev is the dynamic configuration revision last applied
	// to the running server.
	AppliedConfigRev int64
	// WatchdogFailedAt is when arming the watchdog last failed; with a
	// required watchdog the member does not try to lead for
	// watchdogRetry after that.
	WatchdogFailedAt time.Time
	// RewindNeeded: this standby was stopped because it could not follow
	// the leader's timeline; it is rewound before it starts again.
	RewindNeeded bool
	// BehindSince is when this running standby was first seen following
	// the leader from an older timeline; zero otherwise. A standby that
	// stays there could not switch to the new timeline: its WAL diverged.
	BehindSince time.Time
	// RewindUnknown counts the unrecognised rewind failures in a row
	// (RewindVerdict).
	RewindUnknown int
	// Promotion is why this member holds the key (PromotionReasons), from
	// its last successful acquire-leader: a promotion retried in a later
	// round is recorded and counted for the same reason.
	Promotion string
}

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

func act(k ActionKind) Action                  { return Action{Kind: k} }
func actOn(k ActionKind, target string) Action { return Action{Kind: k, Target: target} }

// promotion is what a member that holds the key does to become primary;
// cause is why it leads (PromotionReasons).
func promotion(pg PGView, cause string) []Action {
	if pg.Running && !pg.InRecovery {
		return []Action{act(ActSyncSlots)}
	}
	return []Action{{Kind: ActPromote, Cause: cause}, {Kind: ActRecordHistory, Cause: cause}, act(ActSyncSlots)}
}

// heldCause is why this member holds the key it got in an earlier round.
func heldCause(m Memory) string {
	if m.Promotion == "" {
		return PromotionFailover
	}
	return m.Promotion
}

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

// decideLeader: this member holds a renewed key.
func decideLeader(o Observation, r Rules) Plan {
	pg := o.PG
	if r.WatchdogRequired && !o.WatchdogArmed {
		if pg.Running && !pg.InRecovery {
			return plan("leading without the required watchdog: stepping down", act(ActDemote), act(ActReleaseLeader))
		}
		return plan("leading without the required watchdog: stepping down", act(ActReleaseLeader))
	}
	if pg.Running {
		if pg.InRecovery {
			return plan("leader in recovery", promotion(pg, heldCause(o.Memory))...)
		}
		if sw := o.DCS.Switchover; sw != nil && !sw.Handover && (sw.Leader == "" || sw.Leader == r.Name) {
			if sw.ScheduledAt != nil && o.Now.Before(*sw.ScheduledAt) {
				return plan("leader running, switchover scheduled at "+sw.ScheduledAt.UTC().Format(time.RFC3339), promotion(pg, "")...)
			}
			target, why := switchoverTarget(o, r, *sw)
			if target == "" {
				return plan("switchover refused: "+why, Action{Kind: ActCancelSwitchover, Cause: "switchover refused: " + why, Rev: o.DCS.SwitchoverRev})
			}
			return plan("switchover to "+target, Action{Kind: ActSwitchover, Target: target, Rev: o.DCS.SwitchoverRev})
		}
		steps := promotion(pg, "")
		if want, change := syncTarget(o, r); change {
			steps = append(steps, syncSteps(o, r, want)...)
		}
		return plan("leader running", steps...)
	}
	if !o.Memory.CrashedAt.IsZero() && o.Now.Sub(o.Memory.CrashedAt) >= r.CrashRestartTimeout {
		return plan(fmt.Sprintf("PostgreSQL down for %v under the leader", o.Now.Sub(o.Memory.CrashedAt).Round(time.Millisecond)), act(ActReleaseLeader))
	}
	if pg.Standby {
		return plan("leader's server is a stopped standby",
			append([]Action{actOn(ActStartReplica, "")}, promotion(PGView{InRecovery: true}, heldCause(o.Memory))...)...)
	}
	return plan("leader's server is down: restart in place", act(ActStartPrimary), act(ActSyncSlots))
}

// syncTarget computes the synchronous standbys this leader should have and
// whether the sync key or the server's setting differ from that. Healthy
// standbys are fresh replicas streaming from the leader; the current ones
// are kept while healthy (no churn), then the least lagging, then by name.
func syncTarget(o Observation, r Rules) ([]string, bool) {
	var current []string
	if s := o.DCS.Sync; s != nil && s.Leader == r.Name {
		current = s.Standbys
	}
	var want []string
	if o.DCS.SyncMode.Enabled {
		var healthy []cluster.Member
		for name, m := range o.DCS.Members {
			if name != r.Name && m.StreamsFrom(r.Name) &&
				o.Now.Sub(o.DCS.MemberSeenAt[name]) <= r.Timing.StaleAfter() {
				healthy = append(healthy, m)
			}
		}
		sort.Slice(healthy, func(i, j int) bool {
			a, b := healthy[i], healthy[j]
			if ai, bi := slices.Contains(current, a.Name), slices.Contains(current, b.Name); ai != bi {
				return ai
			}
			if a.Lag() != b.Lag() {
				return a.Lag() >= 0 && (b.Lag() < 0 || a.Lag() < b.Lag())
			}
			return a.Name < b.Name
		})
		for _, m := range healthy[:min(len(healthy), max(o.DCS.SyncMode.Count, 1))] {
			want = append(want, m.Name)
		}
		sort.Strings(want)
	}
	keyOK := o.DCS.Sync != nil && o.DCS.Sync.Leader == r.Name && slices.Equal(SortedNames(current), want)
	if !o.DCS.SyncMode.Enabled && (o.DCS.Sync == nil || o.DCS.Sync.Leader != r.Name) {
		keyOK = true // nothing to keep true when synchronous mode is off
	}
	return want, !keyOK || !slices.Equal(SortedNames(o.PG.SyncNames), SyncNames(want, o.DCS.SyncMode))
}

// syncSteps are the steps that bring the sync key and
// synchronous_standby_names from what o shows to want, keeping the sync
// key true at every step: standbys leave the key first, then the server's
// setting changes, then the new ones join the key once the server waits
// for them.
func syncSteps(o Observation, r Rules, want []string) []Action {
	mode, key := o.DCS.SyncMode, o.DCS.Sync
	var cur []string
	if key != nil && key.Leader == r.Name {
		cur = SortedNames(key.Standbys)
	}
	var keep []string
	for _, n := range cur {
		if slices.Contains(want, n) {
			keep = append(keep, n)
		}
	}
	var steps []Action
	if (mode.Enabled || len(cur) > 0) && (key == nil || key.Leader != r.Name || !slices.Equal(cur, SortedNames(keep))) {
		steps = append(steps, Action{Kind: ActSyncLeave, Standbys: keep})
	}
	if names := SyncNames(want, mode); !slices.Equal(SortedNames(o.PG.SyncNames), names) {
		steps = append(steps, Action{Kind: ActSyncNames, Standbys: names})
	}
	if !mode.Enabled {
		if key != nil {
			steps = append(steps, act(ActSyncClear))
		}
		return steps
	}
	if !slices.Equal(SortedNames(keep), SortedNames(want)) {
		steps = append(steps, Action{Kind: ActSyncJoin, Standbys: want})
	}
	if len(want) == 0 && !mode.Strict && len(steps) > 0 {
		steps[len(steps)-1].Reason = SyncDegraded
	}
	return steps
}

// SyncNames is what synchronous_standby_names should name for want: the
// standbys, or "*" in strict mode when none is left (writes wait for any
// standby rather than go asynchronous), or nothing.
func SyncNames(want []string, m SyncMode) []string {
	switch {
	case !m.Enabled:
		return nil
	case len(want) > 0:
		return want
	case m.Strict:
		return []string{"*"}
	}
	return nil
}

func SortedNames(s []string) []string {
	out := slices.Clone(s)
	sort.Strings(out)
	if len(out) == 0 {
		return nil
	}
	return out
}

// switchoverTarget picks the member a switchover hands over to, or says why
// none can take it, by the takeover rule ctl applies too
// (cluster.CheckTakeover, PickTakeover): a fresh replica streaming from
// this leader (any running replica for a forced failover), a synchronous
// standby in synchronous mode, within maximum_lag_on_failover, and, when
// the request names none, the most advanced such replica not tagged
// nofailover.
func switchoverTarget(o Observation, r Rules, sw cluster.Switchover) (string, string) {
	rule := cluster.TakeoverRule{
		Leader: r.Name, Failover: sw.Failover, StaleAfter: r.Timing.StaleAfter(), MaxLag: r.MaximumLagOnFailover,
		SyncRequired: o.DCS.SyncMode.Enabled, Sync: o.DCS.Sync,
	}
	candidate := func(name string) cluster.Candidate {
		c := cluster.Candidate{Name: name, Age: o.Now.Sub(o.DCS.MemberSeenAt[name])}
		if m, ok := o.DCS.Members[name]; ok {
			c.Record = &m
		}
		return c
	}
	if sw.Candidate != "" {
		if v := cluster.CheckTakeover(candidate(sw.Candidate), rule); !v.OK() {
			return "", v.String()
		}
		return sw.Candidate, ""
	}
	var cands []cluster.Candidate
	for name := range o.DCS.Members {
		cands = append(cands, candidate(name))
	}
	if best, _ := cluster.PickTakeover(cands, rule); best != "" {
		return best, ""
	}
	return "", "no healthy replica to hand over to"
}

// handoverWait bounds how long the other members wait for a hand-over's
// candidate to take the key before they elect as usual.
func handoverWait(t Timing) time.Duration { return t.TTL }

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
