package bench

import (
	"cmp"
	"slices"
	"time"
)

// Outcome is what a client learned about one write.
type Outcome uint8

const (
	// OutcomeAcked: the server acknowledged the commit.
	OutcomeAcked Outcome = iota + 1
	// OutcomeFailed: the write definitely did not commit. The server
	// answered with an error (read-only, shutting down…), or the write
	// was never sent (no connection).
	OutcomeFailed
	// OutcomeUnknown: the write was sent but no answer came (timeout,
	// connection lost). It may or may not have committed.
	OutcomeUnknown
)

func (o Outcome) String() string {
	switch o {
	case OutcomeAcked:
		return "acked"
	case OutcomeFailed:
		return "failed"
	case OutcomeUnknown:
		return "unknown"
	}
	return "invalid"
}

// Error classes for writes that got no SQLSTATE.
const (
	ClassTimeout = "timeout" // the write's deadline passed
	ClassNetwork = "network" // connection refused, reset or closed
)

// Write is one write of the history.
type Write struct {
	ID      int64
	Outcome Outcome
	// Node is the member that acknowledged the write; empty when it is
	// not known (and always for a write not acknowledged).
	Node string
	// Class is the error of a write not acknowledged: its SQLSTATE, or
	// ClassTimeout or ClassNetwork.
	Class string
	Sent  time.Time // when the client began the write (connecting first if needed)
	Done  time.Time // when it was acknowledged or given up
}

// Checker records a history of writes and, given the ids read back from
// the final primary, says which acknowledged writes were lost and how long
// writes were unavailable. It is pure (no I/O, no clock: every time comes
// from the caller) and not safe for concurrent use.
type Checker struct {
	writes  []Write
	faultAt time.Time
}

// Record adds one write. Ids must be unique within a history.
func (c *Checker) Record(w Write) { c.writes = append(c.writes, w) }

// RecordFault marks when the fault began; the recovery figures of
// CheckResult are relative to it. Without it they stay zero.
func (c *Checker) RecordFault(at time.Time) { c.faultAt = at }

// Len returns the number of writes recorded.
func (c *Checker) Len() int { return len(c.writes) }

// CheckResult is the verdict on a history.
type CheckResult struct {
	Writes  int // recorded
	Acked   int
	Failed  int
	Unknown int
	// Errors counts the writes not acknowledged by Write.Class.
	Errors map[string]int

	// Set by Check only (zero from an outage-only analysis).
	Present int // recorded writes found on read-back
	// Lost are acknowledged writes missing on read-back, in id order:
	// the one thing a failover must never do.
	Lost []int64
	// UnknownCommitted counts writes of unknown outcome that were found:
	// they committed though the client never heard so. Not an error.
	UnknownCommitted int
	// FailedCommitted are writes the client was told failed that were
	// found anyway, in id order. Not a loss, but the client was misled.
	FailedCommitted []int64

	// MaxOutage is the longest time without an acknowledgement: between
	// two consecutive acknowledged writes (by the time each was
	// acknowledged), from the first write to the first acknowledgement,
	// or from the last acknowledgement to the end of the last write when
	// writes after it all went unacknowledged (then OutageOpen).
	MaxOutage   time.Duration
	OutageStart time.Time
	OutageEnd   time.Time
	OutageOpen  bool // the longest outage lasted to the end of the history

	// Relative to the fault (all zero without RecordFault).
	FaultAt time.Time
	// NodeBefore acknowledged the last write acknowledged before the
	// fault; NodeAfter the last acknowledged at or after it.
	NodeBefore string
	NodeAfter  string
	// FirstFailureAt is when the first write ending at or after the fault
	// ended unacknowledged; zero when none did.
	FirstFailureAt time.Time
	// RecoveredAt is the first acknowledgement after FirstFailureAt, and
	// RecoveredAfter its distance from the fault; zero when writes never
	// failed after the fault or never recovered.
	RecoveredAt    time.Time
	RecoveredAfter time.Duration
	// NewPrimary is the first node other than NodeBefore to acknowledge a
	// write after the fault, NewPrimaryAt when it did and NewPrimaryAfter
	// its distance from the fault; zero when the node did not change or
	// is not known.
	NewPrimary      string
	NewPrimaryAt    time.Time
	NewPrimaryAfter time.Duration

	// Timeline counts the writes by when their outcome was known, in
	// buckets TimelineBucket wide, the first bucket after the fault
	// starting at FaultAt; every bucket from the first write's to the
	// last's is present, empty ones included, so it can be drawn as is.
	Timeline []TimelinePoint
}

// TimelineBucket is the width of a Timeline bucket: at the probe's default
// interval (5 ms) a healthy bucket holds about 20 acknowledged writes, so
// an outage shows to the tenth of a second.
const TimelineBucket = 100 * time.Millisecond

