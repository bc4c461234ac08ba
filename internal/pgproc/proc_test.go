package pgproc_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pharos-ha/pharos/internal/pgproc"
	"github.com/pharos-ha/pharos/internal/pgproc/pgproctest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitFor polls cond every 5 ms, failing the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 2000 {
		if cond() {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s: not after 10s", what)
}

func TestHolderOf(t *testing.T) {
	dataDir, fake := pgproctest.FakeServer(t)
	server := pgproctest.Spawn(t, nil, dataDir, fake, "30")
	other := pgproctest.Spawn(t, nil, t.TempDir(), "sleep", "30")
	notPostgres := pgproctest.Spawn(t, nil, dataDir, "sleep", "30")
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(dataDir, link); err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct {
		pid  int
		dir  string
		want pgproc.Holder
	}{
		"server":                 {server.Process.Pid, dataDir, pgproc.HolderServer},
		"server through symlink": {server.Process.Pid, link, pgproc.HolderServer},
		"foreign elsewhere":      {other.Process.Pid, dataDir, pgproc.HolderForeign},
		"foreign program here":   {notPostgres.Process.Pid, dataDir, pgproc.HolderForeign},
		"zombie":                 {pgproctest.Zombie(t, nil, dataDir), dataDir, pgproc.HolderGone},
		"no such":                {1 << 30, dataDir, pgproc.HolderGone},
	}
	for name, c := range cases {
		if got := pgproc.HolderOf(c.pid, c.dir); got != c.want {
			t.Errorf("%s (pid %d): %v, want %v", name, c.pid, got, c.want)
		}
	}
}

func TestServerProcessesAndKillServer(t *testing.T) {
	dataDir, fake := pgproctest.FakeServer(t)
	a := pgproctest.Spawn(t, nil, dataDir, fake, "30")
	b := pgproctest.Spawn(t, nil, dataDir, fake, "30")
	pgproctest.Spawn(t, nil, dataDir, "sleep", "30")            // not a postgres program
	pgproctest.Spawn(t, nil, filepath.Dir(dataDir), fake, "30") // a postgres elsewhere
	pgproctest.Zombie(t, nil, dataDir)                          // holds nothing
	want := []int{a.Process.Pid, b.Process.Pid}
	slices.Sort(want)
	got := pgproc.ServerProcesses(dataDir)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("pgproc.ServerProcesses = %v, want %v", got, want)
	}
	if pids := pgproc.ServerPids(dataDir, b.Process.Pid); len(pids) != 2 || pids[0] != b.Process.Pid {
		t.Errorf("pgproc.ServerPids(postmaster %d) = %v, want it first and once", b.Process.Pid, pids)
	}
	killed := pgproc.KillServer(dataDir, 0)
	slices.Sort(killed)
	if !slices.Equal(killed, want) {
		t.Errorf("pgproc.KillServer = %v, want %v", killed, want)
	}
	waitFor(t, "killed processes gone", func() bool { return !pgproc.ProcessAlive(a.Process.Pid) && !pgproc.ProcessAlive(b.Process.Pid) })
	if left := pgproc.ServerProcesses(dataDir); len(left) != 0 {
		t.Errorf("after pgproc.KillServer: %v left", left)
	}
	if pids := pgproc.KillServer(dataDir, 0); len(pids) != 0 {
		t.Errorf("pgproc.KillServer of nothing = %v", pids)
	}
}

func TestProcessAlive(t *testing.T) {
	dir := t.TempDir()
	if !pgproc.ProcessAlive(os.Getpid()) {
		t.Error("this process is not alive")
	}
	if pgproc.ProcessAlive(pgproctest.Zombie(t, nil, dir)) {
		t.Error("a zombie is alive")
	}
	if pgproc.ProcessAlive(1 << 30) {
		t.Error("no such process is alive")
	}
}

func TestPidFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := pgproc.PidFile(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("no postmaster.pid: %v, want ErrNotExist", err)
	}
	for body, want := range map[string]int{
		"4242\n/data\n1700000000\n5432\n": 4242,
		" 17 \n":                          17,
		"99":                              99,
		"0\n":                             0,
		"-5\n":                            0,
		"not a pid\n4242\n":               0,
		"":                                0,
	} {
		if err := os.WriteFile(filepath.Join(dir, "postmaster.pid"), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := pgproc.PidFile(dir)
		if got != want || (err == nil) != (want != 0) {
			t.Errorf("postmaster.pid %q: %d, %v; want %d", body, got, err, want)
		}
		if err != nil && !strings.Contains(err.Error(), "is not a pid") {
			t.Errorf("postmaster.pid %q: error %q does not say what is wrong", body, err)
		}
	}
}
