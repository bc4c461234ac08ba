package bench

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Result files in a results directory, as `make bench` writes them; the
// report is built from these files alone, so it can be rebuilt (or
// restyled) without rerunning anything.
const (
	ThroughputFile  = "throughput.json"
	EnvironmentFile = "environment.txt"
	ReportFile      = "report.md"
	// failover-<kind>-<n>.json: one probe run around one fault.
	failoverPrefix = "failover-"
)

// FailoverFile names the JSON of run n of a failover kind.
func FailoverFile(kind string, n int) string {
	return fmt.Sprintf("%s%s-%d.json", failoverPrefix, kind, n)
}

// Results is everything found in one results directory.
type Results struct {
	Throughput  *jsonReport // nil when the directory has none
	Failovers   []FailoverSet
	Environment string // free text about the machine and the versions
}

// FailoverSet is the runs of one failover kind.
type FailoverSet struct {
	Kind string
	Runs []jsonFailover
}

// failoverOrder is the order kinds appear in the report; others follow by
// name.
var failoverOrder = []string{"node-loss", "node-loss-sync", "switchover", "postmaster-crash"}

// LoadResults reads a results directory. A file that is present but not
// valid is an error naming it; a directory with neither throughput nor
// failover results is an error too.
func LoadResults(dir string) (*Results, error) {
	r := &Results{}
	if b, err := os.ReadFile(filepath.Join(dir, ThroughputFile)); err == nil {
		r.Throughput = &jsonReport{}
		if err := json.Unmarshal(b, r.Throughput); err != nil {
			return nil, fmt.Errorf("%s: %w", ThroughputFile, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if b, err := os.ReadFile(filepath.Join(dir, EnvironmentFile)); err == nil {
		r.Environment = strings.TrimSpace(string(b))
	}
	files, err := filepath.Glob(filepath.Join(dir, failoverPrefix+"*.json"))
	if err != nil {
		return nil, err
	}
	byKind := map[string]*FailoverSet{}
	for _, f := range files {
		base := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(f), failoverPrefix), ".json")
		i := strings.LastIndexByte(base, '-')
		if i <= 0 {
			return nil, fmt.Errorf("%s: want %s<kind>-<n>.json", filepath.Base(f), failoverPrefix)
		}
		kind := base[:i]
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var run jsonFailover
		if err := json.Unmarshal(b, &run); err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Base(f), err)
		}
		set := byKind[kind]
		if set == nil {
			set = &FailoverSet{Kind: kind}
			byKind[kind] = set
		}
		set.Runs = append(set.Runs, run)
	}
	for _, s := range byKind {
		r.Failovers = append(r.Failovers, *s)
	}
	rank := func(k string) int {
		if i := slices.Index(failoverOrder, k); i >= 0 {
			return i
		}
		return len(failoverOrder)
	}
	slices.SortFunc(r.Failovers, func(a, b FailoverSet) int {
		return cmp.Or(cmp.Compare(rank(a.Kind), rank(b.Kind)), cmp.Compare(a.Kind, b.Kind))
	})
	if r.Throughput == nil && len(r.Failovers) == 0 {
		return nil, fmt.Errorf("%s: no %s and no %s*.json", dir, ThroughputFile, failoverPrefix)
	}
	return r, nil
}

// MainClients is the client count of the report's main table when the
// run measured it, else the largest it measured.
const MainClients = 16

// WriteReport writes report.md and its SVG charts into dir and returns
// the names of the files written.
func (r *Results) WriteReport(dir string) ([]string, error) {
	var written []string
	write := func(name string, render func(io.Writer) error) error {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		if err := render(f); err != nil {
			f.Close()
			return fmt.Errorf("%s: %w", name, err)
		}
		if err := f.Close(); err != nil {
			return err
		}
		written = append(written, name)
		return nil
	}
	var md strings.Builder
	md.WriteString("# pharos benchmark report\n\n")
	if r.Environment != "" {
		md.WriteString("```\n" + r.Environment + "\n```\n\n")
	}
	if t := r.Throughput; t != nil {
		r.writeMainTable(&md)
		for _, w := range t.workloads() {
			for _, metric := range []string{"tps", "p99"} {
				name := fmt.Sprintf("%s-%s.svg", metric, w)
				chart := t.barChart(w, metric)
				if err := write(name, chart.WriteSVG); err != nil {
					return written, err
				}
			}
		}
	}
	if len(r.Failovers) > 0 {
		r.writeFailoverTable(&md)
	}
	for _, s := range r.Failovers {
		run := s.medianRun()
		chart := TimelineChart{
			Title: fmt.Sprintf("%s: writes around the fault (median run of %d: outage %s ms)", s.Kind, len(s.Runs), formatValue(run.MaxOutageMs)),
		}
		if run.Timeline != nil {
			chart.BucketMs, chart.Points = run.Timeline.BucketMs, run.Timeline.Points
		}
		if run.RecoveredAfterMs != nil {
			chart.Marks = append(chart.Marks, TimelineMark{AtMs: *run.RecoveredAfterMs, Label: "writes resume"})
		}
		name := fmt.Sprintf("failover-%s.svg", s.Kind)
		if err := write(name, chart.WriteSVG); err != nil {
			return written, err
		}
		fmt.Fprintf(&md, "![%s timeline](%s)\n\n", s.Kind, name)
	}
	if t := r.Throughput; t != nil {
		md.WriteString("## Throughput and latency by client count\n\n")
		fmt.Fprintf(&md, "Median tps over %s of %s per target and case, targets alternating; p99 from all rounds' latencies. ", plural(t.Rounds, "round"), formatSeconds(t.Duration))
		fmt.Fprintf(&md, "Ratios are to `%s`.\n\n", t.Baseline)
		for _, w := range t.workloads() {
			fmt.Fprintf(&md, "### %s\n\n%s\n\n", w, workloadBlurb(w))
			t.writeWorkloadTable(&md, w)
			fmt.Fprintf(&md, "\n![%s tps](tps-%s.svg)\n![%s p99](p99-%s.svg)\n\n", w, w, w, w)
		}
	}
	md.WriteString(methodText)
	if err := write(ReportFile, func(w io.Writer) error { _, err := io.WriteString(w, md.String()); return err }); err != nil {
		return written, err
	}
	return written, nil
}

