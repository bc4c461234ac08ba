//go:build !linux

package watchdog

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"
)

// Placeholders: watchdog devices are driven on Linux only.
const (
	wdiocGetSupport uintptr = iota + 1
	wdiocKeepalive
	wdiocSetTimeout
	wdiocGetTimeout
)

const (
	wdiofSetTimeout = 1 << iota
	wdiofMagicClose
	wdiofKeepalivePing
)

type watchdogInfo struct {
	Options  uint32
	Version  uint32
	Identity [32]uint8
}

func ioctlPtr(*os.File, uintptr, unsafe.Pointer) error {
	return fmt.Errorf("watchdog devices on %s/%s: %w", runtime.GOOS, runtime.GOARCH, errors.ErrUnsupported)
}
