package bench

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// Split-brain histories are written on a millisecond clock starting at
// sbT0. The prober of these histories probes every 100 ms, and a write
// takes 2 ms.
var sbT0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func sbAt(ms int) time.Time { return sbT0.Add(time.Duration(ms) * time.Millisecond) }

// accept is one accept of node, sent at sent ms and acknowledged at acked ms.
func accept(node string, sent, acked int) Accept {
	return Accept{Node: node, Sent: sbAt(sent), Acked: sbAt(acked)}
}

// probes returns the accepts of node for probes sent every 100 ms from
// first to last ms, each acknowledged 2 ms later.
func probes(node string, first, last int) []Accept {
	var as []Accept
	for ms := first; ms <= last; ms += 100 {
		as = append(as, accept(node, ms, ms+2))
	}
	return as
}

// sbHistory concatenates runs of accepts.
func sbHistory(runs ...[]Accept) []Accept { return slices.Concat(runs...) }

// formatWindows renders windows as "A/B start-end" in ms from sbT0, one
// per line, for comparison and readable failures.
func formatWindows(ws []SplitBrainWindow) string {
	var b strings.Builder
	for _, w := range ws {
		fmt.Fprintf(&b, "%s/%s %d-%d\n", w.A, w.B,
			w.Start.Sub(sbT0).Milliseconds(), w.End.Sub(sbT0).Milliseconds())
	}
	return b.String()
}

