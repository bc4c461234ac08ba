//go:build linux

package watchdog

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestIoctlNumbers: the request numbers are those of linux/watchdog.h.
func TestIoctlNumbers(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) == 8 { // amd64, arm64, …: the values of the brief
		for _, tc := range []struct {
			name      string
			got, want uint64
		}{
			{"WDIOC_GETSUPPORT", uint64(wdiocGetSupport), 0x80285700},
			{"WDIOC_SETTIMEOUT", uint64(wdiocSetTimeout), 0xc0045706},
			{"WDIOC_KEEPALIVE", uint64(wdiocKeepalive), 0x80045705},
			{"WDIOC_GETTIMEOUT", uint64(wdiocGetTimeout), 0x80045707},
		} {
			if tc.got != tc.want {
				t.Errorf("%s = %#x, want %#x", tc.name, tc.got, tc.want)
			}
		}
	}
	// And golang.org/x/sys agrees on this architecture.
	for _, tc := range []struct {
		name      string
		got, want uint64
	}{
		{"WDIOC_GETSUPPORT", uint64(wdiocGetSupport), uint64(unix.WDIOC_GETSUPPORT)},
		{"WDIOC_SETTIMEOUT", uint64(wdiocSetTimeout), uint64(unix.WDIOC_SETTIMEOUT)},
		{"WDIOC_KEEPALIVE", uint64(wdiocKeepalive), uint64(unix.WDIOC_KEEPALIVE)},
		{"WDIOC_GETTIMEOUT", uint64(wdiocGetTimeout), uint64(unix.WDIOC_GETTIMEOUT)},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %#x, x/sys/unix says %#x", tc.name, tc.got, tc.want)
		}
	}
	if got := unsafe.Sizeof(watchdogInfo{}); got != 40 {
		t.Errorf("sizeof(struct watchdog_info) = %d, want 40", got)
	}
	if wdiofSetTimeout != unix.WDIOF_SETTIMEOUT || wdiofKeepalivePing != unix.WDIOF_KEEPALIVEPING || wdiofMagicClose != unix.WDIOF_MAGICCLOSE {
		t.Error("WDIOF_* option bits differ from x/sys/unix")
	}
}

// openFDs counts this process's descriptors open on path.
func openFDs(t *testing.T, path string) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		if target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && target == path {
			n++
		}
	}
	return n
}

// TestDeviceRefusals: without a watchdog device, Arm says why, names the
// path and the step, and leaves nothing open or armed.
func TestDeviceRefusals(t *testing.T) {
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	regular := filepath.Join(dir, "not-a-watchdog")
	if err := os.WriteFile(regular, []byte("untouched"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		path    string
		timeout time.Duration
		want    string
		errno   error
	}{
		{"missing device", filepath.Join(dir, "watchdog"), 3 * time.Second,
			"watchdog " + filepath.Join(dir, "watchdog") + ": open: no such file or directory", syscall.ENOENT},
		{"regular file", regular, 3 * time.Second,
			"watchdog " + regular + ": WDIOC_GETSUPPORT: inappropriate ioctl for device", syscall.ENOTTY},
		{"directory", dir, 3 * time.Second, "watchdog " + dir + ": open: is a directory", syscall.EISDIR},
		{"timeout below a second", regular, 900 * time.Millisecond,
			"watchdog " + regular + ": arm: timeout 900ms is below the device's resolution of 1s", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log, _ := testLogger(t)
			d := OpenDevice(tc.path, log)
			before := openFDs(t, tc.path)
			err := d.Arm(tc.timeout)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("Arm: %v; want %q", err, tc.want)
			}
			if tc.errno != nil && !errors.Is(err, tc.errno) {
				t.Errorf("Arm: %v is not %v", err, tc.errno)
			}
			if d.Armed() || d.Timeout() != 0 {
				t.Errorf("after a failed Arm: Armed %v, Timeout %s", d.Armed(), d.Timeout())
			}
			if after := openFDs(t, tc.path); after != before {
				t.Errorf("%d descriptors open on %s after a failed Arm, %d before", after, tc.path, before)
			}
			if err := d.Feed(); !errors.Is(err, ErrNotArmed) || !strings.Contains(err.Error(), tc.path) {
				t.Errorf("Feed: %v; want %v naming the path", err, ErrNotArmed)
			}
			if err := d.Disarm(); err != nil {
				t.Errorf("Disarm when not armed: %v", err)
			}
		})
	}
	// ENOTTY means "not a watchdog": no magic "V" was written into it.
	if got, _ := os.ReadFile(regular); string(got) != "untouched" {
		t.Errorf("regular file now holds %q", got)
	}
}
