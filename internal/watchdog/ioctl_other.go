//go:build !(linux && (386 || amd64 || arm || arm64 || loong64 || riscv64 || s390x))

package watchdog

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"
)

// Placeholders: watchdog devices are driven on Linux with the generic
// ioctl encoding only.
const (
	wdiocGetSupport uintptr = iota + 1
	wdiocKeepalive
	wdiocSetTimeout
	wdiocGetTimeout
)

func ioctlPtr(*os.File, uintptr, unsafe.Pointer) error {
	return fmt.Errorf("watchdog devices on %s/%s: %w", runtime.GOOS, runtime.GOARCH, errors.ErrUnsupported)
}
