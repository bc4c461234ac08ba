package watchdog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// slack bounds how late a firing may be on a loaded (race-built) machine.
const slack = 500 * time.Millisecond

// runInProcess runs RunSoftware on a pipe; the test writes to the
// returned writer. The writer is closed at cleanup so the reader goroutine
// ends.
type inProcess struct {
	w      *io.PipeWriter
	done   chan struct{}
	err    error // after done
	logs   *logBuffer
	cancel context.CancelFunc
}

func runInProcess(t *testing.T, dataDir string, timeout time.Duration) *inProcess {
	t.Helper()
	log, logs := testLogger(t)
	r, w := io.Pipe()
	ctx, cancel := context.WithCancel(t.Context())
	p := &inProcess{w: w, done: make(chan struct{}), logs: logs, cancel: cancel}
	go func() {
		p.err = RunSoftware(ctx, r, dataDir, timeout, log)
		close(p.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-p.done
		w.Close()
	})
	return p
}

func (p *inProcess) send(t *testing.T, s string) {
	t.Helper()
	if _, err := io.WriteString(p.w, s); err != nil {
		t.Fatalf("write %q: %v", s, err)
	}
}

func (p *inProcess) returned() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait returns RunSoftware's error and how long it took to return, or
// fails after d.
func (p *inProcess) wait(t *testing.T, d time.Duration) (error, time.Duration) {
	t.Helper()
	start := time.Now()
	select {
	case <-p.done:
		return p.err, time.Since(start)
	case <-time.After(d):
		t.Fatalf("RunSoftware did not return within %s", d)
		return nil, 0
	}
}

// feedFor feeds every period for d and checks nothing fires meanwhile.
func feedFor(t *testing.T, p *inProcess, v *victim, d, period time.Duration) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(period) {
		p.send(t, ".")
		if p.returned() || !v.alive() {
			t.Fatalf("fired while fed: returned %v (%v), victim alive %v", p.returned(), p.err, v.alive())
		}
	}
}

// assertFiresAfter checks that RunSoftware fires timeout (not sooner) after
// the last command, kills the victim, and says so.
func assertFiresAfter(t *testing.T, p *inProcess, v *victim, timeout time.Duration) {
	t.Helper()
	err, took := p.wait(t, timeout+slack)
	if took < timeout-50*time.Millisecond {
		t.Errorf("fired %s after the last command, before the %s timeout", took, timeout)
	}
	v.waitKilled(t, time.Second)
	assertFired(t, err, p.logs.String(), v.pid)
}

// assertFired checks the error and the ERROR log line.
func assertFired(t *testing.T, err error, logs string, pid int) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), "watchdog fired") {
		t.Errorf("RunSoftware: %v; want a \"watchdog fired\" error", err)
	}
	want := fmt.Sprintf(`"level":"ERROR","msg":"watchdog fired: postmaster %d killed"`, pid)
	if !strings.Contains(logs, want) {
		t.Errorf("log lacks %s:\n%s", want, logs)
	}
	i := strings.Index(logs, `"fired_at":"`)
	if i < 0 {
		t.Fatalf("log lacks fired_at:\n%s", logs)
	}
	stamp, _, _ := strings.Cut(logs[i+len(`"fired_at":"`):], `"`)
	if _, err := time.Parse(time.RFC3339Nano, stamp); err != nil {
		t.Errorf("fired_at %q: %v", stamp, err)
	}
}

func TestRunSoftwareFiresWhenFeedingStops(t *testing.T) {
	const timeout = 300 * time.Millisecond
	dir := newDataDir(t)
	v := startVictim(t, dir, true)
	p := runInProcess(t, dir, timeout)
	feedFor(t, p, v, time.Second, 50*time.Millisecond)
	p.send(t, ".") // the last feed
	assertFiresAfter(t, p, v, timeout)
}

func TestRunSoftwareMagicClose(t *testing.T) {
	dir := newDataDir(t)
	v := startVictim(t, dir, true)
	p := runInProcess(t, dir, 300*time.Millisecond)
	p.send(t, "..V")
	p.w.Close()
	if err, _ := p.wait(t, 200*time.Millisecond); err != nil {
		t.Fatalf("RunSoftware after the magic close: %v", err)
	}
	time.Sleep(400 * time.Millisecond)
	if !v.alive() {
		t.Fatal("victim killed after a magic close")
	}
}

// TestRunSoftwareEOFWithoutMagicCloseFires is the agent's death: its end
// of the pipe closes without 'V', and the countdown goes on.
func TestRunSoftwareEOFWithoutMagicCloseFires(t *testing.T) {
	for _, tc := range []struct{ name, last string }{
		{"plain EOF", "."},
		{"feed after V cancels the magic close", "V."},
		{"unknown byte after V cancels it", "Vx"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const timeout = 300 * time.Millisecond
			dir := newDataDir(t)
			v := startVictim(t, dir, true)
			p := runInProcess(t, dir, timeout)
			p.send(t, tc.last)
			p.w.Close()
			assertFiresAfter(t, p, v, timeout)
		})
	}
}

