package watchdog

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pharos-ha/pharos/internal/localha"
)

// pharosBin is the pharos binary built by TestMain for the end-to-end
// tests of Software; buildErr says why it is missing.
var (
	pharosBin string
	buildErr  error
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "pharos-watchdog-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	pharosBin, buildErr = localha.BuildPharos(dir, false)

	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			return 1
		}
		if kids := childProcesses(); len(kids) > 0 {
			fmt.Fprintln(os.Stderr, "child processes left behind:", kids)
			return 1
		}
	}
	return code
}

// childProcesses lists the live and zombie children of this process.
func childProcesses() []string {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	me := os.Getpid()
	var kids []string
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// "pid (comm) S ppid ..."
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(me) {
			kids = append(kids, e.Name()+" "+string(stat[:i+1])+" "+f[0])
		}
	}
	return kids
}

// victim is a `sleep 60` standing in for a postmaster: it runs in the data
// directory and postmaster.pid names it.
type victim struct {
	pid    int
	exited chan struct{}
	state  *os.ProcessState // after exited
}

// startVictim starts the victim in dir and, when pidFile, writes
// dir/postmaster.pid naming it.
func startVictim(t *testing.T, dir string, pidFile bool) *victim {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	v := &victim{pid: cmd.Process.Pid, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		v.state = cmd.ProcessState
		close(v.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-v.exited
	})
	if pidFile {
		content := fmt.Sprintf("%d\n%s\n1700000000\n5432\n", v.pid, dir)
		if err := os.WriteFile(filepath.Join(dir, "postmaster.pid"), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Let it reach its working directory (exec has happened once
	// /proc/<pid>/exe is sleep).
	deadline := time.Now().Add(5 * time.Second)
	for {
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", v.pid))
		if filepath.Base(exe) == "sleep" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("victim %d did not exec sleep", v.pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return v
}

func (v *victim) alive() bool {
	select {
	case <-v.exited:
		return false
	default:
		return true
	}
}

// waitKilled asserts the victim dies of SIGKILL within d.
func (v *victim) waitKilled(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case <-v.exited:
	case <-time.After(d):
		t.Fatalf("victim %d still alive after %s", v.pid, d)
	}
	ws, ok := v.state.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("victim %d: %s; want killed by SIGKILL", v.pid, v.state)
	}
}

// newDataDir makes base/data (0700) and returns it with symbolic links
// resolved, as /proc shows working directories.
func newDataDir(t *testing.T) string {
	t.Helper()
	base, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// logBuffer collects a logger's output safely across goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testLogger logs as JSON to a buffer, and to the test output.
func testLogger(t *testing.T) (*slog.Logger, *logBuffer) {
	var b logBuffer
	h := slog.NewJSONHandler(&teeWriter{a: &b, t: t}, &slog.HandlerOptions{Level: slog.LevelDebug})
	return slog.New(h), &b
}

type teeWriter struct {
	a *logBuffer
	t *testing.T
}

func (w *teeWriter) Write(p []byte) (int, error) {
	w.a.Write(p)
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
