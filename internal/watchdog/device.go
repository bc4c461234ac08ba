package watchdog

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"syscall"
	"time"
	"unsafe"
)

// Device implements Watchdog for a Linux watchdog device such as
// /dev/watchdog: the kernel (or the hardware) reboots the machine when it is
// not fed in time. Opening the device starts it on most drivers; only the
// magic close (write "V", then close) stops it.
type Device struct {
	// Static after construction.
	path string
	log  *slog.Logger

	// Owned by the caller (not safe for concurrent use).
	f       *os.File      // nil when not armed
	timeout time.Duration // effective, whole seconds; 0 when not armed
}

// OpenDevice returns a Device for path; nothing is opened until Arm.
func OpenDevice(path string, log *slog.Logger) *Device {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Device{path: path, log: log}
}

// Arm opens the device (or, when armed, sets the new timeout), checks that
// it can set a timeout and be pinged, and sets the timeout rounded down to
// whole seconds; a timeout below 1s or a driver that sets more than was
// asked is refused. Any failure after the open magic-closes the device, so
// Armed is false after an error.
func (d *Device) Arm(timeout time.Duration) error {
	if timeout > time.Duration(1<<31-1)*time.Second {
		return d.errorf("arm", fmt.Errorf("timeout %s is too large", timeout))
	}
	secs := int32(timeout / time.Second) // round down: never longer than asked
	if secs < 1 {
		return d.errorf("arm", fmt.Errorf("timeout %s is below the device's resolution of 1s", timeout))
	}
	if d.f == nil {
		f, err := os.OpenFile(d.path, os.O_WRONLY, 0)
		if err != nil {
			return d.errorf("open", err)
		}
		var info watchdogInfo
		if err := ioctlPtr(f, wdiocGetSupport, unsafe.Pointer(&info)); err != nil {
			// ENOTTY: not a watchdog at all, so the open started nothing and
			// writing "V" could damage an unrelated file.
			if errors.Is(err, syscall.ENOTTY) {
				f.Close()
			} else {
				d.magicClose(f)
			}
			return d.errorf("WDIOC_GETSUPPORT", err)
		}
		const need = wdiofSetTimeout | wdiofKeepalivePing
		if info.Options&need != need {
			d.magicClose(f)
			return d.errorf("WDIOC_GETSUPPORT", fmt.Errorf("driver %q (options %#x) cannot set a timeout and be pinged (needs WDIOF_SETTIMEOUT and WDIOF_KEEPALIVEPING)",
				cString(info.Identity[:]), info.Options))
		}
		if info.Options&wdiofMagicClose == 0 {
			d.log.Warn("watchdog driver has no magic close: disarming may not stop it", "device", d.path, "identity", cString(info.Identity[:]))
		}
		d.f = f
	}
	eff, err := d.setTimeout(secs)
	if err != nil {
		d.magicClose(d.f)
		d.f, d.timeout = nil, 0
		return err
	}
	d.timeout = time.Duration(eff) * time.Second
	d.log.Info("watchdog armed", "device", d.path, "timeout", d.timeout, "asked", timeout)
	return nil
}

// setTimeout sets secs and returns what the driver set, refusing more than
// secs; it also pings so the deadline starts now.
func (d *Device) setTimeout(secs int32) (int32, error) {
	v := secs
	if err := ioctlPtr(d.f, wdiocSetTimeout, unsafe.Pointer(&v)); err != nil {
		return 0, d.errorf("WDIOC_SETTIMEOUT", err)
	}
	if v <= 0 { // a driver that does not write the value back
		if err := ioctlPtr(d.f, wdiocGetTimeout, unsafe.Pointer(&v)); err != nil {
			return 0, d.errorf("WDIOC_GETTIMEOUT", err)
		}
	}
	if v > secs {
		return 0, d.errorf("WDIOC_SETTIMEOUT", fmt.Errorf("driver set %ds, more than the %ds asked", v, secs))
	}
	if v < 1 {
		return 0, d.errorf("WDIOC_SETTIMEOUT", fmt.Errorf("driver reports a timeout of %ds", v))
	}
	if err := d.keepalive(); err != nil {
		return 0, err
	}
	return v, nil
}

func (d *Device) keepalive() error {
	var dummy int32
	if err := ioctlPtr(d.f, wdiocKeepalive, unsafe.Pointer(&dummy)); err != nil {
		return d.errorf("WDIOC_KEEPALIVE", err)
	}
	return nil
}

// Feed pings the device.
func (d *Device) Feed() error {
	if d.f == nil {
		return d.errorf("feed", ErrNotArmed)
	}
	return d.keepalive()
}

// Disarm writes the magic character "V" and closes the device; a no-op
// when not armed.
func (d *Device) Disarm() error {
	if d.f == nil {
		return nil
	}
	f := d.f
	d.f, d.timeout = nil, 0
	if _, err := f.Write([]byte("V")); err != nil {
		f.Close()
		return d.errorf("magic close", err)
	}
	if err := f.Close(); err != nil {
		return d.errorf("close", err)
	}
	d.log.Info("watchdog disarmed", "device", d.path)
	return nil
}

// Armed reports whether the device is open.
func (d *Device) Armed() bool { return d.f != nil }

// Timeout is the timeout the driver set; 0 when not armed.
func (d *Device) Timeout() time.Duration { return d.timeout }

// magicClose stops a device opened by a failed Arm, best effort.
func (d *Device) magicClose(f *os.File) {
	if _, err := f.Write([]byte("V")); err != nil {
		d.log.Error("watchdog: magic close after a failed arm", "device", d.path, "err", err)
	}
	f.Close()
}

// errorf names the device and the step: "watchdog /dev/watchdog: open: no
// such file or directory".
func (d *Device) errorf(step string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("watchdog %s: %s: %w", d.path, step, err)
}

func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