const methodText = `## Method

- Every target serves the same database on the same machine; targets are measured in alternation (each round runs every case against every target, the order rotated each round), so a noisy neighbour or thermal drift hits all of them alike. The figure is the median over rounds.
- A run opens its connections and primes each with one transaction before the clock starts (except the connect workload, whose transaction is the connection). Latency is per transaction, client side.
- select is pgbench's select-only transaction (-S), write pgbench's simple-update (-N: BEGIN, UPDATE, SELECT, INSERT, END as five round trips), connect a new connection per select (-C -S).
- Failover runs write one numbered row every 5 ms through the pharos proxy on one connection, reconnecting after any error, around the fault, and read every row back from the final primary. The outage is the longest time without an acknowledged write.

Rebuild this report from the JSON files with ` + "`pharos bench report --dir <this directory>`" + `.
`

func workloadBlurb(w Workload) string {
	switch w {
	case WorkloadSelect:
		return "pgbench select-only: one primary-key lookup per transaction on a held connection."
	case WorkloadWrite:
		return "pgbench simple-update: five statements per transaction on a held connection."
	case WorkloadConnect:
		return "A new connection (startup, SCRAM authentication, one select, Terminate) per transaction: the connection-setup rate."
	}
	return ""
}

func clientsLabel(n int) string { return plural(n, "client") }

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func formatSeconds(s float64) string { return trimZeros(fmt.Sprintf("%.1f", s)) + " s" }

// workloads returns the workloads of the report, in run order.
func (t *jsonReport) workloads() []Workload {
	var out []Workload
	for _, c := range t.Cases {
		if !slices.Contains(out, c.Workload) {
			out = append(out, c.Workload)
		}
	}
	return out
}

func (t *jsonReport) clientCounts() []int {
	var out []int
	for _, c := range t.Cases {
		if !slices.Contains(out, c.Clients) {
			out = append(out, c.Clients)
		}
	}
	slices.Sort(out)
	return out
}

// targetNames returns the targets in the order they were given.
func (t *jsonReport) targetNames() []string {
	var out []string
	for _, c := range t.Cases {
		for _, tr := range c.Targets {
			if !slices.Contains(out, tr.Name) {
				out = append(out, tr.Name)
			}
		}
	}
	return out
}

// find returns the result of target in the case (w, clients) in the
// report's first mode that has it.
func (t *jsonReport) find(w Workload, clients int, target string) (jsonTarget, Mode, bool) {
	for _, c := range t.Cases {
		if c.Workload != w || c.Clients != clients {
			continue
		}
		for _, tr := range c.Targets {
			if tr.Name == target {
				return tr, c.Mode, true
			}
		}
	}
	return jsonTarget{}, "", false
}

func (t *jsonReport) mainClients() int {
	counts := t.clientCounts()
	if slices.Contains(counts, MainClients) || len(counts) == 0 {
		return MainClients
	}
	return counts[len(counts)-1]
}

func (r *Results) writeMainTable(md *strings.Builder) {
	t := r.Throughput
	n := t.mainClients()
	ws := t.workloads()
	fmt.Fprintf(md, "## Main table: %s\n\n", clientsLabel(n))
	header := []string{"target"}
	for _, w := range ws {
		header = append(header, string(w)+" tps", string(w)+" p99 ms")
	}
	header = append(header, "vs "+t.Baseline)
	rows := [][]string{header}
	var mode Mode
	for _, name := range t.targetNames() {
		row := []string{name}
		var ratios []string
		for _, w := range ws {
			tr, m, ok := t.find(w, n, name)
			if !ok {
				row = append(row, "–", "–")
				continue
			}
			mode = m
			row = append(row, fmt.Sprintf("%.0f", tr.TPS), fmt.Sprintf("%.2f", tr.Latency.P99))
			if tr.Ratio > 0 {
				ratios = append(ratios, fmt.Sprintf("%s %.2f×", w, tr.Ratio))
			}
		}
		row = append(row, strings.Join(ratios, ", "))
		rows = append(rows, row)
	}
	writeMarkdownTable(md, rows)
	fmt.Fprintf(md, "\nProtocol: %s. %s of %s per target and case.\n\n", mode, plural(t.Rounds, "round"), formatSeconds(t.Duration))
}

