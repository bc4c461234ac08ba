package core

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// TestClassifyRewind feeds the classifier what pg_rewind 15 and libpq
// print for each cause (quoted from real runs and from pg_rewind's
// messages), and checks which failures may lead to a wipe.
func TestClassifyRewind(t *testing.T) {
	exit1 := errors.New("pg_rewind: exit status 1")
	cases := []struct {
		name   string
		lines  []string
		err    error
		copied bool
		killed bool
		want   RewindFailure
	}{
		{
			name: "zombie postmaster in the lock file",
			lines: []string{
				`pg_rewind: executing "/usr/lib/postgresql/15/bin/postgres" for target server to complete crash recovery`,
				`2026-12-02 08:01:02.345 UTC [4242] FATAL:  lock file "postmaster.pid" already exists`,
				`2026-12-02 08:01:02.345 UTC [4242] HINT:  Is another postmaster (PID 4100) running in data directory "/d/n1"?`,
				`pg_rewind: error: postgres single-user mode in target cluster failed`,
			},
			err: exit1, want: RewindServerRunning,
		},
		{
			name:  "hint alone, capitalised",
			lines: []string{`HINT:  Is another postmaster (PID 7) running in data directory "/d"?`},
			err:   exit1, want: RewindServerRunning,
		},
		{
			name:  "awaitDead gave up",
			lines: nil,
			err:   errors.New("server still running: postmaster 7 still alive after 10s"),
			want:  RewindUnknown, // the driver maps its own server-alive error itself; the text alone says nothing known
		},
		{
			name: "source refuses connections",
			lines: []string{
				`pg_rewind: error: connection to server at "127.0.0.1", port 6001 failed: Connection refused`,
				`	Is the server running on that host and accepting TCP/IP connections?`,
			},
			err: exit1, want: RewindSourceUnavailable,
		},
		{
			name: "source checkpoint failed before pg_rewind ran",
			err:  fmt.Errorf("%w: checkpoint on n2 before rewind: dial: refused", ErrSourceUnavailable),
			want: RewindSourceUnavailable,
		},
		{
			name:  "source starting up",
			lines: []string{`pg_rewind: error: connection to server at "127.0.0.1", port 6001 failed: FATAL:  the database system is starting up`},
			err:   exit1, want: RewindSourceBusy,
		},
		{
			name:  "source out of slots",
			lines: []string{`pg_rewind: error: connection to server at "127.0.0.1", port 6001 failed: FATAL:  sorry, too many clients already`},
			err:   exit1, want: RewindSourceBusy,
		},
		{
			name:  "no common ancestor",
			lines: []string{`pg_rewind: error: could not find common ancestor of the source and target cluster's timelines`},
			err:   exit1, want: RewindNoCommonAncestor,
		},
		{
			name: "WAL recycled on the target",
			lines: []string{
				`pg_rewind: servers diverged at WAL location 0/3000148 on timeline 1`,
				`pg_rewind: error: could not open file "/d/n1/pg_wal/000000010000000000000002": No such file or directory`,
				`pg_rewind: error: could not find previous WAL record at 0/2000060`,
			},
			err: exit1, want: RewindWALMissing,
		},
		{
			name:  "no checksums",
			lines: []string{`pg_rewind: error: target server needs to use either data checksums or "wal_log_hints = on"`},
			err:   exit1, want: RewindIncompatible,
		},
		{
			name:  "another system",
			lines: []string{`pg_rewind: error: source and target clusters are from different systems`},
			err:   exit1, want: RewindIncompatible,
		},
		{
			name:  "corrupt control file",
			lines: []string{`pg_rewind: error: unexpected control file CRC`},
			err:   exit1, want: RewindTargetCorrupt,
		},
		{
			name: "source lost in the middle of the copy",
			lines: []string{
				`pg_rewind: need to copy 51 MB (total source directory size is 70 MB)`,
				`pg_rewind: error: could not fetch remote file "base/5/16384": server closed the connection unexpectedly`,
			},
			err: exit1, copied: true, want: RewindTargetModified,
		},
		{
			name:   "killed while copying",
			err:    errors.New("pg_rewind: signal: killed (killed: no output for 10m0s)"),
			copied: true, killed: true, want: RewindTargetModified,
		},
		{
			name:   "killed before the copy",
			err:    errors.New("pg_rewind: signal: killed"),
			killed: true, want: RewindInterrupted,
		},
		{
			name:  "single-user recovery failed otherwise",
			lines: []string{`PANIC:  invalid magic number 0000 in log segment 000000010000000000000003, offset 0`, `pg_rewind: error: postgres single-user mode in target cluster failed`},
			err:   exit1, want: RewindUnknown,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := ClassifyRewind(c.lines, c.err, c.copied, c.killed); got != c.want {
				t.Fatalf("classified %q, want %q", got, c.want)
			}
		})
	}
}

// TestRewindFailurePermanence pins which classes may lead to a wipe: the
// reclone reasons, and nothing else.
func TestRewindFailurePermanence(t *testing.T) {
	retry := []RewindFailure{RewindServerRunning, RewindSourceUnavailable, RewindSourceBusy, RewindInterrupted, RewindUnknown}
	for _, f := range retry {
		if f.Permanent() {
			t.Errorf("%s counts as permanent: a retry may fix it, so it must never wipe", f)
		}
		if slices.Contains(RecloneReasons, string(f)) {
			t.Errorf("%s is a reclone reason", f)
		}
	}
	for _, r := range RecloneReasons {
		if f := RewindFailure(r); r != ReinitializeRequested && !f.Permanent() {
			t.Errorf("reclone reason %s is not a permanent failure", r)
		}
	}
	for _, p := range rewindPatterns {
		if !slices.Contains(RecloneReasons, string(p.class)) && !slices.Contains(retry, p.class) {
			t.Errorf("pattern %q maps to %s, neither a reclone reason nor retried", p.contains, p.class)
		}
	}
}

// FuzzClassifyRewind: any output classifies into the closed set, a run
// past the point of no return is always target_modified, and nothing that
// could be transient is ever called permanent because of text alone
// unless it matches a permanent pattern.
func FuzzClassifyRewind(f *testing.F) {
	f.Add("pg_rewind: error: could not find common ancestor of the source and target cluster's timelines", false, false)
	f.Add(`FATAL:  lock file "postmaster.pid" already exists`, false, false)
	f.Add("pg_rewind: need to copy 1 MB", true, true)
	f.Add("", false, true)
	f.Fuzz(func(t *testing.T, out string, copied, killed bool) {
		got := ClassifyRewind(strings.Split(out, "\n"), errors.New("exit status 1"), copied, killed)
		known := append(slices.Clone(RecloneReasons), string(RewindServerRunning), string(RewindSourceUnavailable),
			string(RewindSourceBusy), string(RewindInterrupted), string(RewindUnknown))
		if !slices.Contains(known, string(got)) {
			t.Fatalf("class %q is outside the closed set", got)
		}
		if copied && got != RewindTargetModified {
			t.Fatalf("a run past its point of no return classified %q", got)
		}
		if got == RewindUnclassified {
			t.Fatal("text alone never makes a failure unclassified: only repetition does")
		}
		if !copied && got.Permanent() {
			lower := strings.ToLower(out)
			matched := false
			for _, p := range rewindPatterns {
				if p.class == got && strings.Contains(lower, strings.ToLower(p.contains)) {
					matched = true
				}
			}
			if !matched {
				t.Fatalf("permanent %q without a matching pattern", got)
			}
		}
	})
}
