package watchdog

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// newSoftware returns a Software on the built binary; at cleanup no
// watchdog process is left running.
func newSoftware(t *testing.T, dataDir string) *Software {
	t.Helper()
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	log, _ := testLogger(t)
	s := NewSoftware(pharosBin, dataDir, log)
	t.Cleanup(func() {
		if s.c != nil {
			s.c.stdin.Close()
			_ = s.c.kill()
		}
	})
	return s
}

// armedOverVictim arms a Software with timeout on a data directory whose
// postmaster.pid names a victim.
func armedOverVictim(t *testing.T, timeout time.Duration) (*Software, *victim) {
	t.Helper()
	dir := newDataDir(t)
	v := startVictim(t, dir, true)
	s := newSoftware(t, dir)
	if err := s.Arm(timeout); err != nil {
		t.Fatal(err)
	}
	return s, v
}

// abandon closes the command pipe without the magic close, as the death of
// the agent does; the process keeps counting and fires. It returns a
// channel closed once the process has exited, and its Wait error.
func (s *Software) abandon() (done <-chan struct{}, status func() error) {
	c := s.c
	c.stdin.Close()
	return c.done, func() error { return c.err }
}

// waitChild waits for the armed process to exit and returns its status.
func waitChild(t *testing.T, s *Software, d time.Duration) error {
	t.Helper()
	c := s.c
	if c == nil {
		t.Fatal("no watchdog process")
	}
	select {
	case <-c.done:
		return c.err
	case <-time.After(d):
		t.Fatalf("watchdog pid %d still running after %s", c.cmd.Process.Pid, d)
		return nil
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err == nil {
		return 0
	}
	return -1
}

func logFile(t *testing.T, s *Software) string {
	t.Helper()
	b, err := os.ReadFile(s.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestSoftwareFiresWhenAgentStopsFeeding is SIGSTOP of the agent: the
// feeds stop, the pipe stays open, the postmaster dies.
func TestSoftwareFiresWhenAgentStopsFeeding(t *testing.T) {
	const timeout = 500 * time.Millisecond
	s, v := armedOverVictim(t, timeout)
	if !s.Armed() || s.Timeout() != timeout {
		t.Fatalf("after Arm: Armed %v, Timeout %s", s.Armed(), s.Timeout())
	}
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if err := s.Feed(); err != nil {
			t.Fatalf("Feed: %v", err)
		}
		if !v.alive() {
			t.Fatal("victim killed while fed")
		}
	}
	if err := s.Feed(); err != nil {
		t.Fatal(err)
	}
	lastFeed := time.Now()
	v.waitKilled(t, timeout+slack)
	if took := time.Since(lastFeed); took < timeout-50*time.Millisecond {
		t.Errorf("fired %s after the last feed, before the %s timeout", took, timeout)
	}
	if code := exitCode(waitChild(t, s, 2*time.Second)); code != 1 {
		t.Errorf("watchdog exit code %d, want 1", code)
	}
	if s.Armed() {
		t.Error("Armed after the watchdog fired")
	}
	if err := s.Feed(); err == nil || !strings.Contains(err.Error(), "process exited") {
		t.Errorf("Feed after firing: %v", err)
	}
	if logs := logFile(t, s); !strings.Contains(logs, "watchdog fired: postmaster") {
		t.Errorf("%s lacks the firing:\n%s", s.LogPath(), logs)
	}
	if err := s.Disarm(); err != nil {
		t.Errorf("Disarm after firing: %v", err)
	}
}

// TestSoftwareFiresWhenAgentDies: the agent's end of the pipe closes
// without the magic close (what its death does); the watchdog fires.
func TestSoftwareFiresWhenAgentDies(t *testing.T) {
	const timeout = 500 * time.Millisecond
	s, v := armedOverVictim(t, timeout)
	if err := s.Feed(); err != nil {
		t.Fatal(err)
	}
	closed := time.Now()
	done, status := s.abandon()
	v.waitKilled(t, timeout+slack)
	if took := time.Since(closed); took < timeout-50*time.Millisecond {
		t.Errorf("fired %s after the agent's death, before the %s timeout", took, timeout)
	}
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("watchdog still running after firing")
	}
	if code := exitCode(status()); code != 1 {
		t.Errorf("watchdog exit code %d, want 1", code)
	}
	if logs := logFile(t, s); !strings.Contains(logs, "without magic close") || !strings.Contains(logs, "watchdog fired: postmaster") {
		t.Errorf("%s:\n%s", s.LogPath(), logs)
	}
}

func TestSoftwareDisarm(t *testing.T) {
	const timeout = 500 * time.Millisecond
	s, v := armedOverVictim(t, timeout)
	c := s.c
	if err := s.Feed(); err != nil {
		t.Fatal(err)
	}
	if err := s.Disarm(); err != nil {
		t.Fatalf("Disarm: %v", err)
	}
	select {
	case <-c.done:
	default:
		t.Fatal("Disarm returned before the process exited")
	}
	if c.err != nil {
		t.Errorf("watchdog exit: %v; want 0", c.err)
	}
	if s.Armed() || s.Timeout() != 0 {
		t.Errorf("after Disarm: Armed %v, Timeout %s", s.Armed(), s.Timeout())
	}
	time.Sleep(timeout + 200*time.Millisecond)
	if !v.alive() {
		t.Fatal("victim killed after Disarm")
	}
	if err := s.Disarm(); err != nil {
		t.Errorf("second Disarm: %v", err)
	}
	if err := s.Feed(); !errors.Is(err, ErrNotArmed) {
		t.Errorf("Feed after Disarm: %v; want ErrNotArmed", err)
	}
}

// TestSoftwareReArm: a second Arm changes the timeout of the running
// process rather than starting another one.
func TestSoftwareReArm(t *testing.T) {
	s, v := armedOverVictim(t, 300*time.Millisecond)
	pid := s.c.cmd.Process.Pid
	if err := s.Arm(1500 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if s.c.cmd.Process.Pid != pid || s.Timeout() != 1500*time.Millisecond {
		t.Fatalf("re-Arm: pid %d (was %d), Timeout %s", s.c.cmd.Process.Pid, pid, s.Timeout())
	}
	time.Sleep(800 * time.Millisecond)
	if !v.alive() || !s.Armed() {
		t.Fatal("fired on the old timeout")
	}
	if err := s.Disarm(); err != nil {
		t.Fatal(err)
	}
	if !v.alive() {
		t.Fatal("victim killed")
	}
}

// TestSoftwareIgnoresSIGTERM: only the magic close disarms.
func TestSoftwareIgnoresSIGTERM(t *testing.T) {
	dir := newDataDir(t)
	s := newSoftware(t, dir)
	if err := s.Arm(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP} {
		if err := s.c.cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	if !s.Armed() {
		t.Fatalf("watchdog exited on SIGTERM: %v", s.c.err)
	}
	if err := s.Feed(); err != nil {
		t.Fatal(err)
	}
	if err := s.Disarm(); err != nil {
		t.Fatal(err)
	}
	if logs := logFile(t, s); !strings.Contains(logs, "watchdog ignores the signal while armed") {
		t.Errorf("%s does not log the ignored signal:\n%s", s.LogPath(), logs)
	}
}

// TestSoftwareHungChild: a watchdog process that stops reading its input
// (SIGSTOP) makes Feed fail within writeTimeout once the pipe is full,
// rather than hang the agent; Disarm then kills it.
func TestSoftwareHungChild(t *testing.T) {
	s := newSoftware(t, newDataDir(t))
	if err := s.Arm(time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.c.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var err error
	for i := 0; i < 1<<20 && err == nil; i++ { // fills the pipe buffer
		err = s.Feed()
	}
	start := time.Now()
	err = s.Feed()
	if took := time.Since(start); !errors.Is(err, os.ErrDeadlineExceeded) || took > writeTimeout+slack {
		t.Fatalf("Feed to a stopped process: %v after %s; want a write deadline error within %s", err, took, writeTimeout)
	}
	if !s.Armed() {
		t.Fatal("a stopped watchdog process counts as not armed")
	}
	if err := s.Disarm(); err == nil || !strings.Contains(err.Error(), "killed it") {
		t.Errorf("Disarm of a stopped process: %v; want it killed", err)
	}
	if s.Armed() {
		t.Error("Armed after Disarm")
	}
}

func TestSoftwareArmFailures(t *testing.T) {
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	base := t.TempDir()
	for _, tc := range []struct {
		name    string
		binary  string
		dataDir string
		timeout time.Duration
		want    string
	}{
		{"missing data dir", pharosBin, filepath.Join(base, "nope"), time.Second, "data-dir: stat " + filepath.Join(base, "nope") + ": no such file or directory"},
		{"not a pharos binary", "/bin/true", base, time.Second, "exit status 0 before arming"},
		{"missing binary", filepath.Join(base, "pharos"), base, time.Second, "start " + filepath.Join(base, "pharos")},
		{"zero timeout", pharosBin, base, 0, "timeout 0s must be positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log, _ := testLogger(t)
			s := NewSoftware(tc.binary, tc.dataDir, log)
			err := s.Arm(tc.timeout)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Arm: %v; want %q", err, tc.want)
			}
			if s.Armed() || s.c != nil {
				t.Error("armed after a failed Arm")
			}
		})
	}
}
