package pgproc

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// PidFile reads the postmaster's PID from the first line of
// dataDir/postmaster.pid. The file names the process that held the data
// directory last; whether it still does is HolderOf's question. The PID
// is 0 with every error.
func PidFile(dataDir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	return parsePid(b)
}

// parsePid reads the first line of a postmaster.pid.
func parsePid(b []byte) (int, error) {
	first, _, _ := bytes.Cut(b, []byte("\n"))
	pid, err := strconv.Atoi(strings.TrimSpace(string(first)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("postmaster.pid: %q is not a pid", first)
	}
	return pid, nil
}

// ServerPids lists the live processes of dataDir's server: postmaster
// first (when not 0), then the others ServerProcesses finds.
func ServerPids(dataDir string, postmaster int) []int {
	pids := []int{}
	if postmaster != 0 {
		pids = append(pids, postmaster)
	}
	for _, pid := range ServerProcesses(dataDir) {
		if pid != postmaster {
			pids = append(pids, pid)
		}
	}
	return pids
}

// KillServer SIGKILLs the processes ServerPids(dataDir, postmaster) lists
// and returns them. With postmaster 0 it kills what outlives a dead
// postmaster: backends that hold its shared memory and would make the
// next start on the directory refuse to run. It does not wait for them to
// go; callers poll ServerProcesses with their own bound.
func KillServer(dataDir string, postmaster int) []int {
	pids := ServerPids(dataDir, postmaster)
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	return pids
}

// ServerProcesses lists the live postgres processes whose working directory
// is dataDir (every process of a server runs there), from /proc. Zombies
// are left out: they hold no shared memory.
func ServerProcesses(dataDir string) []int {
	dataDir = realDir(dataDir)
	var pids []int
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		dir := filepath.Join("/proc", e.Name())
		if cwd, err := os.Readlink(filepath.Join(dir, "cwd")); err != nil || cwd != dataDir {
			continue
		}
		// An unreadable exe is a process on its way out: the kernel drops
		// the link before it has finished unmapping, so it may still hold
		// the server's shared memory, and a start now would refuse. Only
		// a readable exe tells another program from postgres.
		if exe, err := os.Readlink(filepath.Join(dir, "exe")); err == nil && filepath.Base(strings.TrimSuffix(exe, " (deleted)")) != "postgres" {
			continue
		}
		if stat, err := os.ReadFile(filepath.Join(dir, "stat")); err == nil && zombie(stat) {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// realDir is dir as a process working in it sees it in /proc/<pid>/cwd:
// absolute, without symlinks. A data directory reached through a symlink
// must not make its own live postmaster look like a stranger.
func realDir(dir string) string {
	if r, err := filepath.EvalSymlinks(dir); err == nil {
		dir = r
	}
	if a, err := filepath.Abs(dir); err == nil {
		return a
	}
	return filepath.Clean(dir)
}

// zombie reads the state field of /proc/<pid>/stat ("pid (comm) S ...").
func zombie(stat []byte) bool {
	i := strings.LastIndexByte(string(stat), ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z'
}

// Holder is what the process a postmaster.pid names turns out to be.
type Holder uint8

const (
	// HolderGone: no such process, or a zombie (it exited; it holds no
	// shared memory, sockets or files, only its exit status).
	HolderGone Holder = iota
	// HolderServer: a live postgres process working in the data directory.
	HolderServer
	// HolderForeign: a live process that is not a server of this data
	// directory (its PID was reused after the postmaster died).
	HolderForeign
	// HolderUnknown: alive, but /proc does not say what it is (another
	// user's process under hidepid, say). Callers treat it as a server.
	HolderUnknown
)

func (h Holder) String() string {
	return [...]string{"gone", "server", "foreign", "unknown"}[h]
}

// HolderOf tells what process pid is relative to dataDir. PostgreSQL's own
// interlock (kill(pid, 0)) cannot tell a zombie or a reused PID from a
// live postmaster; /proc can.
func HolderOf(pid int, dataDir string) Holder {
	dataDir = realDir(dataDir)
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil || zombie(stat) {
		return HolderGone
	}
	cwd, cerr := os.Readlink(filepath.Join(dir, "cwd"))
	exe, eerr := os.Readlink(filepath.Join(dir, "exe"))
	if cerr != nil || eerr != nil {
		if _, err := os.Stat(dir); err != nil {
			return HolderGone // exited between the reads
		}
		return HolderUnknown
	}
	if cwd == dataDir && filepath.Base(strings.TrimSuffix(exe, " (deleted)")) == "postgres" {
		return HolderServer
	}
	return HolderForeign
}

// ProcessAlive reports whether pid is a live (not zombie) process.
func ProcessAlive(pid int) bool {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	return err == nil && !zombie(stat)
}
