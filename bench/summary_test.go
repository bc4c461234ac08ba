package bench

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// sampleResults writes a results directory: the sample throughput report
// widened to three workloads and two client counts, and two failover
// kinds of three runs each, built from hand-made write histories.
func sampleResults(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	rep := sampleReport()
	var cases []CaseResult
	for _, w := range []Workload{WorkloadSelect, WorkloadWrite, WorkloadConnect} {
		for i, n := range []int{1, 16} {
			c := rep.Cases[i%len(rep.Cases)]
			c.Workload, c.Clients, c.Mode = w, n, ModeSimple
			cases = append(cases, c)
		}
	}
	rep.Cases = cases
	writeFile(t, filepath.Join(dir, ThroughputFile), rep.WriteJSON)
	if err := os.WriteFile(filepath.Join(dir, EnvironmentFile), []byte("cpus: 2\npostgres: 15\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"postmaster-crash", "node-loss"} {
		for n, outageMs := range []int{900, 400, 650} {
			h := newHistory()
			h.steady(1, 50, "n1", -500)
			h.fail(51, "57P01", 0, 3)
			h.steady(52, 100, "n2", outageMs)
			h.c.RecordFault(h.at(0))
			fr := &FailoverReport{Table: "probe", FirstID: 1, LastID: 100, Started: h.at(-500), Ended: h.at(outageMs + 500), Settled: true, Checked: true}
			fr.CheckResult = h.c.Check(ids("n2", idRange(1, 100)...))
			writeFile(t, filepath.Join(dir, FailoverFile(kind, n+1)), fr.WriteJSON)
		}
	}
	return dir
}

func writeFile(t *testing.T, path string, render func(io.Writer) error) {
	t.Helper()
	var b bytes.Buffer
	if err := render(&b); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestWriteReport(t *testing.T) {
	dir := sampleResults(t)
	res, err := LoadResults(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Failovers) != 2 || res.Failovers[0].Kind != "node-loss" || len(res.Failovers[0].Runs) != 3 {
		t.Fatalf("failovers %+v: want node-loss first, then postmaster-crash, three runs each", res.Failovers)
	}
	if got := res.Failovers[0].medianRun().MaxOutageMs; got < 650 || got > 660 {
		t.Errorf("median run's outage %v ms, want the 650 ms run's", got)
	}
	written, err := res.WriteReport(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"tps-select.svg", "p99-select.svg", "tps-write.svg", "p99-write.svg", "tps-connect.svg", "p99-connect.svg",
		"failover-node-loss.svg", "failover-postmaster-crash.svg", ReportFile}
	if strings.Join(written, " ") != strings.Join(want, " ") {
		t.Fatalf("wrote %v, want %v", written, want)
	}
	md, err := os.ReadFile(filepath.Join(dir, ReportFile))
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "report.md.golden", md)
	// Every chart the report links exists, and every chart is
	// well-formed XML with something drawn in it.
	for _, name := range written[:len(written)-1] {
		if !bytes.Contains(md, []byte("("+name+")")) {
			t.Errorf("report.md does not link %s", name)
		}
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		d := xml.NewDecoder(bytes.NewReader(b))
		rects := 0
		for {
			tok, err := d.Token()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: not well-formed: %v", name, err)
			}
			if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "rect" {
				rects++
			}
		}
		if rects < 4 {
			t.Errorf("%s: %d rects, want bars", name, rects)
		}
	}
}

func TestLoadResultsErrors(t *testing.T) {
	t.Run("empty directory", func(t *testing.T) {
		if _, err := LoadResults(t.TempDir()); err == nil || !strings.Contains(err.Error(), "no throughput.json") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("half-written JSON names the file", func(t *testing.T) {
		dir := sampleResults(t)
		if err := os.WriteFile(filepath.Join(dir, FailoverFile("switchover", 1)), []byte(`{"max_outage_ms": 12`), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadResults(dir); err == nil || !strings.Contains(err.Error(), "failover-switchover-1.json") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("failover file without a run number", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "failover-x.json"), []byte(`{}`), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadResults(dir); err == nil || !strings.Contains(err.Error(), "failover-x.json") {
			t.Errorf("err = %v", err)
		}
	})
}

func TestNiceTicks(t *testing.T) {
	for _, c := range []struct {
		hi   float64
		want string
	}{
		{0, "[0 0.2 0.4 0.6 0.8 1]"},
		{7, "[0 2 4 6 8]"},
		{12345, "[0 5000 10000 15000]"},
		{19.5, "[0 5 10 15 20]"},
	} {
		got, _ := json.Marshal(niceTicks(0, c.hi, 5))
		if g := strings.ReplaceAll(strings.Trim(string(got), "[]"), ",", " "); "["+g+"]" != c.want {
			t.Errorf("niceTicks(0, %v) = [%s], want %s", c.hi, g, c.want)
		}
	}
}

func TestTimelineChartWithoutWrites(t *testing.T) {
	var b bytes.Buffer
	c := TimelineChart{Title: "empty"}
	if err := c.WriteSVG(&b); err != nil || !strings.Contains(b.String(), "no writes recorded") {
		t.Errorf("err %v, svg %q", err, b.String())
	}
}
