package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pharos-ha/pharos/internal/pglocal"
)

// TestDemoRunsAndStops runs `pharos demo` as `make demo` does (with two
// nodes to keep it short): it must write demo.env, serve rw on the primary
// and ro on a replica through the proxy, and stop everything on Ctrl-C.
func TestDemoRunsAndStops(t *testing.T) {
	bin := pharosBinary(t)
	dir, err := os.MkdirTemp("", "pharos-demo-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// The servers run as postgres when the test is root: the directory must
	// be reachable for them.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	base, err := pglocal.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "demo", "--dir", dir, "--nodes", "2", "--base-port", strconv.Itoa(base), "--log-level", "warn")
	out, err := os.Create(filepath.Join(dir, "demo.out"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = cmd.Process.Signal(syscall.SIGINT)
			<-exited
		}
	})

	envPath := filepath.Join(dir, "demo.env")
	env := map[string]string{}
	for deadline := time.Now().Add(60 * time.Second); len(env) == 0; {
		if time.Now().After(deadline) {
			logs, _ := os.ReadFile(out.Name())
			t.Fatalf("no demo.env after 60s; output:\n%s", logs)
		}
		select {
		case err := <-exited:
			stopped = true
			logs, _ := os.ReadFile(out.Name())
			t.Fatalf("demo exited early (%v); output:\n%s", err, logs)
		case <-time.After(200 * time.Millisecond):
		}
		if f, err := os.Open(envPath); err == nil {
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				if k, v, ok := strings.Cut(sc.Text(), "="); ok {
					env[k] = v
				}
			}
			f.Close()
		}
	}
	for _, tc := range []struct {
		key          string
		wantRecovery bool
	}{
		{"PHAROS_RW_DSN", false},
		{"PHAROS_RO_DSN", true},
	} {
		conn, err := pgx.Connect(ctx, env[tc.key])
		if err != nil {
			t.Fatalf("%s: %v", tc.key, err)
		}
		var inRecovery bool
		err = conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery)
		conn.Close(ctx)
		if err != nil || inRecovery != tc.wantRecovery {
			t.Errorf("%s: in recovery %v (err %v), want %v", tc.key, inRecovery, err, tc.wantRecovery)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			logs, _ := os.ReadFile(out.Name())
			t.Fatalf("demo exited with %v after Ctrl-C; output:\n%s", err, logs)
		}
	case <-time.After(45 * time.Second):
		t.Fatal("demo did not stop within 45s of Ctrl-C")
	}
	// Every server it started is gone: nothing runs from its data directories.
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), dir) {
			t.Errorf("a process still runs from the demo directory: %s", strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
}
