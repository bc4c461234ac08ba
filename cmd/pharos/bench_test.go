package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// wantUsageLine runs a command line that must exit 2 with one line on
// stderr naming key.
func wantUsageLine(t *testing.T, key string, args ...string) {
	t.Helper()
	code, stderr := runCmd(t, args...)
	if code != exitUsage {
		t.Fatalf("exit %d, want %d; stderr:\n%s", code, exitUsage, stderr)
	}
	if lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n"); len(lines) != 1 || !strings.Contains(stderr, key) {
		t.Errorf("stderr %q: want one line naming %s", stderr, key)
	}
}

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
		{"zero duration", append(ok, "--duration", "0s"), "--duration"},
		{"negative warmup", append(ok, "--warmup", "-1s"), "--warmup"},
		{"zero accounts", append(ok, "--accounts", "0"), "--accounts"},
		{"accounts past int4", append(ok, "--accounts", "2147483648"), "--accounts"},
		{"target without a name", []string{"--target", "host=h"}, "--target #1"},
		{"a name given twice", append(ok, "--target", "direct=host=127.0.0.1 port=2 user=x dbname=x"), "direct"},
		{"unparsable target dsn", []string{"--target", "proxy=port=notaport"}, "--target #1"},
		{"a positional argument", append(ok, "extra"), `"extra"`},
		{"unknown flag", append(ok, "--bogus"), "-bogus"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantUsageLine(t, tc.key, append([]string{"bench", "throughput"}, tc.args...)...)
		})
	}

	t.Run("a password in a bad target is not echoed", func(t *testing.T) {
		code, stderr := runCmd(t, "bench", "throughput", "--target", "proxy=postgres://u:s3cret@h:notaport/db")
		if code != exitUsage || strings.Contains(stderr, "s3cret") || !strings.Contains(stderr, "--target") {
			t.Errorf("exit %d, stderr %q; want %d naming --target without the password", code, stderr, exitUsage)
		}
	})

	t.Run("help", func(t *testing.T) {
		code, stderr := runCmd(t, "bench", "throughput", "-h")
		if code != exitOK || !strings.HasPrefix(stderr, "usage: pharos bench throughput --target") || !strings.Contains(stderr, "-workload") {
			t.Errorf("exit %d, stderr %q; want %d, the usage line and the flags", code, firstLines(stderr, 3), exitOK)
		}
	})
}

func TestBenchReport(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		key  string // the one line must name it
	}{
		{"no dir", nil, "--dir"},
		{"empty dir", []string{"--dir="}, "--dir"},
		{"a positional argument", []string{"--dir", "x", "extra"}, `"extra"`},
		{"unknown flag", []string{"--bogus"}, "-bogus"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantUsageLine(t, tc.key, append([]string{"bench", "report"}, tc.args...)...)
		})
	}
	t.Run("help", func(t *testing.T) {
		code, stderr := runCmd(t, "bench", "report", "-h")
		if code != exitOK || !strings.HasPrefix(stderr, "usage: pharos bench report --dir DIR") || !strings.Contains(stderr, "-dir") {
			t.Errorf("exit %d, stderr %q; want %d, the usage line and the flags", code, firstLines(stderr, 3), exitOK)
		}
	})
	t.Run("a missing directory", func(t *testing.T) {
		code, stderr := runCmd(t, "bench", "report", "--dir", filepath.Join(t.TempDir(), "nonexistent"))
		if code != exitFailure || !strings.Contains(stderr, "nonexistent") {
			t.Errorf("exit %d, stderr %q; want %d naming the directory", code, stderr, exitFailure)
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
