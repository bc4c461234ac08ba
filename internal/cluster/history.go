package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// HistoryEntry is one timeline switch: the promotion that started Timeline.
// The history key holds a JSON array of entries, oldest first, rewritten by
// each new leader after it promotes (on the condition that it still holds
// the leader key with Epoch).
type HistoryEntry struct {
	// Timeline is the timeline the promotion started.
	Timeline int64 `json:"timeline"`
	// LSN is where the previous timeline ended on the promoted node: the
	// switch point. A former primary whose WAL goes past it on the old
	// timeline has diverged and needs pg_rewind.
	LSN LSN `json:"lsn"`
	// Reason says why: "bootstrap", "failover", "switchover", "manual".
	Reason string `json:"reason"`
	// Time is when the promotion finished.
	Time time.Time `json:"time"`
	// NewLeader is the member that promoted; OldLeader the one it replaced
	// when known.
	NewLeader string `json:"new_leader"`
	OldLeader string `json:"old_leader,omitempty"`
	// Epoch is the leadership epoch of the new leader.
	Epoch int64 `json:"epoch,omitempty"`
}

// History is the content of the history key.
type History []HistoryEntry

// ParseHistory decodes the history key; an empty value is an empty history.
func ParseHistory(data []byte) (History, error) {
	if len(data) == 0 {
		return nil, nil
	}
	var h History
	if err := json.Unmarshal(data, &h); err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	for i, e := range h {
		if e.Timeline < 1 {
			return nil, fmt.Errorf("history entry %d: timeline %d is not positive", i, e.Timeline)
		}
		if e.NewLeader != "" && !ValidName(e.NewLeader) {
			return nil, fmt.Errorf("history entry %d: new_leader %q is not a member name", i, e.NewLeader)
		}
	}
	return h, nil
}

// Append returns h with e added, replacing an entry for the same timeline
// (a leader that retries its write after a lost reply must not duplicate
// the entry).
func (h History) Append(e HistoryEntry) History {
	out := make(History, 0, len(h)+1)
	for _, old := range h {
		if old.Timeline != e.Timeline {
			out = append(out, old)
		}
	}
	return append(out, e)
}

// MarshalHistory encodes the history key.
func MarshalHistory(h History) ([]byte, error) {
	if h == nil {
		h = History{}
	}
	return json.Marshal(h)
}

// Initialize is the content of the initialize key. A bootstrapping member
// creates it (on its own lease, so that its death lets another member
// bootstrap) and rewrites it without a lease once initdb finished, with the
// system identifier every later member must match.
type Initialize struct {
	// SystemID is pg_control's database system identifier, as a decimal
	// string (it does not fit in a JSON number). Empty while bootstrapping.
	SystemID string `json:"system_id,omitempty"`
	// By is the member that bootstrapped.
	By   string    `json:"by"`
	Time time.Time `json:"time,omitzero"`
}

// ParseInitialize decodes the initialize key.
func ParseInitialize(data []byte) (Initialize, error) {
	var in Initialize
	if err := json.Unmarshal(data, &in); err != nil {
		return Initialize{}, fmt.Errorf("initialize: %w", err)
	}
	if in.By == "" {
		return Initialize{}, errors.New("initialize: by is empty")
	}
	return in, nil
}

// Switchover is the content of the switchover key: a planned change of
// leader requested by an operator (ctl or REST), then, once the old leader
// has stopped cleanly, the hand-over itself.
type Switchover struct {
	// Leader is the leader the request expects ("" for whichever leads).
	Leader string `json:"leader,omitempty"`
	// Candidate is the member that is to lead ("" lets the leader pick the
	// healthiest replica).
	Candidate string `json:"candidate,omitempty"`
	// ScheduledAt delays the switchover; nil means at once.
	ScheduledAt *time.Time `json:"scheduled_at,omitempty"`
	// Failover skips the candidate's health checks (an operator's forced
	// choice); with no leader it is a hand-over at once.
	Failover bool `json:"failover,omitempty"`
	// Handover is set by the old leader in the same transaction that
	// deletes the leader key, after it stopped PostgreSQL and the
	// candidate received all its WAL: only Candidate may take the key.
	Handover    bool      `json:"handover,omitempty"`
	HandoverAt  time.Time `json:"handover_at,omitzero"`
	RequestedAt time.Time `json:"requested_at,omitzero"`
}

// Describe says what the request asks for and how far it is, for a
// human: "switchover to n2 requested", "failover: handed over to n3 at …".
func (sw Switchover) Describe() string {
	kind, to := "switchover", sw.Candidate
	if sw.Failover {
		kind = "failover"
	}
	if to == "" {
		to = "the healthiest replica"
	}
	switch {
	case sw.Handover:
		return fmt.Sprintf("%s: handed over to %s at %s, waiting for it to take the lead", kind, to, sw.HandoverAt.Format(time.RFC3339))
	case sw.ScheduledAt != nil:
		return fmt.Sprintf("%s to %s scheduled at %s (pharos ctl switchover --cancel)", kind, to, sw.ScheduledAt.Format(time.RFC3339))
	}
	return fmt.Sprintf("%s to %s requested", kind, to)
}

// ParseSwitchover decodes the switchover key.
func ParseSwitchover(data []byte) (Switchover, error) {
	var s Switchover
	if err := json.Unmarshal(data, &s); err != nil {
		return Switchover{}, fmt.Errorf("switchover: %w", err)
	}
	if s.Candidate != "" && !ValidName(s.Candidate) {
		return Switchover{}, fmt.Errorf("switchover: candidate %q is not a member name", s.Candidate)
	}
	if s.Leader != "" && !ValidName(s.Leader) {
		return Switchover{}, fmt.Errorf("switchover: leader %q is not a member name", s.Leader)
	}
	if s.Handover && s.Candidate == "" {
		return Switchover{}, errors.New("switchover: a hand-over needs a candidate")
	}
	return s, nil
}

// SyncState is the content of the sync key: the standbys the leader's
// commits wait for. Only Standbys may be promoted when synchronous mode is
// on: each of them has every commit the leader acknowledged. The leader
// writes it, conditional on its epoch, in an order that keeps it true
// (see haagent).
type SyncState struct {
	Leader   string   `json:"leader"`
	Standbys []string `json:"sync_standby"`
}

// ParseSyncState decodes the sync key.
func ParseSyncState(data []byte) (SyncState, error) {
	var s SyncState
	if err := json.Unmarshal(data, &s); err != nil {
		return SyncState{}, fmt.Errorf("sync: %w", err)
	}
	if !ValidName(s.Leader) {
		return SyncState{}, fmt.Errorf("sync: leader %q is not a member name", s.Leader)
	}
	for _, n := range s.Standbys {
		if !ValidName(n) {
			return SyncState{}, fmt.Errorf("sync: standby %q is not a member name", n)
		}
	}
	return s, nil
}

// Has reports whether name is a synchronous standby.
func (s SyncState) Has(name string) bool {
	for _, n := range s.Standbys {
		if n == name {
			return true
		}
	}
	return false
}
