package bench

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestHistogramBucketsTileTheRange(t *testing.T) {
	var next uint64
	for i := range histBuckets {
		lo, hi := histBounds(i)
		if lo != next {
			t.Fatalf("bucket %d starts at %d µs, want %d (gap or overlap)", i, lo, next)
		}
		if hi < lo {
			t.Fatalf("bucket %d: hi %d < lo %d", i, hi, lo)
		}
		if got := histIndex(lo); got != i {
			t.Fatalf("histIndex(%d) = %d, want %d", lo, got, i)
		}
		if got := histIndex(hi); got != i {
			t.Fatalf("histIndex(%d) = %d, want %d", hi, got, i)
		}
		if lo >= histLinear {
			if width := hi - lo + 1; float64(width)/float64(lo) > 1.0/histPerOctave {
				t.Fatalf("bucket %d [%d, %d] is wider than 1/%d of its start", i, lo, hi, histPerOctave)
			}
		} else if hi != lo {
			t.Fatalf("bucket %d below 1 ms is [%d, %d], want one microsecond", i, lo, hi)
		}
		next = hi + 1
	}
	if next-1 != histMaxValue {
		t.Fatalf("last bucket ends at %d µs, want %d", next-1, histMaxValue)
	}
	if histMaxValue < uint64(10*time.Second/time.Microsecond) {
		t.Fatalf("range ends at %d µs, want at least 10 s", histMaxValue)
	}
}

func TestHistogramQuantileExactBelowOneMillisecond(t *testing.T) {
	h := NewHistogram()
	for us := 1000; us >= 1; us-- { // order must not matter
		h.Record(time.Duration(us) * time.Microsecond)
	}
	cases := []struct {
		name string
		q    float64
		want time.Duration
	}{
		{"lowest rank", 0.0001, 1 * time.Microsecond},
		{"p0.1 is the first value", 0.001, 1 * time.Microsecond},
		{"p50", 0.50, 500 * time.Microsecond},
		{"p90", 0.90, 900 * time.Microsecond},
		{"p99", 0.99, 990 * time.Microsecond},
		{"p99.95 rounds the rank up", 0.9995, 1000 * time.Microsecond},
		{"p100 is the max", 1, 1000 * time.Microsecond},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := h.Quantile(c.q); got != c.want {
				t.Errorf("Quantile(%v) = %v, want %v", c.q, got, c.want)
			}
		})
	}
	if got, want := h.Mean(), 500500*time.Nanosecond; got != want {
		t.Errorf("Mean = %v, want %v", got, want)
	}
	if h.Min() != time.Microsecond || h.Max() != time.Millisecond || h.Count() != 1000 {
		t.Errorf("Min, Max, Count = %v, %v, %d; want 1µs, 1ms, 1000", h.Min(), h.Max(), h.Count())
	}
}

// TestHistogramQuantileErrorBound compares against the exact nearest-rank
// quantile of log-uniform latencies from 1 µs to 10 s: the histogram may
// err high by one bucket width and never low (beyond the truncation to
// whole microseconds).
func TestHistogramQuantileErrorBound(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	h := NewHistogram()
	var vals []time.Duration
	for range 20000 {
		us := math.Exp(rng.Float64() * math.Log(10e6))
		d := time.Duration(us * float64(time.Microsecond))
		vals = append(vals, d)
		h.Record(d)
	}
	slices.Sort(vals)
	for _, q := range []float64{0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1} {
		exact := vals[int(math.Ceil(q*float64(len(vals))))-1]
		floor := exact.Truncate(time.Microsecond)
		ceiling := floor + time.Duration(float64(floor)/histPerOctave) + time.Microsecond
		got := h.Quantile(q)
		if got < floor || got > ceiling {
			t.Errorf("Quantile(%v) = %v, exact %v: want within [%v, %v]", q, got, exact, floor, ceiling)
		}
	}
}

func TestHistogramEmpty(t *testing.T) {
	h := NewHistogram()
	if h.Quantile(0.5) != 0 || h.Min() != 0 || h.Max() != 0 || h.Mean() != 0 || h.Count() != 0 {
		t.Errorf("empty histogram: Quantile %v Min %v Max %v Mean %v Count %d, want all 0",
			h.Quantile(0.5), h.Min(), h.Max(), h.Mean(), h.Count())
	}
	h.Merge(NewHistogram())
	if h.Min() != 0 || h.Count() != 0 {
		t.Errorf("after merging an empty histogram: Min %v Count %d, want 0, 0", h.Min(), h.Count())
	}
}

func TestHistogramMergeEqualsRecordingAll(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	all, a, b := NewHistogram(), NewHistogram(), NewHistogram()
	for i := range 5000 {
		d := time.Duration(rng.Int64N(int64(50 * time.Millisecond)))
		all.Record(d)
		if i%3 == 0 {
			a.Record(d)
		} else {
			b.Record(d)
		}
	}
	a.Merge(b)
	if *a != *all {
		t.Fatalf("merged histogram differs from one that recorded everything")
	}
}

func TestHistogramOutOfRange(t *testing.T) {
	h := NewHistogram()
	h.Record(-time.Second)
	h.Record(time.Hour)
	if got := h.Quantile(0.5); got != 0 {
		t.Errorf("p50 = %v, want 0 (negative recorded as zero)", got)
	}
	if got := h.Quantile(1); got != time.Hour {
		t.Errorf("p100 = %v, want 1h (the exact max, though beyond the last bucket)", got)
	}
}

func TestHistogramReset(t *testing.T) {
	h := NewHistogram()
	h.Record(time.Millisecond)
	h.Reset()
	if *h != *NewHistogram() {
		t.Errorf("Reset did not return the histogram to empty")
	}
}

func TestHistogramRecordDoesNotAllocate(t *testing.T) {
	h := NewHistogram()
	d := 123 * time.Microsecond
	if n := testing.AllocsPerRun(1000, func() { h.Record(d); d += 7 * time.Microsecond }); n != 0 {
		t.Errorf("Record allocates %v times per call, want 0", n)
	}
}

func BenchmarkHistogramRecord(b *testing.B) {
	h := NewHistogram()
	for i := 0; b.Loop(); i++ {
		h.Record(time.Duration(i&0xfffff) * 100 * time.Nanosecond)
	}
}