// TimelinePoint is one Timeline bucket.
type TimelinePoint struct {
	// Offset is where the bucket starts relative to the fault (negative
	// before it).
	Offset  time.Duration
	Acked   int
	Failed  int
	Unknown int
}

// Check judges the history against present, the ids (with their node)
// read back from the final primary. An id of the history missing from
// present is a lost write if it was acknowledged; ids in present that
// the history does not hold are ignored.
func (c *Checker) Check(present map[int64]string) CheckResult {
	r := c.analyze()
	for _, w := range c.writes {
		_, ok := present[w.ID]
		if ok {
			r.Present++
		}
		switch {
		case w.Outcome == OutcomeAcked && !ok:
			r.Lost = append(r.Lost, w.ID)
		case w.Outcome == OutcomeUnknown && ok:
			r.UnknownCommitted++
		case w.Outcome == OutcomeFailed && ok:
			r.FailedCommitted = append(r.FailedCommitted, w.ID)
		}
	}
	slices.Sort(r.Lost)
	slices.Sort(r.FailedCommitted)
	return r
}

// analyze computes everything but the read-back comparison.
func (c *Checker) analyze() CheckResult {
	r := CheckResult{Writes: len(c.writes), Errors: map[string]int{}, FaultAt: c.faultAt}
	if len(c.writes) == 0 {
		return r
	}
	// By end time: the order the client learned the outcomes in.
	ws := slices.Clone(c.writes)
	slices.SortStableFunc(ws, func(a, b Write) int { return a.Done.Compare(b.Done) })

	first := ws[0].Sent
	for _, w := range ws {
		if w.Sent.Before(first) {
			first = w.Sent
		}
	}
	gap := func(from, to time.Time, open bool) {
		if d := to.Sub(from); d > r.MaxOutage {
			r.MaxOutage, r.OutageStart, r.OutageEnd, r.OutageOpen = d, from, to, open
		}
	}
	lastAck := first
	unackedSince := false // a write ended unacknowledged after lastAck
	for _, w := range ws {
		switch w.Outcome {
		case OutcomeAcked:
			r.Acked++
			gap(lastAck, w.Done, false)
			lastAck = w.Done
			unackedSince = false
			continue
		case OutcomeFailed:
			r.Failed++
		default:
			r.Unknown++
		}
		r.Errors[w.Class]++
		unackedSince = true
	}
	if unackedSince {
		gap(lastAck, ws[len(ws)-1].Done, true)
	}

	if c.faultAt.IsZero() {
		for _, w := range slices.Backward(ws) {
			if w.Outcome == OutcomeAcked {
				r.NodeAfter = w.Node
				break
			}
		}
		return r
	}
	r.Timeline = timeline(ws, c.faultAt)
	for _, w := range ws {
		before := w.Done.Before(c.faultAt)
		switch {
		case before && w.Outcome == OutcomeAcked:
			r.NodeBefore = w.Node
		case before:
		case w.Outcome != OutcomeAcked:
			if r.FirstFailureAt.IsZero() {
				r.FirstFailureAt = w.Done
			}
		default:
			r.NodeAfter = w.Node
			if !r.FirstFailureAt.IsZero() && r.RecoveredAt.IsZero() {
				r.RecoveredAt = w.Done
				r.RecoveredAfter = w.Done.Sub(c.faultAt)
			}
			if r.NewPrimaryAt.IsZero() && w.Node != "" && r.NodeBefore != "" && w.Node != r.NodeBefore {
				r.NewPrimary, r.NewPrimaryAt = w.Node, w.Done
				r.NewPrimaryAfter = w.Done.Sub(c.faultAt)
			}
		}
	}
	return r
}

// timeline buckets ws, sorted by Done, relative to faultAt.
func timeline(ws []Write, faultAt time.Time) []TimelinePoint {
	bucket := func(t time.Time) int64 {
		d := t.Sub(faultAt)
		b := int64(d / TimelineBucket)
		if d < 0 && d%TimelineBucket != 0 {
			b-- // floor, not truncation toward zero
		}
		return b
	}
	first, last := bucket(ws[0].Done), bucket(ws[len(ws)-1].Done)
	out := make([]TimelinePoint, last-first+1)
	for i := range out {
		out[i].Offset = time.Duration(first+int64(i)) * TimelineBucket
	}
	for _, w := range ws {
		p := &out[bucket(w.Done)-first]
		switch w.Outcome {
		case OutcomeAcked:
			p.Acked++
		case OutcomeFailed:
			p.Failed++
		default:
			p.Unknown++
		}
	}
	return out
}

// errorClasses returns the classes of r.Errors, most frequent first.
func (r *CheckResult) errorClasses() []string {
	classes := make([]string, 0, len(r.Errors))
	for k := range r.Errors {
		classes = append(classes, k)
	}
	slices.SortFunc(classes, func(a, b string) int {
		return cmp.Or(cmp.Compare(r.Errors[b], r.Errors[a]), cmp.Compare(a, b))
	})
	return classes
}
