//go:build linux && (386 || amd64 || arm || arm64 || loong64 || riscv64 || s390x)

package watchdog

import (
	"os"
	"syscall"
	"unsafe"
)

// The ioctl request numbers of linux/watchdog.h (include/uapi/linux/watchdog.h):
//
//	#define WATCHDOG_IOCTL_BASE 'W'
//	#define WDIOC_GETSUPPORT  _IOR(WATCHDOG_IOCTL_BASE, 0, struct watchdog_info)
//	#define WDIOC_KEEPALIVE   _IOR(WATCHDOG_IOCTL_BASE, 5, int)
//	#define WDIOC_SETTIMEOUT  _IOWR(WATCHDOG_IOCTL_BASE, 6, int)
//	#define WDIOC_GETTIMEOUT  _IOR(WATCHDOG_IOCTL_BASE, 7, int)
//
// encoded as asm-generic/ioctl.h does (the architectures in this file's
// build constraint): dir<<30 | size<<16 | type<<8 | nr.
const (
	iocWrite = 1
	iocRead  = 2

	watchdogIoctlBase = 'W'

	wdiocGetSupport = iocRead<<30 | unsafe.Sizeof(watchdogInfo{})<<16 | watchdogIoctlBase<<8 | 0
	wdiocKeepalive  = iocRead<<30 | unsafe.Sizeof(int32(0))<<16 | watchdogIoctlBase<<8 | 5
	wdiocSetTimeout = (iocRead|iocWrite)<<30 | unsafe.Sizeof(int32(0))<<16 | watchdogIoctlBase<<8 | 6
	wdiocGetTimeout = iocRead<<30 | unsafe.Sizeof(int32(0))<<16 | watchdogIoctlBase<<8 | 7
)

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
