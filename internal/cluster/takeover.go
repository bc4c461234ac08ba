package cluster

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Which member may take over from a leader in a planned switchover or an
// operator's failover is one rule, applied twice: by ctl and the REST API
// before they write the switchover key (so that an operator hears the
// reason at once), and by the leader's Decide before it hands over (the
// only check that counts: the cluster may have changed in between). Both
// call CheckTakeover and PickTakeover; they differ only in how they know a
// record is fresh (Candidate.Age) and in the words they use for a refusal.

// TakeoverRule is what the rule needs besides the candidate.
type TakeoverRule struct {
	// Leader is the member handing over ("" when no member holds the key,
	// which only an operator's failover may name a candidate for).
	Leader string
	// Failover is an operator's forced choice: the candidate needs a fresh
	// record and to run as a replica, nothing more.
	Failover bool
	// StaleAfter is the age (Candidate.Age) beyond which a record does not
	// count.
	StaleAfter time.Duration
	// MaxLag refuses a candidate whose published lag is above it, in bytes;
	// 0 is no limit.
	MaxLag int64
	// SyncRequired: synchronous mode is on, so only a synchronous standby
	// (one Sync names) holds every acknowledged commit and may take over.
	// Sync is the sync key as read, nil when absent.
	SyncRequired bool
	Sync         *SyncState
}

// Candidate is a member as the checker knows it.
type Candidate struct {
	Name string
	// Record is the member's valid record; nil when it has none.
	Record *Member
	// Age is how old the record is by the checker's clock: since it last
	// saw the record change (the agent), or since the record's UpdatedAt
	// (ctl, which sees it once).
	Age time.Duration
}

// Unfitness says why a candidate may not take over.
type Unfitness uint8

const (
	Fit               Unfitness = iota // it may take over
	UnfitLeads                         // it is the leader
	UnfitNoRecord                      // no valid member record
	UnfitStale                         // the record is older than StaleAfter
	UnfitNotRunning                    // failover: it does not run as a replica
	UnfitNotSync                       // synchronous mode: not a synchronous standby
	UnfitNotStreaming                  // not a replica streaming from the leader
	UnfitLagging                       // lags more than MaxLag
	UnfitLagUnknown                    // its lag is unknown
	UnfitNoFailover                    // tagged nofailover (only when none was named: PickTakeover)
)

// Verdict is CheckTakeover's answer for one candidate, with what a
// refusal's message needs.
type Verdict struct {
	Name   string
	Reason Unfitness
	// The candidate's record as far as the reason needs it.
	Role  Role
	State string
	Age   time.Duration
	Lag   int64
	// Rule's Leader and MaxLag, so that a message can name them.
	Leader string
	MaxLag int64
}

// OK reports whether the candidate may take over.
func (v Verdict) OK() bool { return v.Reason == Fit }

// String says why the candidate may not take over, in the agent's words
// (its plan's reason); "" when it may.
func (v Verdict) String() string {
	switch v.Reason {
	case Fit:
		return ""
	case UnfitLeads:
		return v.Name + " already leads"
	case UnfitNoRecord:
		return v.Name + " has no member record"
	case UnfitStale:
		return v.Name + "'s record is stale"
	case UnfitNotRunning:
		return v.Name + " is " + string(v.Role) + ", not a running replica"
	case UnfitNotSync:
		return v.Name + " is not a synchronous standby"
	case UnfitNotStreaming:
		return fmt.Sprintf("%s is not streaming from %s (%s, %s)", v.Name, v.Leader, v.Role, v.State)
	case UnfitLagging:
		return fmt.Sprintf("%s lags %d bytes (maximum_lag_on_failover %d)", v.Name, v.Lag, v.MaxLag)
	case UnfitLagUnknown:
		return v.Name + "'s lag is unknown"
	case UnfitNoFailover:
		return v.Name + " is tagged nofailover"
	}
	return fmt.Sprintf("%s: unfit (%d)", v.Name, v.Reason)
}

// CheckTakeover applies the rule to one candidate: it must not lead, must
// have a fresh record, and then, for a failover, run as a replica; for a
// switchover, be a synchronous standby when synchronous mode is on, be a
// replica streaming from the leader (StreamsFrom), and have a known lag
// within MaxLag. Tags are not checked: an operator may name a member
// tagged nofailover.
func CheckTakeover(c Candidate, r TakeoverRule) Verdict {
	v := Verdict{Name: c.Name, Leader: r.Leader, MaxLag: r.MaxLag, Age: c.Age, Lag: -1}
	if m := c.Record; m != nil {
		v.Role, v.State, v.Lag = m.Role, m.State, m.Lag()
	}
	m := c.Record
	switch {
	case c.Name == r.Leader:
		v.Reason = UnfitLeads
	case m == nil:
		v.Reason = UnfitNoRecord
	case c.Age > r.StaleAfter:
		v.Reason = UnfitStale
	case r.Failover && m.Role != RoleReplica:
		v.Reason = UnfitNotRunning
	case r.Failover:
	case r.SyncRequired && (r.Sync == nil || !r.Sync.Has(c.Name)):
		v.Reason = UnfitNotSync
	case !m.StreamsFrom(r.Leader):
		v.Reason = UnfitNotStreaming
	case r.MaxLag > 0 && m.Lag() > r.MaxLag:
		v.Reason = UnfitLagging
	case m.Lag() < 0:
		v.Reason = UnfitLagUnknown
	}
	return v
}

// PickTakeover chooses the member a switchover that names none hands over
// to: the most advanced (max of LSN and ReceiveLSN) candidate that passes
// CheckTakeover and is not tagged nofailover, ties broken by name. It
// returns "" and every other member's verdict, sorted by name, when none
// qualifies; the leader itself is passed over without one.
func PickTakeover(cands []Candidate, r TakeoverRule) (string, []Verdict) {
	best, bestPos := "", LSN(0)
	var unfit []Verdict
	for _, c := range cands {
		if c.Name == r.Leader {
			continue
		}
		v := CheckTakeover(c, r)
		if v.OK() && c.Record.Tags.NoFailover {
			v.Reason = UnfitNoFailover
		}
		if !v.OK() {
			unfit = append(unfit, v)
			continue
		}
		if pos := max(c.Record.LSN, c.Record.ReceiveLSN); best == "" || pos > bestPos || pos == bestPos && c.Name < best {
			best, bestPos = c.Name, pos
		}
	}
	if best != "" {
		return best, nil
	}
	slices.SortFunc(unfit, func(a, b Verdict) int { return strings.Compare(a.Name, b.Name) })
	return "", unfit
}
