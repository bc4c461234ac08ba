package proxy

import (
	"errors"
	"io"
	"net"
	"syscall"
)

// pump reads src until it fails or handle returns false, passing every
// chunk to handle, and returns the read error (nil when handle stopped it).
//
// On a plain TCP socket it reads through the raw descriptor and, after a
// read that did not fill buf, waits for readiness instead of reading again:
// net.Conn.Read would first make a read that only says EAGAIN, and in a
// request/response relay that is one wasted syscall per message and
// direction. Staying inside one RawConn.Read call matters: each new call
// resets the descriptor's readiness, which would lose an edge that arrived
// in between, while the loop inside keeps it. A short read means the socket
// was drained, and any byte that arrives later raises a new edge.
func pump(src net.Conn, buf []byte, handle func([]byte) bool) error {
	tc, ok := src.(*net.TCPConn)
	if !ok {
		return pumpConn(src, buf, handle)
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return pumpConn(src, buf, handle)
	}
	var readErr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			n, err := syscall.Read(int(fd), buf)
			switch {
			case err == syscall.EINTR:
				continue
			case err == syscall.EAGAIN:
				return false
			case err != nil:
				readErr = err
				return true
			case n == 0:
				readErr = io.EOF
				return true
			}
			if !handle(buf[:n]) {
				return true
			}
			if n < len(buf) {
				return false
			}
		}
	})
	if err != nil {
		// Deadline (end woke us) or the connection was closed.
		return err
	}
	return readErr
}

// pumpConn is pump for connections without a raw descriptor (TLS).
func pumpConn(src net.Conn, buf []byte, handle func([]byte) bool) error {
	for {
		n, err := src.Read(buf)
		if n > 0 && !handle(buf[:n]) {
			return nil
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return io.EOF
			}
			return err
		}
	}
}
