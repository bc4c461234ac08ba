package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWatchdogRejectsBadFlags: one line naming the flag, exit 2, before
// counting starts. (Arming, feeding and firing are tested in
// internal/watchdog against this binary.)
func TestWatchdogRejectsBadFlags(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no data dir", []string{"--timeout", "3s"}, "data-dir: required"},
		{"missing data dir", []string{"--data-dir", filepath.Join(dir, "nope"), "--timeout", "3s"}, "data-dir: stat"},
		{"data dir is a file", []string{"--data-dir", file, "--timeout", "3s"}, "data-dir: " + file + " is not a directory"},
		{"no timeout", []string{"--data-dir", dir}, "timeout: 0s must be positive"},
		{"negative timeout", []string{"--data-dir", dir, "--timeout", "-1s"}, "timeout: -1s must be positive"},
		{"bad timeout", []string{"--data-dir", dir, "--timeout", "soon"}, `invalid value "soon" for flag -timeout`},
		{"bad log level", []string{"--data-dir", dir, "--timeout", "3s", "--log-level", "loud"}, `log_level: "loud"`},
		{"ready fd not a pipe", []string{"--data-dir", dir, "--timeout", "3s", "--ready-fd", "1000"}, "ready-fd: 1000 is not an open pipe"},
		{"unknown flag", []string{"--data-dir", dir, "--timeout", "3s", "--ttl", "3s"}, "flag provided but not defined: -ttl"},
		{"unexpected argument", []string{"--data-dir", dir, "--timeout", "3s", "extra"}, `unexpected argument "extra"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stderr := runCmd(t, append([]string{"watchdog"}, tc.args...)...)
			if code != exitUsage || !strings.Contains(stderr, tc.want) || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Errorf("exit %d, stderr %q; want exit 2 and one line with %q", code, stderr, tc.want)
			}
		})
	}
}

func TestWatchdogHelp(t *testing.T) {
	code, stderr := runCmd(t, "watchdog", "-h")
	if code != exitOK || !strings.Contains(stderr, "-data-dir") || !strings.Contains(stderr, "magic close") {
		t.Errorf("exit %d, stderr %q", code, firstLines(stderr, 5))
	}
	code, stderr = runCmd(t, "help")
	if code != exitOK || !strings.Contains(stderr, "watchdog") {
		t.Errorf("help: exit %d, stderr %q", code, stderr)
	}
}
