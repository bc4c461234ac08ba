package bench

import (
	"maps"
	"slices"
	"testing"
	"time"
)

// history feeds a Checker by hand on a millisecond clock starting at t0.
type history struct {
	c  Checker
	t0 time.Time
}

func newHistory() *history {
	return &history{t0: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (h *history) at(ms int) time.Time { return h.t0.Add(time.Duration(ms) * time.Millisecond) }

func (h *history) ack(id int64, node string, sent, done int) {
	h.c.Record(Write{ID: id, Outcome: OutcomeAcked, Node: node, Sent: h.at(sent), Done: h.at(done)})
}

func (h *history) fail(id int64, class string, sent, done int) {
	h.c.Record(Write{ID: id, Outcome: OutcomeFailed, Class: class, Sent: h.at(sent), Done: h.at(done)})
}

func (h *history) unknown(id int64, class string, sent, done int) {
	h.c.Record(Write{ID: id, Outcome: OutcomeUnknown, Class: class, Sent: h.at(sent), Done: h.at(done)})
}

// steady records acks on node for ids first..last, one every 10 ms from
// start, each taking 2 ms.
func (h *history) steady(first, last int64, node string, start int) {
	for id := first; id <= last; id++ {
		sent := start + int(id-first)*10
		h.ack(id, node, sent, sent+2)
	}
}

// ids returns a read-back holding the given ids, all on node.
func ids(node string, list ...int64) map[int64]string {
	m := make(map[int64]string, len(list))
	for _, id := range list {
		m[id] = node
	}
	return m
}

func idRange(first, last int64) []int64 {
	var l []int64
	for id := first; id <= last; id++ {
		l = append(l, id)
	}
	return l
}

func TestCheckerCleanHistory(t *testing.T) {
	h := newHistory()
	h.steady(1, 10, "n1", 0)
	r := h.c.Check(ids("n1", idRange(1, 10)...))
	if r.Writes != 10 || r.Acked != 10 || r.Failed != 0 || r.Unknown != 0 || r.Present != 10 {
		t.Errorf("writes %d acked %d failed %d unknown %d present %d, want 10 10 0 0 10", r.Writes, r.Acked, r.Failed, r.Unknown, r.Present)
	}
	if len(r.Lost) != 0 || len(r.FailedCommitted) != 0 || len(r.Errors) != 0 {
		t.Errorf("lost %v, failed committed %v, errors %v: want none", r.Lost, r.FailedCommitted, r.Errors)
	}
	// Acks 10 ms apart: the longest wait between two is one interval.
	if r.MaxOutage != 10*time.Millisecond || r.OutageOpen {
		t.Errorf("max outage %v (open %v), want 10ms closed", r.MaxOutage, r.OutageOpen)
	}
	if r.NodeAfter != "n1" || !r.FaultAt.IsZero() || !r.RecoveredAt.IsZero() {
		t.Errorf("node after %q, fault %v, recovered %v: want n1 and no fault figures", r.NodeAfter, r.FaultAt, r.RecoveredAt)
	}
}

func TestCheckerLostWrite(t *testing.T) {
	h := newHistory()
	h.steady(1, 10, "n1", 0)
	h.fail(11, "25006", 100, 101)
	h.steady(12, 15, "n1", 110)
	// 4 and 13 are missing (acknowledged: lost); 11 failed and is
	// missing as it should be.
	present := ids("n1", idRange(1, 15)...)
	for _, id := range []int64{4, 11, 13} {
		delete(present, id)
	}
	r := h.c.Check(present)
	if !slices.Equal(r.Lost, []int64{4, 13}) {
		t.Errorf("lost %v, want [4 13]", r.Lost)
	}
	if r.Acked != 14 || r.Failed != 1 || r.Present != 12 {
		t.Errorf("acked %d failed %d present %d, want 14 1 12", r.Acked, r.Failed, r.Present)
	}
	if want := map[string]int{"25006": 1}; !maps.Equal(r.Errors, want) {
		t.Errorf("errors %v, want %v", r.Errors, want)
	}
}

func TestCheckerUnknownOutcomesAreNotLost(t *testing.T) {
	h := newHistory()
	h.steady(1, 5, "n1", 0)
	h.unknown(6, ClassTimeout, 50, 550)
	h.unknown(7, ClassNetwork, 560, 561)
	h.unknown(8, ClassNetwork, 570, 571)
	h.steady(9, 12, "n1", 580)
	// 6 committed after all; 7 and 8 did not.
	present := ids("n1", 1, 2, 3, 4, 5, 6, 9, 10, 11, 12)
	r := h.c.Check(present)
	if len(r.Lost) != 0 {
		t.Errorf("lost %v, want none: unknown outcomes are never lost", r.Lost)
	}
	if r.Unknown != 3 || r.UnknownCommitted != 1 || r.Acked != 9 {
		t.Errorf("unknown %d (committed %d), acked %d; want 3 (1), 9", r.Unknown, r.UnknownCommitted, r.Acked)
	}
	if want := map[string]int{ClassTimeout: 1, ClassNetwork: 2}; !maps.Equal(r.Errors, want) {
		t.Errorf("errors %v, want %v", r.Errors, want)
	}

	t.Run("an unknown write missing beside a lost one", func(t *testing.T) {
		delete(present, 10)
		r := h.c.Check(present)
		if !slices.Equal(r.Lost, []int64{10}) {
			t.Errorf("lost %v, want [10]", r.Lost)
		}
	})
}

func TestCheckerFailedButCommitted(t *testing.T) {
	h := newHistory()
	h.steady(1, 3, "n1", 0)
	h.fail(4, "57P01", 30, 31)
	h.steady(5, 6, "n1", 40)
	r := h.c.Check(ids("n1", idRange(1, 6)...))
	if !slices.Equal(r.FailedCommitted, []int64{4}) || len(r.Lost) != 0 {
		t.Errorf("failed committed %v, lost %v; want [4] and none", r.FailedCommitted, r.Lost)
	}
}

// failoverHistory: n1 acknowledges every 10 ms until the fault at 100 ms,
// writes fail until 400 ms, then n2 acknowledges.
func failoverHistory() *history {
	h := newHistory()
	h.steady(1, 10, "n1", 0) // last ack at 92 ms
	h.c.RecordFault(h.at(100))
	h.fail(11, "57P01", 100, 103) // first failure after the fault
	h.fail(12, ClassNetwork, 110, 111)
	h.unknown(13, ClassTimeout, 120, 620)
	h.fail(14, "25006", 630, 631)
	h.ack(15, "n2", 640, 650) // recovered and new primary
	h.steady(16, 20, "n2", 660)
	return h
}

func TestCheckerOutageAndRecovery(t *testing.T) {
	h := failoverHistory()
	present := ids("n1", idRange(1, 20)...)
	for _, id := range []int64{11, 12, 14} { // failed: not there
		delete(present, id)
	}
	r := h.c.Check(present)
	checks := []struct {
		name      string
		got, want any
	}{
		{"max outage", r.MaxOutage, 558 * time.Millisecond}, // 92 ms to 650 ms
		{"outage start", r.OutageStart, h.at(92)},
		{"outage end", r.OutageEnd, h.at(650)},
		{"outage open", r.OutageOpen, false},
		{"fault at", r.FaultAt, h.at(100)},
		{"first failure", r.FirstFailureAt, h.at(103)},
		{"recovered at", r.RecoveredAt, h.at(650)},
		{"recovered after", r.RecoveredAfter, 550 * time.Millisecond},
		{"node before", r.NodeBefore, "n1"},
		{"node after", r.NodeAfter, "n2"},
		{"new primary", r.NewPrimary, "n2"},
		{"new primary after", r.NewPrimaryAfter, 550 * time.Millisecond},
		{"errors", r.Errors, map[string]int{"57P01": 1, ClassNetwork: 1, ClassTimeout: 1, "25006": 1}},
		{"counts", [3]int{r.Acked, r.Failed, r.Unknown}, [3]int{16, 3, 1}},
		{"lost", len(r.Lost), 0},
		{"failed committed", len(r.FailedCommitted), 0},
		{"unknown committed", r.UnknownCommitted, 1},
	}
	for _, c := range checks {
		if !equalAny(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}

	t.Run("recording order does not matter", func(t *testing.T) {
		shuffled := &history{t0: h.t0}
		for _, w := range slices.Backward(h.c.writes) {
			shuffled.c.Record(w)
		}
		shuffled.c.RecordFault(h.at(100))
		if got := shuffled.c.Check(present); got.MaxOutage != r.MaxOutage || got.RecoveredAt != r.RecoveredAt || got.NodeBefore != "n1" {
			t.Errorf("reversed: outage %v, recovered %v, node before %q", got.MaxOutage, got.RecoveredAt, got.NodeBefore)
		}
	})
}

func TestCheckerRecoveryOnTheSameNode(t *testing.T) {
	h := newHistory()
	h.steady(1, 5, "n1", 0) // last ack at 42 ms
	h.c.RecordFault(h.at(45))
	h.fail(6, ClassNetwork, 50, 51)
	h.fail(7, "57P03", 60, 361)
	h.steady(8, 10, "n1", 370) // first ack at 372 ms
	r := h.c.Check(ids("n1", idRange(1, 10)...))
	if r.MaxOutage != 330*time.Millisecond || r.RecoveredAfter != 327*time.Millisecond {
		t.Errorf("max outage %v, recovered after %v; want 330ms, 327ms", r.MaxOutage, r.RecoveredAfter)
	}
	if !r.NewPrimaryAt.IsZero() || r.NewPrimaryAfter != 0 || r.NodeBefore != "n1" || r.NodeAfter != "n1" {
		t.Errorf("new primary %q at %v (%v), nodes %q → %q; want none, n1 → n1", r.NewPrimary, r.NewPrimaryAt, r.NewPrimaryAfter, r.NodeBefore, r.NodeAfter)
	}
}

func TestCheckerUnknownNodesNeverMakeANewPrimary(t *testing.T) {
	h := newHistory()
	h.steady(1, 3, "", 0)
	h.c.RecordFault(h.at(30))
	h.fail(4, ClassNetwork, 30, 31)
	h.steady(5, 6, "n2", 40)
	r := h.c.Check(ids("", idRange(1, 6)...))
	if !r.NewPrimaryAt.IsZero() || r.RecoveredAfter != 12*time.Millisecond {
		t.Errorf("new primary at %v, recovered after %v; want none, 12ms", r.NewPrimaryAt, r.RecoveredAfter)
	}
}

func TestCheckerOutageToTheEnd(t *testing.T) {
	h := newHistory()
	h.steady(1, 3, "n1", 0) // last ack at 22 ms
	h.c.RecordFault(h.at(25))
	h.fail(4, ClassNetwork, 30, 31)
	h.unknown(5, ClassTimeout, 40, 540)
	h.fail(6, ClassNetwork, 550, 900)
	r := h.c.Check(ids("n1", 1, 2, 3))
	if r.MaxOutage != 878*time.Millisecond || !r.OutageOpen || r.OutageEnd != h.at(900) {
		t.Errorf("max outage %v open %v end %v; want 878ms, open, at 900ms", r.MaxOutage, r.OutageOpen, r.OutageEnd.Sub(h.t0))
	}
	if r.FirstFailureAt != h.at(31) || !r.RecoveredAt.IsZero() || r.RecoveredAfter != 0 {
		t.Errorf("first failure %v, recovered %v (%v); want 31ms and never", r.FirstFailureAt.Sub(h.t0), r.RecoveredAt, r.RecoveredAfter)
	}
}

func TestCheckerNoAcknowledgementAtAll(t *testing.T) {
	h := newHistory()
	h.fail(1, ClassNetwork, 0, 1)
	h.fail(2, ClassNetwork, 10, 11)
	r := h.c.Check(nil)
	if r.Acked != 0 || r.Failed != 2 || len(r.Lost) != 0 {
		t.Errorf("acked %d failed %d lost %v; want 0 2 none", r.Acked, r.Failed, r.Lost)
	}
	if r.MaxOutage != 11*time.Millisecond || !r.OutageOpen {
		t.Errorf("max outage %v open %v; want 11ms from the first write, open", r.MaxOutage, r.OutageOpen)
	}
}

func TestCheckerEmpty(t *testing.T) {
	var c Checker
	r := c.Check(nil)
	if r.Writes != 0 || r.MaxOutage != 0 || len(r.Lost) != 0 {
		t.Errorf("empty history: %+v", r)
	}
}

func equalAny(a, b any) bool {
	if am, ok := a.(map[string]int); ok {
		bm, ok := b.(map[string]int)
		return ok && maps.Equal(am, bm)
	}
	if at, ok := a.(time.Time); ok {
		bt, ok := b.(time.Time)
		return ok && at.Equal(bt)
	}
	return a == b
}

func TestCheckerTimeline(t *testing.T) {
	h := newHistory()
	h.ack(1, "n1", -260, -250) // bucket -300ms (floor, not toward zero)
	h.ack(2, "n1", -110, -100) // bucket -100ms: exactly on a boundary
	h.ack(3, "n1", -10, -1)    // bucket -100ms
	h.fail(4, "57P01", 0, 5)   // bucket 0
	h.unknown(5, ClassTimeout, 5, 99)
	h.ack(6, "n2", 240, 310) // bucket 300ms; 100 and 200 stay empty
	h.c.RecordFault(h.at(0))
	r := h.c.Check(ids("n2", 1, 2, 3, 6))
	want := []TimelinePoint{
		{Offset: -300 * time.Millisecond, Acked: 1},
		{Offset: -200 * time.Millisecond},
		{Offset: -100 * time.Millisecond, Acked: 2},
		{Offset: 0, Failed: 1, Unknown: 1},
		{Offset: 100 * time.Millisecond},
		{Offset: 200 * time.Millisecond},
		{Offset: 300 * time.Millisecond, Acked: 1},
	}
	if !slices.Equal(r.Timeline, want) {
		t.Errorf("timeline:\n got %+v\nwant %+v", r.Timeline, want)
	}

	t.Run("no fault, no timeline", func(t *testing.T) {
		h := newHistory()
		h.steady(1, 5, "n1", 0)
		if r := h.c.Check(ids("n1", idRange(1, 5)...)); r.Timeline != nil {
			t.Errorf("timeline without a fault: %+v", r.Timeline)
		}
	})
}
