package core

import (
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/pharos-ha/pharos/internal/cluster"
)

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
