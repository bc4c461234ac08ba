package haagent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/pharos-ha/pharos/internal/pgproc"
	"github.com/pharos-ha/pharos/internal/pgproc/pgproctest"
)

// deadDirs makes a data directory and a program called postgres (a copy
// of sleep): /proc shows a process of it as a server of the directory it
// runs in, which is all awaitDead and postmasterPid look at.
func deadDirs(t *testing.T) (dataDir, fakePostgres string) {
	t.Helper()
	return pgproctest.FakeServer(t)
}

// spawn starts prog in dir and returns it; the test reaps it.
func spawn(t *testing.T, dir, prog string, args ...string) *exec.Cmd {
	t.Helper()
	return pgproctest.Spawn(t, nil, dir, prog, args...)
}

// spawnAs is spawn as owner (nil: this process's user).
func spawnAs(t *testing.T, owner *pgproc.Owner, dir, prog string, args ...string) *exec.Cmd {
	t.Helper()
	return pgproctest.Spawn(t, owner, dir, prog, args...)
}

// zombieProcess returns the PID of an exited child not reaped yet: what a
// postmaster killed by the watchdog is until init gets to it.
func zombieProcess(t *testing.T, dir string) int {
	t.Helper()
	return pgproctest.Zombie(t, nil, dir)
}

// zombieOf is zombieProcess as owner (nil: this process's user).
func zombieOf(t *testing.T, owner *pgproc.Owner, dir string) int {
	t.Helper()
	return pgproctest.Zombie(t, owner, dir)
}

func writeLock(t *testing.T, dataDir string, pid int) {
	t.Helper()
	body := fmt.Sprintf("%d\n%s\n1700000000\n6001\n/tmp\n127.0.0.1\n", pid, dataDir)
	if err := os.WriteFile(filepath.Join(dataDir, "postmaster.pid"), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func lockExists(dataDir string) bool {
	_, err := os.Stat(filepath.Join(dataDir, "postmaster.pid"))
	return err == nil
}

func alive(pid int) bool { return pgproc.ProcessAlive(pid) }

func deadPostgres(dataDir string, wait time.Duration) *postgres {
	p := newPostgres(PostgresConfig{Name: "n1", DataDir: dataDir, SocketDir: filepath.Dir(dataDir), Port: 1},
		slog.New(slog.DiscardHandler))
	p.deadWait = wait
	return p
}

// TestAwaitDead: the checks before pg_rewind, pg_ctl start and a wipe.
func TestAwaitDead(t *testing.T) {
	t.Run("zombie postmaster: its lock file goes, nothing waits", func(t *testing.T) {
		dataDir, _ := deadDirs(t)
		zpid := zombieProcess(t, dataDir)
		writeLock(t, dataDir, zpid)
		p := deadPostgres(dataDir, 5*time.Second)
		if pid := p.postmasterPid(); pid != 0 {
			t.Fatalf("a zombie counts as a running postmaster (%d)", pid)
		}
		t0 := time.Now()
		if err := p.awaitDead(t.Context(), p.deadWait); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(t0); took > time.Second {
			t.Errorf("waited %v for a process that is already dead", took)
		}
		if lockExists(dataDir) {
			t.Error("the lock file of the zombie is still there: PostgreSQL's kill(pid, 0) check would refuse")
		}
	})

	t.Run("PID reused by another program: stale, and the program lives on", func(t *testing.T) {
		dataDir, _ := deadDirs(t)
		other := spawn(t, t.TempDir(), "sleep", "30")
		writeLock(t, dataDir, other.Process.Pid)
		p := deadPostgres(dataDir, 5*time.Second)
		if pid := p.postmasterPid(); pid != 0 {
			t.Fatalf("a sleep elsewhere counts as the postmaster (%d)", pid)
		}
		if err := p.awaitDead(t.Context(), p.deadWait); err != nil {
			t.Fatal(err)
		}
		if lockExists(dataDir) {
			t.Error("stale lock file kept")
		}
		if !alive(other.Process.Pid) {
			t.Error("the unrelated process was killed")
		}
	})

	t.Run("live postmaster: waited for, never killed, lock kept", func(t *testing.T) {
		dataDir, fake := deadDirs(t)
		server := spawn(t, dataDir, fake, "30")
		writeLock(t, dataDir, server.Process.Pid)
		p := deadPostgres(dataDir, 300*time.Millisecond)
		if pid := p.postmasterPid(); pid != server.Process.Pid {
			t.Fatalf("postmasterPid = %d, want the live server %d", pid, server.Process.Pid)
		}
		err := p.awaitDead(t.Context(), p.deadWait)
		if !errors.Is(err, errServerAlive) {
			t.Fatalf("awaitDead over a live postmaster: %v, want errServerAlive", err)
		}
		if !alive(server.Process.Pid) {
			t.Error("awaitDead killed a live postmaster")
		}
		if !lockExists(dataDir) {
			t.Error("the live postmaster's lock file was removed")
		}
	})

	t.Run("live postmaster ends within the bound", func(t *testing.T) {
		dataDir, fake := deadDirs(t)
		server := spawn(t, dataDir, fake, "0.3")
		writeLock(t, dataDir, server.Process.Pid)
		// Not reaped until the cleanup: it ends as a zombie, as a
		// postmaster whose parent is a slow init does.
		p := deadPostgres(dataDir, 10*time.Second)
		if err := p.awaitDead(t.Context(), p.deadWait); err != nil {
			t.Fatal(err)
		}
		if lockExists(dataDir) {
			t.Error("lock file kept after the postmaster exited")
		}
	})

	t.Run("backends of a dead postmaster are killed", func(t *testing.T) {
		dataDir, fake := deadDirs(t)
		writeLock(t, dataDir, zombieProcess(t, dataDir))
		backend := spawn(t, dataDir, fake, "30")
		p := deadPostgres(dataDir, 5*time.Second)
		if err := p.awaitDead(t.Context(), p.deadWait); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(2 * time.Second)
		for alive(backend.Process.Pid) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if alive(backend.Process.Pid) {
			t.Error("a leftover backend of the dead postmaster survived")
		}
	})

	t.Run("data directory reached through a symlink: its server is still its server", func(t *testing.T) {
		dataDir, fake := deadDirs(t)
		server := spawn(t, dataDir, fake, "30")
		writeLock(t, dataDir, server.Process.Pid)
		link := filepath.Join(t.TempDir(), "via-link")
		if err := os.Symlink(dataDir, link); err != nil {
			t.Fatal(err)
		}
		p := deadPostgres(link, 200*time.Millisecond)
		if pid := p.postmasterPid(); pid != server.Process.Pid {
			t.Fatalf("through a symlink the live server looks like a stranger (postmasterPid %d)", pid)
		}
		if err := p.awaitDead(t.Context(), p.deadWait); !errors.Is(err, errServerAlive) {
			t.Fatalf("awaitDead: %v, want errServerAlive", err)
		}
	})

	t.Run("garbage lock file", func(t *testing.T) {
		dataDir, _ := deadDirs(t)
		if err := os.WriteFile(filepath.Join(dataDir, "postmaster.pid"), []byte("not a pid\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		p := deadPostgres(dataDir, time.Second)
		if err := p.awaitDead(t.Context(), p.deadWait); err != nil {
			t.Fatal(err)
		}
		if lockExists(dataDir) {
			t.Error("unreadable lock file kept")
		}
	})
}
