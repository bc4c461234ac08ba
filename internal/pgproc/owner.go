package pgproc

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
)

// ServerOSUser is the account the servers run as when the caller is root.
const ServerOSUser = "postgres"

// Owner is the OS account PostgreSQL processes run as and that owns the
// directories they use: the `postgres` user when the caller is root, the
// caller itself otherwise.
type Owner struct {
	Name   string
	UID    uint32
	GID    uint32
	Groups []uint32 // supplementary groups, for the directory access check
	// Drop is true when commands must switch to this account (the caller
	// is root).
	Drop bool
}

// CurrentOwner returns the account servers started by this process run as.
func CurrentOwner() (Owner, error) {
	if os.Geteuid() != 0 {
		u, err := user.Current()
		if err != nil {
			return Owner{}, fmt.Errorf("current user: %w", err)
		}
		return ownerOf(u, false)
	}
	u, err := user.Lookup(ServerOSUser)
	if err != nil {
		return Owner{}, fmt.Errorf("running as root needs an unprivileged %q OS user (run scripts/ensure-deps.sh): %w", ServerOSUser, err)
	}
	o, err := ownerOf(u, true)
	if err != nil {
		return Owner{}, err
	}
	if o.UID == 0 {
		return Owner{}, fmt.Errorf("OS user %q has uid 0; PostgreSQL refuses to run as root", ServerOSUser)
	}
	return o, nil
}

func ownerOf(u *user.User, drop bool) (Owner, error) {
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return Owner{}, fmt.Errorf("user %s: uid %q: %w", u.Username, u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return Owner{}, fmt.Errorf("user %s: gid %q: %w", u.Username, u.Gid, err)
	}
	o := Owner{Name: u.Username, UID: uint32(uid), GID: uint32(gid), Drop: drop}
	if ids, err := u.GroupIds(); err == nil {
		for _, s := range ids {
			if g, err := strconv.ParseUint(s, 10, 32); err == nil {
				o.Groups = append(o.Groups, uint32(g))
			}
		}
	}
	return o, nil
}

// Apply prepares cmd to run as the owner in a process group of its own. It
// replaces cmd.SysProcAttr.
func (o Owner) Apply(cmd *exec.Cmd) {
	attr := &syscall.SysProcAttr{Setpgid: true}
	if o.Drop {
		attr.Credential = &syscall.Credential{Uid: o.UID, Gid: o.GID, Groups: o.Groups}
	}
	cmd.SysProcAttr = attr
}

// Chown gives path to the owner (a no-op when privileges are not dropped).
func (o Owner) Chown(path string) error {
	if !o.Drop {
		return nil
	}
	if err := os.Lchown(path, int(o.UID), int(o.GID)); err != nil {
		return fmt.Errorf("chown %s to %s: %w", path, o.Name, err)
	}
	return nil
}

// MkdirAll creates dir and any missing parents with mode perm and gives
// every directory it created to the owner. Existing directories are left
// alone.
func (o Owner) MkdirAll(dir string, perm os.FileMode) error {
	dir = filepath.Clean(dir)
	var created []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("mkdir %s: %w", dir, err)
		}
		created = append(created, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	if err := os.MkdirAll(dir, perm); err != nil {
		return fmt.Errorf("mkdir %s: %w", dir, err)
	}
	for _, d := range created {
		if err := os.Chmod(d, perm); err != nil { // umask
			return fmt.Errorf("chmod %s: %w", d, err)
		}
		if err := o.Chown(d); err != nil {
			return err
		}
	}
	return nil
}

// CheckReachable reports a clear error when the owner cannot reach dir: it
// needs search permission on every ancestor. A root caller's t.TempDir()
// (under a 0700 root-owned directory) is the usual culprit.
func (o Owner) CheckReachable(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("abs %s: %w", dir, err)
	}
	for d := abs; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("stat %s: %w", d, err)
		}
		if !o.canSearch(fi) {
			return fmt.Errorf("OS user %s cannot reach %s: %s is mode %v; use a base directory under %s",
				o.Name, abs, d, fi.Mode().Perm(), os.TempDir())
		}
		if filepath.Dir(d) == d {
			return nil
		}
	}
}

func (o Owner) canSearch(fi fs.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return true
	}
	perm := fi.Mode().Perm()
	switch {
	case !o.Drop && os.Geteuid() == 0:
		return true
	case st.Uid == o.UID:
		return perm&0o100 != 0
	case st.Gid == o.GID || slices.Contains(o.Groups, st.Gid):
		return perm&0o010 != 0
	default:
		return perm&0o001 != 0
	}
}
