package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// Report is the outcome of a throughput benchmark.
type Report struct {
	Started  time.Time     // when the first measured round began
	Duration time.Duration // of each run (one target, one case, one round)
	Rounds   int
	Warmup   time.Duration
	Query    string // the SQL of the select and connect workloads
	Baseline string // name of the target the ratios are relative to
	Cases    []CaseResult
}

// CaseResult holds one case's results.
type CaseResult struct {
	Case
	Targets []TargetResult // in the order the targets were given
}

// TargetResult is one target's results in one mode.
type TargetResult struct {
	Name         string
	RoundTPS     []float64 // one per round, in round order
	Transactions uint64    // completed over all rounds
	Latency      *Histogram

	// Set by summarize.
	MedianTPS float64
	Ratio     float64 // MedianTPS over the baseline's; 0 when the baseline has none
}

// summarize fills in the medians and the ratios to the target at index
// baseline.
func (m *CaseResult) summarize(baseline int) {
	for i := range m.Targets {
		m.Targets[i].MedianTPS = Median(m.Targets[i].RoundTPS)
	}
	base := m.Targets[baseline].MedianTPS
	for i := range m.Targets {
		t := &m.Targets[i]
		t.Ratio = 0
		if base > 0 {
			t.Ratio = t.MedianTPS / base
		}
	}
}

// WriteText writes one table per case: median tps, p50 and p99 latency in
// milliseconds, the ratio to the baseline and every round's tps.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	for i, m := range r.Cases {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "workload=%s mode=%s clients=%d duration=%s rounds=%d baseline=%s\n",
			m.Workload, m.Mode, m.Clients, r.Duration, r.Rounds, r.Baseline)
		header := []string{"target", "tps", "p50 ms", "p99 ms", "ratio"}
		for j := range r.Rounds {
			header = append(header, fmt.Sprintf("r%d tps", j+1))
		}
		rows := [][]string{header}
		for _, t := range m.Targets {
			row := []string{
				t.Name,
				fmt.Sprintf("%.1f", t.MedianTPS),
				formatMs(t.Latency.Quantile(0.50)),
				formatMs(t.Latency.Quantile(0.99)),
				fmt.Sprintf("%.3f", t.Ratio),
			}
			for j := range r.Rounds {
				cell := "-" // round not run (interrupted)
				if j < len(t.RoundTPS) {
					cell = fmt.Sprintf("%.1f", t.RoundTPS[j])
				}
				row = append(row, cell)
			}
			rows = append(rows, row)
		}
		writeTable(&b, rows)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeTable aligns rows into columns two spaces apart: the first column
// left-aligned, the others (numbers) right-aligned.
func writeTable(b *strings.Builder, rows [][]string) {
	var width []int
	for _, row := range rows {
		for j, cell := range row {
			if j == len(width) {
				width = append(width, 0)
			}
			width[j] = max(width[j], len(cell))
		}
	}
	for _, row := range rows {
		for j, cell := range row {
			pad := strings.Repeat(" ", width[j]-len(cell))
			switch {
			case j == 0:
				b.WriteString(cell)
				if len(row) > 1 {
					b.WriteString(pad)
				}
			default:
				b.WriteString("  ")
				b.WriteString(pad)
				b.WriteString(cell)
			}
		}
		b.WriteByte('\n')
	}
}

func formatMs(d time.Duration) string {
	return fmt.Sprintf("%.3f", float64(d)/float64(time.Millisecond))
}

// ms converts d to milliseconds rounded to the microsecond, for JSON.
func ms(d time.Duration) float64 {
	return math.Round(float64(d)/float64(time.Microsecond)) / 1000
}

// roundTo rounds x to the given number of decimals, so JSON shows no
// false precision.
func roundTo(x float64, decimals int) float64 {
	p := math.Pow(10, float64(decimals))
	return math.Round(x*p) / p
}

type jsonReport struct {
	Started  time.Time  `json:"started"`
	Duration float64    `json:"duration_seconds"`
	Rounds   int        `json:"rounds"`
	Warmup   float64    `json:"warmup_seconds"`
	Query    string     `json:"query"`
	Baseline string     `json:"baseline"`
	Cases    []jsonCase `json:"cases"`
}

type jsonCase struct {
	Workload Workload     `json:"workload"`
	Clients  int          `json:"clients"`
	Mode     Mode         `json:"mode"`
	Targets  []jsonTarget `json:"targets"`
}

type jsonTarget struct {
	Name         string      `json:"name"`
	TPS          float64     `json:"tps"`
	Ratio        float64     `json:"ratio"`
	RoundTPS     []float64   `json:"round_tps"`
	Transactions uint64      `json:"transactions"`
	Latency      jsonLatency `json:"latency_ms"`
}

type jsonLatency struct {
	Min  float64 `json:"min"`
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99_9"`
	Max  float64 `json:"max"`
}

// WriteJSON writes the report as one indented JSON document. Latencies
// are in milliseconds; tps values are per second.
func (r *Report) WriteJSON(w io.Writer) error {
	out := jsonReport{
		Started:  r.Started,
		Duration: r.Duration.Seconds(),
		Rounds:   r.Rounds,
		Warmup:   r.Warmup.Seconds(),
		Query:    r.Query,
		Baseline: r.Baseline,
		Cases:    []jsonCase{},
	}
	for _, m := range r.Cases {
		jm := jsonCase{Workload: m.Workload, Clients: m.Clients, Mode: m.Mode, Targets: []jsonTarget{}}
		for _, t := range m.Targets {
			h := t.Latency
			round := make([]float64, len(t.RoundTPS))
			for i, v := range t.RoundTPS {
				round[i] = roundTo(v, 1)
			}
			jm.Targets = append(jm.Targets, jsonTarget{
				Name:         t.Name,
				TPS:          roundTo(t.MedianTPS, 1),
				Ratio:        roundTo(t.Ratio, 4),
				RoundTPS:     round,
				Transactions: t.Transactions,
				Latency: jsonLatency{
					Min:  ms(h.Min()),
					Mean: ms(h.Mean()),
					P50:  ms(h.Quantile(0.50)),
					P90:  ms(h.Quantile(0.90)),
					P99:  ms(h.Quantile(0.99)),
					P999: ms(h.Quantile(0.999)),
					Max:  ms(h.Max()),
				},
			})
		}
		out.Cases = append(out.Cases, jm)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
