// Package pgproctest makes processes that package pgproc's checks take
// for, or not for, a PostgreSQL server, without PostgreSQL: a copy of
// sleep called postgres working in a data directory, other programs
// working there, and zombies. It is for tests only.
package pgproctest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pharos-ha/pharos/internal/pgproc"
)

// FakeServer makes a data directory and a program called postgres (a copy
// of sleep) beside it: /proc shows a process of it that works in the data
// directory as a server of that directory, which is all pgproc looks at.
// It skips the test when there is no sleep program.
func FakeServer(t testing.TB) (dataDir, fakePostgres string) {
	t.Helper()
	base := t.TempDir()
	dataDir = filepath.Join(base, "data")
	if err := os.Mkdir(dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep program")
	}
	b, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	fakePostgres = filepath.Join(base, "postgres")
	if err := os.WriteFile(fakePostgres, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dataDir, fakePostgres
}

// Spawn starts prog in dir as owner (nil: this process's user) and
// returns it; the test's cleanup kills and reaps it.
func Spawn(t testing.TB, owner *pgproc.Owner, dir, prog string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(prog, args...)
	cmd.Dir = dir
	if owner != nil {
		owner.Apply(cmd)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

// Zombie returns the PID of an exited child working in dir as owner (nil:
// this process's user), not reaped yet: what a postmaster killed by the
// watchdog is until its parent gets to it. It fails the test when the
// child is no zombie after 5 s.
func Zombie(t testing.TB, owner *pgproc.Owner, dir string) int {
	t.Helper()
	pid := Spawn(t, owner, dir, "/bin/true").Process.Pid
	deadline := time.Now().Add(5 * time.Second)
	for {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatal(err)
		}
		if i := strings.LastIndexByte(string(stat), ')'); i > 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("child %d did not become a zombie", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