func TestFindSplitBrain(t *testing.T) {
	const gap = 300 * time.Millisecond // three probe periods
	tests := []struct {
		name    string
		accepts []Accept
		gap     time.Duration
		want    []string // "A/B start-end" in ms
	}{
		{
			name:    "empty history",
			accepts: nil,
			gap:     gap,
		},
		{
			name:    "one node only",
			accepts: probes("n1", 0, 3000),
			gap:     gap,
		},
		{
			name:    "single isolated accept",
			accepts: []Accept{accept("n1", 500, 502)},
			gap:     gap,
		},
		{
			// n1 is killed after its accept at 1000 ms; n2 is promoted
			// and first accepts at 1500 ms.
			name:    "clean failover n1 to n2",
			accepts: sbHistory(probes("n1", 0, 1000), probes("n2", 1500, 3000)),
			gap:     gap,
		},
		{
			// The successor's first write is sent one probe after the
			// old primary's last accept: well within gap, still no
			// overlap, since n1 acknowledged before n2's write was sent.
			name:    "failover within one probe period",
			accepts: sbHistory(probes("n1", 0, 1000), probes("n2", 1100, 3000)),
			gap:     gap,
		},
		{
			// n1 stays writable, unaware of the promotion of n2.
			name:    "old primary keeps accepting",
			accepts: sbHistory(probes("n1", 0, 2000), probes("n2", 1500, 3000)),
			gap:     gap,
			want:    []string{"n1/n2 1500-2002"},
		},
		{
			// n1 stopped, n2 took over at 1500 ms, then n1 came back
			// writable at 1600 ms for two probes: its second interval
			// starts after n2's.
			name:    "old primary accepts again after the new one started",
			accepts: sbHistory(probes("n1", 0, 1000), probes("n2", 1500, 3000), probes("n1", 1600, 1700)),
			gap:     gap,
			want:    []string{"n2/n1 1600-1702"},
		},
		{
			name:    "isolated stale accept inside the new primary's interval",
			accepts: sbHistory(probes("n2", 1500, 3000), []Accept{accept("n1", 2050, 2060)}),
			gap:     gap,
			want:    []string{"n2/n1 2050-2060"},
		},
		{
			// n2 leads from 1500 ms; n3 accepts from 2000 to 2200 ms and
			// n1 from 2100 to 2400 ms: every pair overlaps.
			name: "three nodes",
			accepts: sbHistory(probes("n1", 0, 1000), probes("n2", 1500, 3000),
				probes("n3", 2000, 2200), probes("n1", 2100, 2400)),
			gap: gap,
			want: []string{
				"n2/n3 2000-2202",
				"n2/n1 2100-2402",
				"n3/n1 2100-2202",
			},
		},
		{
			name: "three nodes in turn",
			accepts: sbHistory(probes("n1", 0, 1000), probes("n2", 1500, 3000),
				probes("n3", 3500, 5000)),
			gap: gap,
		},
		{
			// n1 leads, n2 takes over, then a switchback makes n1 lead
			// again: the 2.5 s n1 spent as a replica split its run of
			// accepts in two, so neither part overlaps n2.
			name: "switchback",
			accepts: sbHistory(probes("n1", 0, 1000), probes("n2", 1500, 3000),
				probes("n1", 3500, 5000)),
			gap: gap,
		},
		{
			// The same history judged with a gap longer than the time
			// n1 spent as a replica: its runs join, and it seems to have
			// led all along. This is why gap must stay short.
			name: "switchback with a gap longer than the switchback",
			accepts: sbHistory(probes("n1", 0, 1000), probes("n2", 1500, 3000),
				probes("n1", 3500, 5000)),
			gap:  3 * time.Second,
			want: []string{"n1/n2 1500-3002"},
		},
		{
			// n1's probe of 500 ms timed out, and n2 accepted one write
			// in that hole: gap bridges the lost probe, so n1 counts as
			// writable throughout.
			name:    "a lost probe does not hide an overlap",
			accepts: sbHistory(probes("n1", 0, 400), probes("n1", 600, 1000), []Accept{accept("n2", 450, 452)}),
			gap:     gap,
			want:    []string{"n1/n2 450-452"},
		},
		{
			name:    "gap zero joins only overlapping accepts",
			accepts: sbHistory(probes("n1", 0, 400), probes("n1", 600, 1000), []Accept{accept("n2", 450, 452)}),
			gap:     0,
		},
		{
			// n1's slow accept spans a fast one; the interval keeps the
			// slow one's end, and n2 overlaps it once, not twice.
			name:    "overlapping accepts of one node",
			accepts: []Accept{accept("n1", 0, 50), accept("n1", 10, 20), accept("n2", 30, 40)},
			gap:     0,
			want:    []string{"n1/n2 30-40"},
		},
		{
			// n1's second accept was sent the instant its first was
			// acknowledged: one interval, so n2 overlaps it once.
			name:    "equal timestamps: touching accepts of one node join with gap zero",
			accepts: []Accept{accept("n1", 0, 10), accept("n1", 10, 20), accept("n2", 5, 15)},
			gap:     0,
			want:    []string{"n1/n2 5-15"},
		},
		{
			// n2's first write was sent the instant n1 acknowledged its
			// last: the two commits are ordered.
			name:    "equal timestamps: successor sent as predecessor acked",
			accepts: sbHistory(probes("n1", 0, 1000), []Accept{accept("n2", 1002, 1004)}),
			gap:     gap,
		},
		{
			name:    "successor sent one millisecond before predecessor acked",
			accepts: sbHistory(probes("n1", 0, 1000), []Accept{accept("n2", 1001, 1004)}),
			gap:     gap,
			want:    []string{"n1/n2 1001-1002"},
		},
		{
			// Both intervals start and end at the same instants: A is
			// the first by name.
			name:    "equal timestamps: identical accepts",
			accepts: []Accept{accept("n2", 100, 102), accept("n1", 100, 102)},
			gap:     gap,
			want:    []string{"n1/n2 100-102"},
		},
		{
			// A gap is measured from the Acked of one accept to the Sent
			// of the next: 300 ms exactly is not closer than gap.
			name:    "equal timestamps: accepts exactly gap apart",
			accepts: []Accept{accept("n1", 0, 2), accept("n1", 302, 304), accept("n2", 100, 102)},
			gap:     gap,
		},
		{
			name:    "accepts just closer than gap",
			accepts: []Accept{accept("n1", 0, 2), accept("n1", 301, 303), accept("n2", 100, 102)},
			gap:     gap,
			want:    []string{"n1/n2 100-102"},
		},
		{
			// Out of order as a prober with one goroutine per node
			// might record them.
			name: "unsorted input",
			accepts: []Accept{
				accept("n2", 1700, 1702), accept("n1", 100, 102), accept("n1", 1800, 1802),
				accept("n2", 1500, 1502), accept("n1", 0, 2), accept("n1", 1900, 1902),
				accept("n2", 1600, 1602), accept("n1", 200, 202), accept("n2", 1900, 1902),
				accept("n2", 1800, 1802),
			},
			gap:  gap,
			want: []string{"n2/n1 1800-1902"},
		},
		{
			name:    "acked before sent is taken as spanning both",
			accepts: []Accept{accept("n1", 10, 0), accept("n2", 5, 6)},
			gap:     gap,
			want:    []string{"n1/n2 5-6"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := ""
			for _, w := range tt.want {
				want += w + "\n"
			}
			check := func(order string, accepts []Accept) {
				t.Helper()
				in := slices.Clone(accepts)
				got := FindSplitBrain(accepts, tt.gap)
				if s := formatWindows(got); s != want {
					t.Errorf("%s: FindSplitBrain =\n%swant\n%s", order, s, want)
				}
				if !slices.Equal(accepts, in) {
					t.Errorf("%s: FindSplitBrain modified its input", order)
				}
				for _, w := range got {
					if w.Duration() <= 0 {
						t.Errorf("%s: window %+v has duration %v", order, w, w.Duration())
					}
				}
			}
			check("as given", tt.accepts)
			rev := slices.Clone(tt.accepts)
			slices.Reverse(rev)
			check("reversed", rev)
			shuffled := slices.Clone(tt.accepts)
			rng := rand.New(rand.NewPCG(1, 2))
			rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
			check("shuffled", shuffled)
		})
	}
}

func TestSplitBrainWindowDuration(t *testing.T) {
	w := SplitBrainWindow{A: "n1", B: "n2", Start: sbAt(1500), End: sbAt(2002)}
	if got, want := w.Duration(), 502*time.Millisecond; got != want {
		t.Errorf("Duration = %v, want %v", got, want)
	}
}
