package bench

import (
	"cmp"
	"slices"
	"time"
)

// This file judges a direct prober's history for split brain: two nodes
// accepting writes at the same time. It is pure: every time comes from the
// caller, and nothing here knows how the writes were made.

// Accept is one acknowledged direct write: Node accepted a write sent at
// Sent and committed by Acked. The commit happened at some instant of
// [Sent, Acked]; which one is not known.
type Accept struct {
	Node        string
	Sent, Acked time.Time
}

// SplitBrainWindow is a span during which two nodes both accepted writes.
// A is the node whose writable interval began first (by name when both
// began at once); Start is before End.
type SplitBrainWindow struct {
	A, B       string
	Start, End time.Time
}

// Duration is how long the window lasted.
func (w SplitBrainWindow) Duration() time.Duration { return w.End.Sub(w.Start) }

// writable is one writable interval of a node: the hull of a run of its
// accepts, from the first Sent to the last Acked.
type writable struct {
	node       string
	start, end time.Time
}

// FindSplitBrain returns the split-brain windows of a history of accepts,
// in any order, sorted by Start (then A, then B).
//
// First the accepts of each node are joined into writable intervals: an
// accept whose Sent is less than gap after the latest Acked of the
// interval so far (or before it) extends that interval, and otherwise
// starts a new one. Gap says how long a node that accepted writes is taken
// to have stayed writable without being seen to: a little more than the
// prober's period, so that a probe lost to a timeout does not split an
// interval, and much less than the time a switchback takes, so that a node
// that legitimately leads again later is not taken to have led all along.
// A gap of zero or less joins only accepts that overlap.
//
// Then every two intervals of different nodes that overlap form a window,
// their overlap: from the Sent of the later-starting interval to the Acked
// of the earlier-ending one. Since a commit may have happened anywhere in
// its [Sent, Acked], that is every instant at which both nodes may have
// been writable, so a window is reported whenever the two commits cannot
// be ordered by the prober's clock. Intervals that only touch (one's
// Acked equals the other's Sent) are ordered and form no window, and
// neither does a node that stopped accepting before its successor's first
// write was sent: a clean failover.
//
// An accept whose Acked is before its Sent is taken as spanning both.
func FindSplitBrain(accepts []Accept, gap time.Duration) []SplitBrainWindow {
	ivs := writableIntervals(accepts, gap)
	slices.SortFunc(ivs, func(a, b writable) int {
		return cmp.Or(a.start.Compare(b.start), cmp.Compare(a.node, b.node), a.end.Compare(b.end))
	})
	var ws []SplitBrainWindow
	for i, a := range ivs {
		// Every later interval starting before a ends overlaps a; the
		// first one starting at or after its end, and all after it, do
		// not. None of them is a's node: a node's intervals are apart.
		for _, b := range ivs[i+1:] {
			if !b.start.Before(a.end) {
				break
			}
			end := a.end
			if b.end.Before(end) {
				end = b.end
			}
			ws = append(ws, SplitBrainWindow{A: a.node, B: b.node, Start: b.start, End: end})
		}
	}
	slices.SortStableFunc(ws, func(x, y SplitBrainWindow) int {
		return cmp.Or(x.Start.Compare(y.Start), cmp.Compare(x.A, y.A), cmp.Compare(x.B, y.B))
	})
	return ws
}

// writableIntervals joins the accepts of each node into its writable
// intervals, as FindSplitBrain describes. The result is in no useful order.
func writableIntervals(accepts []Accept, gap time.Duration) []writable {
	as := make([]writable, len(accepts))
	for i, a := range accepts {
		as[i] = writable{node: a.Node, start: a.Sent, end: a.Acked}
		if a.Acked.Before(a.Sent) {
			as[i].start, as[i].end = a.Acked, a.Sent
		}
	}
	slices.SortFunc(as, func(a, b writable) int {
		return cmp.Or(cmp.Compare(a.node, b.node), a.start.Compare(b.start), a.end.Compare(b.end))
	})
	var ivs []writable
	for _, a := range as {
		if n := len(ivs); n > 0 {
			cur := &ivs[n-1]
			if cur.node == a.node {
				if d := a.start.Sub(cur.end); d <= 0 || d < gap {
					if a.end.After(cur.end) {
						cur.end = a.end
					}
					continue
				}
			}
		}
		ivs = append(ivs, a)
	}
	return ivs
}
