package bench

import (
	"math"
	"math/bits"
	"time"
)

// Histogram geometry. Values are recorded in whole microseconds.
//
//   - Below 1024 µs every microsecond has its own bucket (exact).
//   - From 1024 µs on, each power-of-two range [2^k, 2^(k+1)) is cut into
//     512 equal buckets, so a bucket is never wider than 1/512 of its lower
//     bound: about 0.2 % relative error.
//   - The last range ends at 2^24-1 µs (16.7 s); larger values are counted in
//     the last bucket. Min and max are kept exactly beside the buckets.
//
// That is 8192 buckets (64 KiB of counters) per histogram.
const (
	histLinearBits = 10
	histLinear     = 1 << histLinearBits // exact buckets 0..1023 µs
	histPerOctave  = histLinear / 2      // buckets per power of two above that
	histTopBit     = 23                  // highest octave: [2^23, 2^24) µs
	histMaxValue   = 1<<(histTopBit+1) - 1
	histBuckets    = histLinear + (histTopBit-histLinearBits+1)*histPerOctave
)

// Histogram counts latencies in fixed log-linear buckets. Record does not
// allocate, so it can sit in a client's hot loop. The zero value is not
// usable; call NewHistogram. A Histogram is not safe for concurrent use:
// give each client its own and Merge them afterwards.
type Histogram struct {
	counts   [histBuckets]uint64
	total    uint64
	sum      time.Duration
	min, max time.Duration
}

// NewHistogram returns an empty histogram.
func NewHistogram() *Histogram {
	h := &Histogram{}
	h.Reset()
	return h
}

// Reset empties h so it can be reused without allocating.
func (h *Histogram) Reset() {
	clear(h.counts[:])
	h.total = 0
	h.sum = 0
	h.min = math.MaxInt64
	h.max = 0
}

// Record adds one latency. Negative durations count as zero.
func (h *Histogram) Record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.counts[histIndex(uint64(d/time.Microsecond))]++
	h.total++
	h.sum += d
	h.min = min(h.min, d)
	h.max = max(h.max, d)
}

// Merge adds every observation of o to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.total == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.total += o.total
	h.sum += o.sum
	h.min = min(h.min, o.min)
	h.max = max(h.max, o.max)
}

// Count is the number of recorded latencies.
func (h *Histogram) Count() uint64 { return h.total }

// Min is the smallest recorded latency, exactly; 0 when empty.
func (h *Histogram) Min() time.Duration {
	if h.total == 0 {
		return 0
	}
	return h.min
}

// Max is the largest recorded latency, exactly; 0 when empty.
func (h *Histogram) Max() time.Duration { return h.max }

// Mean is the exact mean latency; 0 when empty.
func (h *Histogram) Mean() time.Duration {
	if h.total == 0 {
		return 0
	}
	return h.sum / time.Duration(h.total)
}

// Quantile returns the latency at quantile q (0 < q ≤ 1): the upper bound
// of the bucket holding the ceil(q·n)-th smallest observation, clamped to
// the exact min and max. Like HDR histograms it errs high, by at most one
// bucket width (1 µs below 1 ms, 0.2 % above); in the last bucket, which
// also counts everything beyond 16.7 s, it returns the max. It returns 0
// when h is empty.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.total)))
	rank = min(max(rank, 1), h.total)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			if i == histBuckets-1 {
				return h.max // the last bucket also holds everything beyond it
			}
			_, hi := histBounds(i)
			v := time.Duration(hi) * time.Microsecond
			return min(max(v, h.min), h.max)
		}
	}
	return h.max // unreachable: the counts add up to total
}

// histIndex maps a value in microseconds to its bucket.
func histIndex(us uint64) int {
	if us < histLinear {
		return int(us)
	}
	us = min(us, histMaxValue)
	k := bits.Len64(us) - 1           // us is in [2^k, 2^(k+1)), k ≥ histLinearBits
	shift := k - (histLinearBits - 1) // keeps the top 10 bits: us>>shift in [512, 1024)
	return histLinear + (k-histLinearBits)*histPerOctave + int(us>>shift) - histPerOctave
}

// histBounds returns the smallest and largest value, in microseconds, that
// fall into bucket i.
func histBounds(i int) (lo, hi uint64) {
	if i < histLinear {
		return uint64(i), uint64(i)
	}
	j := i - histLinear
	k := histLinearBits + j/histPerOctave
	shift := k - (histLinearBits - 1)
	lo = uint64(histPerOctave+j%histPerOctave) << shift
	return lo, lo + 1<<shift - 1
}
