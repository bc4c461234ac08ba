package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBenchThroughputFlags(t *testing.T) {
	ok := []string{"--target", "direct=host=127.0.0.1 port=1 user=x dbname=x"}
	for _, tc := range []struct {
		name string
		args []string
		key  string // the one line must name it
	}{
		{"no target", nil, "--target"},
		{"zero clients", append(ok, "--clients", "0"), "--clients"},
		{"a bad count in the list", append(ok, "--clients", "1,16,lots"), `"lots"`},
		{"a count given twice", append(ok, "--clients", "16,16"), "--clients"},
		{"unknown workload", append(ok, "--workload", "select,tpcc"), `"tpcc"`},
		{"unknown mode", append(ok, "--mode", "prepared"), "--mode"},
		{"zero rounds", append(ok, "--rounds", "0"), "--rounds"},
		{"target without a name", []string{"--target", "host=h"}, "--target #1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stderr := runCmd(t, append([]string{"bench", "throughput"}, tc.args...)...)
			if code != exitUsage {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, exitUsage, stderr)
			}
			if lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n"); len(lines) != 1 || !strings.Contains(stderr, tc.key) {
				t.Errorf("stderr %q: want one line naming %s", stderr, tc.key)
			}
		})
	}
}

func TestBenchReport(t *testing.T) {
	t.Run("usage errors", func(t *testing.T) {
		for _, args := range [][]string{{}, {"--dir", "x", "extra"}, {"--bogus"}} {
			if code, stderr := runCmd(t, append([]string{"bench", "report"}, args...)...); code != exitUsage {
				t.Errorf("%v: exit %d, want %d; stderr %q", args, code, exitUsage, stderr)
			}
		}
	})
	t.Run("a directory without results", func(t *testing.T) {
		code, stderr := runCmd(t, "bench", "report", "--dir", t.TempDir())
		if code != exitFailure || !strings.Contains(stderr, "no throughput.json") {
			t.Errorf("exit %d, stderr %q", code, stderr)
		}
	})
	t.Run("a half-written result names the file", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "throughput.json"), []byte(`{"cases": [`), 0o644); err != nil {
			t.Fatal(err)
		}
		code, stderr := runCmd(t, "bench", "report", "--dir", dir)
		if code != exitFailure || !strings.Contains(stderr, "throughput.json") {
			t.Errorf("exit %d, stderr %q", code, stderr)
		}
	})
	t.Run("failover results alone make a report", func(t *testing.T) {
		dir := t.TempDir()
		run := `{"max_outage_ms": 450, "recovered_after_ms": 440, "writes": 3, "acked": 2, "failed": 1, "errors": {"57P01": 1}, "checked": true, "lost": [],
			"timeline": {"bucket_ms": 100, "points": [{"t_ms": -100, "acked": 1}, {"t_ms": 0, "failed": 1}, {"t_ms": 400, "acked": 1}]}}`
		if err := os.WriteFile(filepath.Join(dir, "failover-switchover-1.json"), []byte(run), 0o644); err != nil {
			t.Fatal(err)
		}
		code, stderr := runCmd(t, "bench", "report", "--dir", dir)
		if code != exitOK {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
		md, err := os.ReadFile(filepath.Join(dir, "report.md"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(md), "| switchover | 1 | 450 (450) | 440 | 0 | 0 | 0 |") {
			t.Errorf("report.md lacks the switchover row:\n%s", md)
		}
		if _, err := os.Stat(filepath.Join(dir, "failover-switchover.svg")); err != nil {
			t.Error(err)
		}
	})
}
