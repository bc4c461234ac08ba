//go:build linux

package watchdog

import (
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The requests, struct watchdog_info and its option bits of linux/watchdog.h,
// as golang.org/x/sys/unix defines them for each architecture.
const (
	wdiocGetSupport = unix.WDIOC_GETSUPPORT
	wdiocKeepalive  = unix.WDIOC_KEEPALIVE
	wdiocSetTimeout = unix.WDIOC_SETTIMEOUT
	wdiocGetTimeout = unix.WDIOC_GETTIMEOUT

	wdiofSetTimeout    = unix.WDIOF_SETTIMEOUT    // the timeout can be set
	wdiofMagicClose    = unix.WDIOF_MAGICCLOSE    // supports the magic close char
	wdiofKeepalivePing = unix.WDIOF_KEEPALIVEPING // keep-alive ping reply
)

type watchdogInfo = unix.WatchdogInfo

// ioctlPtr runs ioctl(f, req, p) without putting f into blocking mode.
func ioctlPtr(f *os.File, req uintptr, p unsafe.Pointer) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, req, uintptr(p))
	}); err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	return nil
}
