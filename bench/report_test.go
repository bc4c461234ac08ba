package bench

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output; only commit the changes if you understand what caused them")

// sampleReport is two cases (select at 16 clients in both modes), three targets (the baseline named direct in
// the middle), three rounds, with latencies chosen so the percentiles are
// easy to check by hand.
func sampleReport() *Report {
	lat := func(p50us, p99us int) *Histogram {
		h := NewHistogram()
		for range 98 {
			h.Record(time.Duration(p50us) * time.Microsecond)
		}
		h.Record(time.Duration(p99us) * time.Microsecond)
		h.Record(time.Duration(p99us*3) * time.Microsecond)
		return h
	}
	r := &Report{
		Started:  time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Duration: 10 * time.Second,
		Rounds:   3,
		Warmup:   2 * time.Second,
		Query:    PgbenchQuery,
		Baseline: "direct",
		Cases: []CaseResult{
			{Case: Case{Workload: WorkloadSelect, Clients: 16, Mode: ModeSimple}, Targets: []TargetResult{
				{Name: "pharos", RoundTPS: []float64{40100, 39000.25, 40500}, Transactions: 1196003, Latency: lat(390, 1234)},
				{Name: "direct", RoundTPS: []float64{45000, 46100.5, 44900}, Transactions: 1360005, Latency: lat(345, 1100)},
				{Name: "pgbouncer", RoundTPS: []float64{30000, 31000, 29000}, Transactions: 900000, Latency: lat(520, 25000)},
			}},
			{Case: Case{Workload: WorkloadSelect, Clients: 16, Mode: ModeExtended}, Targets: []TargetResult{
				{Name: "pharos", RoundTPS: []float64{50000, 51000, 52000}, Transactions: 1530000, Latency: lat(310, 980)},
				{Name: "direct", RoundTPS: []float64{55000, 54000, 56000}, Transactions: 1650000, Latency: lat(290, 900)},
				{Name: "pgbouncer", RoundTPS: []float64{36000, 35000, 37000}, Transactions: 1080000, Latency: lat(440, 1500)},
			}},
		},
	}
	for i := range r.Cases {
		r.Cases[i].summarize(1)
	}
	return r
}

func TestSummarize(t *testing.T) {
	r := sampleReport()
	simple := r.Cases[0].Targets
	if got, want := simple[1].MedianTPS, 45000.0; got != want {
		t.Errorf("direct median = %v, want %v", got, want)
	}
	if got, want := simple[1].Ratio, 1.0; got != want {
		t.Errorf("baseline ratio = %v, want %v", got, want)
	}
	if got, want := simple[0].Ratio, 40100.0/45000; got != want {
		t.Errorf("pharos ratio = %v, want %v", got, want)
	}

	t.Run("baseline without throughput gives no ratio", func(t *testing.T) {
		m := CaseResult{Targets: []TargetResult{{RoundTPS: []float64{0}}, {RoundTPS: []float64{10}}}}
		m.summarize(0)
		if m.Targets[1].Ratio != 0 {
			t.Errorf("ratio = %v, want 0", m.Targets[1].Ratio)
		}
	})
}

func TestWriteText(t *testing.T) {
	var b bytes.Buffer
	if err := sampleReport().WriteText(&b); err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "report.txt.golden", b.Bytes())
}

func TestWriteTextMissingRounds(t *testing.T) {
	r := sampleReport()
	r.Cases = r.Cases[:1]
	r.Cases[0].Targets[0].RoundTPS = r.Cases[0].Targets[0].RoundTPS[:2]
	var b bytes.Buffer
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "report-missing-round.txt.golden", b.Bytes())
}

func TestWriteJSON(t *testing.T) {
	var b bytes.Buffer
	if err := sampleReport().WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var parsed map[string]any
	if err := json.Unmarshal(b.Bytes(), &parsed); err != nil {
		t.Fatalf("output is not JSON: %v", err)
	}
	checkGolden(t, "report.json.golden", b.Bytes())
}

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (rerun with -update if the change is intended)\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}
