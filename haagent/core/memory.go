package core

import (
	"time"

	"github.com/pharos-ha/pharos/internal/cluster"
)

// Memory is what the agent carries from one loop to the next. It changes
// only through Apply.
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

// Event is what changes Memory: an Observation (a round's view) or a
// Result (what an executed step did). Memory.Apply is the only place
// Memory changes, so that every transition is a scenario away from a test.
type Event interface{ isEvent() }

func (Observation) isEvent() {}
func (Result) isEvent()      {}

// Result is what one executed step did, as Memory needs to know it.
type Result struct {
	// Action is the step (as planned, with its data). An operator's
	// restart has a zero Action and Request RequestRestart.
	Action  Action
	Request Request
	// At is when the step ended (the driver's clock).
	At time.Time
	// OK: the step did what it says.
	OK bool
	// ConfigRev is the dynamic configuration revision of the round the
	// step ran in: what a successful start, apply-config or restart
	// leaves the server running with.
	ConfigRev int64
	// Rewind is the class of a failed rewind as ClassifyRewind named it
	// (before RewindVerdict counts it).
	Rewind RewindFailure
	// WatchdogFailed: the step could not arm the required watchdog.
	WatchdogFailed bool
}

// Apply changes m for e. It is pure like Decide: the times it records are
// the event's own.
func (m *Memory) Apply(e Event) {
	switch e := e.(type) {
	case Observation:
		m.observe(e)
	case Result:
		m.result(e)
	}
}

// observe is what a round's view changes: the election's reference points
// (the last leader position, when and at which revision the leader went),
// how long a standby has trailed the leader's timeline, how long a
// leader's server has been down.
func (m *Memory) observe(o Observation) {
	d, pg := o.DCS, o.PG
	if d.Leader != "" {
		m.LeaderGoneRev, m.LeaderGoneAt = 0, time.Time{}
		if rec, ok := d.Members[d.Leader]; ok && rec.Role == cluster.RolePrimary {
			m.LastLeaderLSN = rec.LSN
		}
	} else if d.Reachable && m.LeaderGoneRev == 0 {
		// The watch's deletion revision when it saw one no later than
		// this read, else the read's own.
		rev := d.LeaderDeletedRev
		if rev == 0 || rev > d.Revision {
			rev = d.Revision
		}
		m.LeaderGoneRev, m.LeaderGoneAt = rev, o.Now
	}
	if rec, ok := d.Members[d.Leader]; ok && !d.LeaderIsMine && pg.Running && pg.InRecovery &&
		pg.Upstream == d.Leader && pg.Timeline < rec.Timeline {
		if m.BehindSince.IsZero() {
			m.BehindSince = o.Now
		}
	} else {
		m.BehindSince = time.Time{}
	}
	if d.LeaderIsMine && pg.Data == DataPresent && !pg.Running {
		if m.CrashedAt.IsZero() {
			m.CrashedAt = o.Now
		}
	} else {
		m.CrashedAt = time.Time{}
	}
}

// result is what an executed step changes.
func (m *Memory) result(r Result) {
	if r.WatchdogFailed {
		m.WatchdogFailedAt = r.At
	}
	if r.Request == RequestRestart {
		if r.OK {
			m.AppliedConfigRev = r.ConfigRev
		}
		return
	}
	switch r.Action.Kind {
	case ActStartPrimary, ActStartReplica, ActApplyConfig:
		if r.OK {
			m.AppliedConfigRev = r.ConfigRev
		}
	case ActStop:
		// Decide stops a running standby only when it cannot follow the
		// leader's timeline: it is rewound before it runs again.
		if r.OK {
			m.RewindNeeded = true
		}
	case ActAcquireLeader:
		if r.OK {
			m.Promotion = r.Action.Cause
		}
	case ActClone, ActReclone:
		if r.OK {
			m.forgetRewind()
		}
	case ActRewind:
		if r.OK {
			m.forgetRewind()
			return
		}
		class := m.RewindVerdict(r.Rewind)
		if r.Rewind == RewindUnknown && !class.Permanent() {
			m.RewindUnknown++
		} else {
			m.RewindUnknown = 0
		}
		if class.Permanent() {
			m.RewindFailed, m.RewindFailure = r.Action.Target, class
		}
	}
}

func (m *Memory) forgetRewind() {
	m.RewindFailed, m.RewindFailure, m.RewindNeeded = "", "", false
	m.RewindUnknown = 0
}

// RewindVerdict is what a rewind failure of class c counts as after the
// failures m remembers: an unrecognised one becomes RewindUnclassified
// (permanent) once it is the RewindUnknownLimit-th in a row.
func (m Memory) RewindVerdict(c RewindFailure) RewindFailure {
	if c == RewindUnknown && m.RewindUnknown+1 >= RewindUnknownLimit {
		return RewindUnclassified
	}
	return c
}
