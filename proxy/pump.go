package proxy

import (
	"errors"
	"io"
	"net"
	"syscall"
	"unsafe"
)

// bufferPool lends relay buffers (*[]byte); *sync.Pool is one.
type bufferPool interface {
	Get() any
	Put(any)
}

// pump reads src until it fails or handle returns false, passing every
// chunk to handle, and returns the read error (nil when handle stopped it).
// handle must be done with the chunk when it returns.
//
// On a plain TCP socket it reads through the raw descriptor until a read
// says EAGAIN, and only then waits for readiness. A read that did not fill
// the buffer must not be taken for a drained socket: the poller is
// edge-triggered, and when the peer's last bytes and its close arrive
// together they raise one edge, so the close would only be seen by the
// next read, and a wait would never end (a client that sends a message the
// server does not answer, then closes, kept its session and its server
// connection). Staying inside one RawConn.Read call matters too: each new
// call resets the descriptor's readiness, which would lose an edge that
// arrived in between, while the loop inside keeps it.
//
// The buffer comes from buffers only while there is something to read and
// goes back before waiting, so an idle session holds no relay buffer.
func pump(src net.Conn, buffers bufferPool, handle func([]byte) bool) error {
	tc, ok := src.(*net.TCPConn)
	if !ok {
		return pumpConn(src, buffers, handle)
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return pumpConn(src, buffers, handle)
	}
	var readErr error
	err = rc.Read(func(fd uintptr) bool {
		bp := buffers.Get().(*[]byte)
		defer buffers.Put(bp)
		buf := *bp
		for {
			n, errno := rawRead(fd, buf)
			switch {
			case errno == syscall.EINTR:
				continue
			case errno == syscall.EAGAIN:
				return false
			case errno != 0:
				readErr = errno
				return true
			case n == 0:
				readErr = io.EOF
				return true
			}
			if !handle(buf[:n]) {
				return true
			}
		}
	})
	if err != nil {
		// Deadline (end woke us) or the connection was closed.
		return err
	}
	return readErr
}

// pumpConn is pump for connections without a raw descriptor (TLS), which
// must hold their buffer while they wait in Read.
func pumpConn(src net.Conn, buffers bufferPool, handle func([]byte) bool) error {
	bp := buffers.Get().(*[]byte)
	defer buffers.Put(bp)
	buf := *bp
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

// rawRead and rawWrite are read(2) and write(2) on a non-blocking socket
// without the runtime's syscall bookkeeping: they cannot block, so there is
// no point letting the scheduler hand this goroutine's P to another thread
// while they run, which on a busy loopback is what makes a relay pay for
// thread wake-ups on every message.
func rawRead(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, errno := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(n), errno
}

func rawWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(n), errno
}

// socketWriter writes to a plain TCP socket with rawWrite, waiting through
// the runtime's poller only when the socket buffer is full. It honours the
// connection's write deadline while it waits.
type socketWriter struct {
	rc      syscall.RawConn
	pending []byte
	err     error
	write   func(fd uintptr) bool // w.writeFD, bound once
}

// newWriter returns a socketWriter for a plain TCP connection and c itself
// for anything else (TLS).
func newWriter(c net.Conn) io.Writer {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	w := &socketWriter{rc: rc}
	w.write = w.writeFD
	return w
}

func (w *socketWriter) Write(p []byte) (int, error) {
	w.pending, w.err = p, nil
	err := w.rc.Write(w.write)
	n := len(p) - len(w.pending)
	w.pending = nil
	if err != nil {
		return n, err
	}
	if w.err != nil {
		return n, w.err
	}
	return n, nil
}

func (w *socketWriter) writeFD(fd uintptr) bool {
	for len(w.pending) > 0 {
		n, errno := rawWrite(fd, w.pending)
		switch errno {
		case 0:
			w.pending = w.pending[n:]
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			w.err = errno
			return true
		}
	}
	return true
}
