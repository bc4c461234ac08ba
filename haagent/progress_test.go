package haagent

import (
	"bytes"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pharos-ha/pharos/haagent/core"
)

// Lines as PostgreSQL 15's pg_basebackup and pg_rewind print them with
// stderr on a pipe (LC_ALL=C), taken from real runs: a clone of a primary
// with a second tablespace, with and without --verbose, a failed one, and
// a rewind.
func TestParseCopyProgress(t *testing.T) {
	tests := []struct {
		name string
		line string
		want copyProgress
		ok   bool
	}{
		{name: "one tablespace", line: "20490/71937 kB (28%), 0/1 tablespace",
			want: copyProgress{DoneKB: 20490, TotalKB: 71937, Percent: 28, Tablespace: 0, Tablespaces: 1}, ok: true},
		{name: "done column padded to the total's width", line: "   74/71937 kB (0%), 0/2 tablespaces",
			want: copyProgress{DoneKB: 74, TotalKB: 71937, Percent: 0, Tablespaces: 2}, ok: true},
		{name: "verbose, file of another tablespace cut at the front", line: "43530/71937 kB (60%), 0/2 tablespaces (...test/ts2/PG_15_202209061/5/16385)",
			want: copyProgress{DoneKB: 43530, TotalKB: 71937, Percent: 60, Tablespaces: 2}, ok: true},
		{name: "verbose, short file name padded", line: "69224/71937 kB (96%), 1/2 tablespaces (/tmp/pbtest/r/base/1/2674          )",
			want: copyProgress{DoneKB: 69224, TotalKB: 71937, Percent: 96, Tablespace: 1, Tablespaces: 2}, ok: true},
		{name: "verbose, last report blanks the file name", line: "71949/71949 kB (100%), 2/2 tablespaces" + strings.Repeat(" ", 41),
			want: copyProgress{DoneKB: 71949, TotalKB: 71949, Percent: 100, Tablespace: 2, Tablespaces: 2}, ok: true},
		{name: "pg_rewind", line: "     0/102045 kB (0%) copied",
			want: copyProgress{DoneKB: 0, TotalKB: 102045, Percent: 0}, ok: true},
		{name: "pg_rewind done", line: "102045/102045 kB (100%) copied",
			want: copyProgress{DoneKB: 102045, TotalKB: 102045, Percent: 100}, ok: true},
		{name: "largest sizes", line: "9223372036854775807/9223372036854775807 kB (100%), 1/1 tablespace",
			want: copyProgress{DoneKB: 9223372036854775807, TotalKB: 9223372036854775807, Percent: 100, Tablespace: 1, Tablespaces: 1}, ok: true},

		{name: "verbose step", line: "pg_basebackup: checkpoint completed"},
		{name: "checkpoint wait without verbose", line: "waiting for checkpoint"},
		{name: "error", line: `pg_basebackup: error: connection to server at "127.0.0.1", port 1 failed: Connection refused`},
		{name: "libpq hint", line: "\tIs the server running on that host and accepting TCP/IP connections?"},
		{name: "WAL start point", line: "pg_basebackup: write-ahead log start point: 0/6000028 on timeline 1"},
		{name: "rewind step", line: "pg_rewind: servers diverged at WAL location 0/9000000 on timeline 1"},
		{name: "rewind size", line: "pg_rewind: need to copy 99 MB (total source directory size is 150 MB)"},
		{name: "no percent", line: "12/34 kB"},
		{name: "no tablespace count", line: "12/34 kB (35%)"},
		{name: "tablespaces without numbers", line: "12/34 kB (35%), tablespaces"},
		{name: "word glued to tablespaces", line: "12/34 kB (35%), 0/1 tablespacesX"},
		{name: "text after copied", line: "12/34 kB (35%) copied twice"},
		{name: "not a number", line: "abc/71937 kB (0%), 0/1 tablespace"},
		{name: "other unit", line: "20/71 MB (28%), 0/1 tablespace"},
		{name: "overflow", line: "99999999999999999999/99999999999999999999 kB (1%), 0/1 tablespace"},
		{name: "done above total", line: "200/100 kB (100%), 1/1 tablespace"},
		{name: "percent above 100", line: "100/100 kB (101%), 1/1 tablespace"},
		{name: "negative", line: "-1/100 kB (0%), 0/1 tablespace"},
		{name: "half a report", line: "20490/719"},
		{name: "blank", line: "   "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parseCopyProgress(tt.line)
			if ok != tt.ok || got != tt.want {
				t.Errorf("parseCopyProgress(%q) = %+v, %v; want %+v, %v", tt.line, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestLineWriter(t *testing.T) {
	tests := []struct {
		name   string
		chunks []string
		want   []string
	}{
		{name: "newlines", chunks: []string{"a\nb\n"}, want: []string{"a", "b"}},
		{name: "terminal form: carriage returns", chunks: []string{"1/4 kB (25%), 0/1 tablespace\r2/4 kB (50%), 0/1 tablespace\r4/4 kB (100%), 1/1 tablespace\n"},
			want: []string{"1/4 kB (25%), 0/1 tablespace", "2/4 kB (50%), 0/1 tablespace", "4/4 kB (100%), 1/1 tablespace"}},
		{name: "split across writes", chunks: []string{"pg_base", "backup: check", "point completed\n12/3", "4 kB (35%) copied\n"},
			want: []string{"pg_basebackup: checkpoint completed", "12/34 kB (35%) copied"}},
		{name: "blank lines dropped", chunks: []string{"\n\r\n  \na\r\n"}, want: []string{"a"}},
		{name: "unterminated last line flushed", chunks: []string{"a\nlast"}, want: []string{"a", "last"}},
		{name: "long line cut", chunks: []string{strings.Repeat("x", maxLine+3) + "\n"}, want: []string{strings.Repeat("x", maxLine), "xxx"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			w := &lineWriter{fn: func(l string) { got = append(got, l) }}
			for _, c := range tt.chunks {
				if n, err := w.Write([]byte(c)); n != len(c) || err != nil {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			w.flush()
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("lines %q, want %q", got, tt.want)
			}
		})
	}
}

func TestTailLines(t *testing.T) {
	tl := tailLines{max: 2}
	for _, l := range []string{"a", "b", "c"} {
		tl.add(l)
	}
	if got := tl.String(); got != "b | c" {
		t.Errorf("tail = %q, want the last two", got)
	}
}

func TestThrottle(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	type event struct {
		at      time.Duration
		percent int
		want    bool
	}
	tests := []struct {
		name   string
		th     throttle
		reset  bool // reset at t0 before the events
		events []event
	}{
		{
			name: "every 5s or 10%",
			th:   throttle{every: 5 * time.Second, step: 10},
			events: []event{
				{0, 0, true}, // the first
				{time.Second, 3, false},
				{2 * time.Second, 10, true}, // a new step
				{3 * time.Second, 15, false},
				{7*time.Second - 1, 16, false},
				{7 * time.Second, 16, true}, // 5s after the last
				{7500 * time.Millisecond, 19, false},
				{8 * time.Second, 35, true}, // two steps at once count once
				{8100 * time.Millisecond, 39, false},
				{8200 * time.Millisecond, 100, true},
				{8300 * time.Millisecond, 100, false},
			},
		},
		{
			name: "total grows at the end: percent falls back",
			th:   throttle{every: 5 * time.Second, step: 10},
			events: []event{
				{0, 95, true},
				{time.Second, 90, false},
				{2 * time.Second, 99, false},
				{3 * time.Second, 100, true},
			},
		},
		{
			name:  "time only, after a reset",
			th:    throttle{every: 15 * time.Second},
			reset: true,
			events: []event{
				{time.Second, 0, false},
				{15 * time.Second, 100, true},
				{20 * time.Second, 0, false},
				{30 * time.Second, 0, true},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			th := tt.th
			if tt.reset {
				th.reset(t0)
			}
			for _, e := range tt.events {
				if got := th.due(t0.Add(e.at), e.percent); got != e.want {
					t.Errorf("due(+%v, %d%%) = %v, want %v", e.at, e.percent, got, e.want)
				}
			}
		})
	}
}

func TestCopyMeter(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var m copyMeter
	if _, _, ok := m.observe(t0, copyProgress{DoneKB: 74, TotalKB: 71937}); ok {
		t.Error("a rate from one report")
	}
	if _, _, ok := m.observe(t0.Add(100*time.Millisecond), copyProgress{DoneKB: 1000, TotalKB: 71937}); ok {
		t.Error("a rate from 100 ms")
	}
	kbps, eta, ok := m.observe(t0.Add(2*time.Second), copyProgress{DoneKB: 20554, TotalKB: 71937})
	if !ok || kbps != 10240 || eta != 5*time.Second {
		t.Errorf("observe = %v kB/s, eta %v, %v; want 10240 kB/s, 5s", kbps, eta, ok)
	}
	if got := formatRate(kbps); got != "10.0 MB/s" {
		t.Errorf("formatRate(%v) = %q", kbps, got)
	}
	if got := formatRate(512); got != "512 kB/s" {
		t.Errorf("formatRate(512) = %q", got)
	}
}

// TestCopyReporter feeds a whole verbose pg_basebackup run, one report per
// second as it prints them, and checks what is logged and what the member
// record would show.
func TestCopyReporter(t *testing.T) {
	run := []string{
		"pg_basebackup: initiating base backup, waiting for checkpoint to complete",
		"pg_basebackup: checkpoint completed",
		"pg_basebackup: write-ahead log start point: 0/6000028 on timeline 1",
		"    74/102400 kB (0%), 0/1 tablespace (/data/r/backup_label                )",
		" 10314/102400 kB (10%), 0/1 tablespace (/data/r/base/1/1255               )",
		" 15434/102400 kB (15%), 0/1 tablespace (/data/r/base/1/2608               )",
		" 20554/102400 kB (20%), 0/1 tablespace (/data/r/base/5/16385              )",
		" 25674/102400 kB (25%), 0/1 tablespace (/data/r/base/5/16385.1            )",
		"102400/102400 kB (100%), 1/1 tablespace" + strings.Repeat(" ", 40),
		"pg_basebackup: write-ahead log end point: 0/6000100",
		"pg_basebackup: waiting for background process to finish streaming ...",
		"pg_basebackup: syncing data to disk ...",
		"pg_basebackup: base backup completed",
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	now := t0
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
	live := &liveRecord{}
	r := newCopyReporter(log, func() time.Time { return now }, "pg_basebackup", "clone progress", "creating replica", live)
	r.phases = []phase{
		{"waiting for checkpoint", "waiting for a checkpoint on n1"},
		{"syncing data to disk", "syncing to disk"},
	}
	var states, kept []string
	for _, l := range run {
		if !r.line(l) {
			kept = append(kept, l)
		}
		states = append(states, live.state)
		now = now.Add(time.Second)
	}
	wantStates := []string{
		"creating replica: waiting for a checkpoint on n1",
		"creating replica: waiting for a checkpoint on n1",
		"creating replica: waiting for a checkpoint on n1",
		"creating replica 0%", "creating replica 10%", "creating replica 15%", "creating replica 20%", "creating replica 25%",
		"creating replica 100%", "creating replica 100%", "creating replica 100%",
		"creating replica: syncing to disk", "creating replica: syncing to disk",
	}
	if !reflect.DeepEqual(states, wantStates) {
		t.Errorf("states:\n%s\nwant:\n%s", strings.Join(states, "\n"), strings.Join(wantStates, "\n"))
	}
	if len(kept) != 7 {
		t.Errorf("%d lines kept for an error, want the 7 that are not progress reports: %q", len(kept), kept)
	}
	wantLogs := strings.Join([]string{
		`level=INFO msg=pg_basebackup output="initiating base backup, waiting for checkpoint to complete"`,
		`level=INFO msg=pg_basebackup output="checkpoint completed"`,
		`level=INFO msg=pg_basebackup output="write-ahead log start point: 0/6000028 on timeline 1"`,
		`level=INFO msg="clone progress" done_kb=74 total_kb=102400 percent=0`,
		// 10%: a new step; the first rate.
		`level=INFO msg="clone progress" done_kb=10314 total_kb=102400 percent=10 rate="10.0 MB/s" eta=9s`,
		// 15% and 25%: neither a new step nor 5 s after the last.
		`level=INFO msg="clone progress" done_kb=20554 total_kb=102400 percent=20 rate="6.7 MB/s" eta=12s`,
		`level=INFO msg="clone progress" done_kb=102400 total_kb=102400 percent=100 rate="20.0 MB/s" eta=0s`,
		`level=INFO msg=pg_basebackup output="write-ahead log end point: 0/6000100"`,
		`level=INFO msg=pg_basebackup output="waiting for background process to finish streaming ..."`,
		`level=INFO msg=pg_basebackup output="syncing data to disk ..."`,
		`level=INFO msg=pg_basebackup output="base backup completed"`,
		"",
	}, "\n")
	if got := logs.String(); got != wantLogs {
		t.Errorf("logs:\n%s\nwant:\n%s", got, wantLogs)
	}
}

func TestNoDataState(t *testing.T) {
	tests := []struct {
		name string
		p    core.Plan
		want string
	}{
		{name: "clone", p: core.Plan{Reason: "new member", Actions: []core.Action{{Kind: core.ActClone, Target: "n1"}, {Kind: core.ActStartReplica, Target: "n1"}}}, want: "creating replica from n1"},
		{name: "waiting for the leader", p: core.Plan{Reason: "leader n1 is not a running primary yet"}, want: "waiting: leader n1 is not a running primary yet"},
		{name: "waiting for the bootstrap", p: core.Plan{Reason: "bootstrap in progress elsewhere"}, want: "waiting: bootstrap in progress elsewhere"},
		// Every member plans a bootstrap; only the one that wins the
		// initialize key says it bootstraps.
		{name: "bootstrap not yet won", p: core.Plan{Reason: "cluster not initialized", Actions: []core.Action{{Kind: core.ActBootstrap}}}, want: "no data directory yet"},
		{name: "no plan", p: core.Plan{}, want: "no data directory yet"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := noDataState(tt.p); got != tt.want {
				t.Errorf("noDataState(%v) = %q, want %q", tt.p, got, tt.want)
			}
		})
	}
}