func (t *jsonReport) writeWorkloadTable(md *strings.Builder, w Workload) {
	header := []string{"target"}
	counts := t.clientCounts()
	for _, n := range counts {
		header = append(header, clientsLabel(n)+": tps (p99 ms, ratio)")
	}
	rows := [][]string{header}
	for _, name := range t.targetNames() {
		row := []string{name}
		for _, n := range counts {
			tr, _, ok := t.find(w, n, name)
			if !ok {
				row = append(row, "–")
				continue
			}
			row = append(row, fmt.Sprintf("%.0f (%.2f, %.2f×)", tr.TPS, tr.Latency.P99, tr.Ratio))
		}
		rows = append(rows, row)
	}
	writeMarkdownTable(md, rows)
}

// barChart is tps or p99 latency ("tps" or "p99") of workload w, grouped
// by client count, one series per target.
func (t *jsonReport) barChart(w Workload, metric string) *BarChart {
	c := &BarChart{Title: fmt.Sprintf("%s: transactions per second (median)", w), YLabel: "tps"}
	if metric == "p99" {
		c.Title, c.YLabel = fmt.Sprintf("%s: p99 latency", w), "ms"
	}
	counts := t.clientCounts()
	for _, n := range counts {
		c.Groups = append(c.Groups, clientsLabel(n))
	}
	for _, name := range t.targetNames() {
		s := BarSeries{Name: name}
		for _, n := range counts {
			v := math.NaN()
			if tr, _, ok := t.find(w, n, name); ok {
				v = tr.TPS
				if metric == "p99" {
					v = tr.Latency.P99
				}
			}
			s.Values = append(s.Values, v)
		}
		c.Series = append(c.Series, s)
	}
	return c
}

// medianRun is the run with the median outage (the lower middle for an
// even count), the one a chart shows as typical.
func (s *FailoverSet) medianRun() jsonFailover {
	runs := slices.Clone(s.Runs)
	slices.SortStableFunc(runs, func(a, b jsonFailover) int { return cmp.Compare(a.MaxOutageMs, b.MaxOutageMs) })
	return runs[(len(runs)-1)/2]
}

func (r *Results) writeFailoverTable(md *strings.Builder) {
	md.WriteString("## Failover through the pharos proxy\n\n")
	rows := [][]string{{"fault", "runs", "write outage median (max) ms", "writes resume after, median ms", "acked writes lost", "writes refused read-only", "unanswered writes"}}
	for _, s := range r.Failovers {
		var outages, resumed []float64
		lost, readOnly, unknown, unchecked := 0, 0, 0, 0
		for _, run := range s.Runs {
			outages = append(outages, run.MaxOutageMs)
			if run.RecoveredAfterMs != nil {
				resumed = append(resumed, *run.RecoveredAfterMs)
			}
			lost += len(run.Lost)
			readOnly += run.Errors["25006"]
			unknown += run.Unknown
			if !run.Checked {
				unchecked++
			}
		}
		lostCell := fmt.Sprint(lost)
		if unchecked > 0 {
			lostCell += fmt.Sprintf(" (%d runs not read back)", unchecked)
		}
		resumedCell := "–"
		if len(resumed) > 0 {
			resumedCell = fmt.Sprintf("%.0f", Median(resumed))
		}
		rows = append(rows, []string{
			s.Kind, fmt.Sprint(len(s.Runs)),
			fmt.Sprintf("%.0f (%.0f)", Median(outages), slices.Max(outages)),
			resumedCell, lostCell, fmt.Sprint(readOnly), fmt.Sprint(unknown),
		})
	}
	writeMarkdownTable(md, rows)
	md.WriteString("\nThe outage is the longest gap between two acknowledged writes; \"writes resume\" counts from the fault. " +
		"Unanswered writes (connection cut mid-commit) are never counted as lost; every acknowledged one is read back from the final primary.\n\n")
}

// writeMarkdownTable writes rows as a pipe table, the first row the
// header; columns after the first are right-aligned.
func writeMarkdownTable(md *strings.Builder, rows [][]string) {
	for i, row := range rows {
		md.WriteString("| " + strings.Join(row, " | ") + " |\n")
		if i == 0 {
			md.WriteString("|---")
			for range row[1:] {
				md.WriteString("|---:")
			}
			md.WriteString("|\n")
		}
	}
}