func TestRunSoftwareNewTimeout(t *testing.T) {
	dir := newDataDir(t)
	v := startVictim(t, dir, true)
	p := runInProcess(t, dir, 200*time.Millisecond)
	p.send(t, "T 1200ms\n")
	start := time.Now()
	time.Sleep(600 * time.Millisecond)
	if p.returned() || !v.alive() {
		t.Fatalf("fired within 600ms of a new 1.2s timeout: %v", p.err)
	}
	err, _ := p.wait(t, 1200*time.Millisecond+slack)
	if took := time.Since(start); took < 1150*time.Millisecond {
		t.Errorf("fired %s after the new 1.2s timeout", took)
	}
	v.waitKilled(t, time.Second)
	assertFired(t, err, p.logs.String(), v.pid)
	if !strings.Contains(p.logs.String(), "watchdog timeout changed") {
		t.Error("the new timeout was not logged")
	}
}

func TestRunSoftwareContextEndsWithoutFiring(t *testing.T) {
	dir := newDataDir(t)
	v := startVictim(t, dir, true)
	p := runInProcess(t, dir, 300*time.Millisecond)
	p.cancel()
	err, _ := p.wait(t, 200*time.Millisecond)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("RunSoftware: %v; want context.Canceled", err)
	}
	time.Sleep(400 * time.Millisecond)
	if !v.alive() {
		t.Fatal("victim killed after the context ended")
	}
}

// TestRunSoftwareStalePidFile: a postmaster.pid naming a process that runs
// elsewhere (pid reuse) kills nobody.
func TestRunSoftwareStalePidFile(t *testing.T) {
	dir := newDataDir(t)
	stranger := startVictim(t, t.TempDir(), false)
	pidFile := fmt.Sprintf("%d\n%s\n", stranger.pid, dir)
	if err := os.WriteFile(filepath.Join(dir, "postmaster.pid"), []byte(pidFile), 0o600); err != nil {
		t.Fatal(err)
	}
	p := runInProcess(t, dir, 100*time.Millisecond)
	err, _ := p.wait(t, 100*time.Millisecond+slack)
	if err == nil || !strings.Contains(err.Error(), "watchdog fired") {
		t.Errorf("RunSoftware: %v; want a \"watchdog fired\" error", err)
	}
	if !stranger.alive() {
		t.Fatal("a process outside the data directory was killed")
	}
	if logs := p.logs.String(); !strings.Contains(logs, "watchdog fired: no postmaster killed") || !strings.Contains(logs, "stale postmaster.pid") {
		t.Errorf("log does not say why nothing was killed:\n%s", logs)
	}
}

func TestRunSoftwareRefusesBadArguments(t *testing.T) {
	dir := newDataDir(t)
	for _, tc := range []struct {
		name    string
		dir     string
		timeout time.Duration
		want    string
	}{
		{"missing data dir", filepath.Join(dir, "nope"), time.Second, "no such file or directory"},
		{"data dir is a file", "/dev/null", time.Second, "not a directory"},
		{"zero timeout", dir, 0, "timeout 0s must be positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := RunSoftware(t.Context(), strings.NewReader(""), tc.dir, tc.timeout, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("RunSoftware: %v; want %q", err, tc.want)
			}
		})
	}
}

func TestDecoder(t *testing.T) {
	type step struct {
		in    string
		want  decoded
		magic bool
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"feed", []step{{".", decoded{fed: true}, false}}},
		{"many feeds", []step{{"...\n", decoded{fed: true}, false}}},
		{"magic close", []step{{".V", decoded{fed: true}, true}}},
		{"feed cancels magic", []step{{"V.", decoded{fed: true}, false}}},
		{"new timeout", []step{{"T 3s\n", decoded{fed: true, timeout: 3 * time.Second}, false}}},
		{"timeout split across chunks", []step{
			{"T 1", decoded{}, false},
			{"500ms\n.", decoded{fed: true, timeout: 1500 * time.Millisecond}, false},
		}},
		{"bad timeout", []step{{"T soon\n", decoded{invalid: []string{`T "soon": not a positive duration`}}, false}}},
		{"negative timeout", []step{{"T -1s\n", decoded{invalid: []string{`T "-1s": not a positive duration`}}, false}}},
		{"line too long", []step{{"T " + strings.Repeat("9", 100) + "\n", decoded{invalid: []string{"T line too long"}}, false}}},
		{"unknown byte", []step{{"Vx", decoded{invalid: []string{"'x'"}}, false}}},
		{"whitespace keeps magic", []step{{"V\n", decoded{}, true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d decoder
			for _, s := range tc.steps {
				got := d.decode([]byte(s.in))
				if !reflect.DeepEqual(got, s.want) || d.magic != s.magic {
					t.Errorf("decode(%q) = %+v magic %v; want %+v magic %v", s.in, got, d.magic, s.want, s.magic)
				}
			}
		})
	}
}
