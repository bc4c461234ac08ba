package faultnet_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pharos-ha/pharos/internal/faultnet"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Waits of these tests. A read that must time out waits silenceWait; one
// that must succeed or end waits up to passWait.
const (
	silenceWait = 300 * time.Millisecond
	passWait    = 5 * time.Second
)

// backend is a TCP server on loopback that hands each accepted connection
// to the test, or echoes on it when echo is set. Cleanup closes it and
// every connection it accepted, and waits for its goroutines.
type backend struct {
	ln    net.Listener
	conns chan net.Conn // accepted, when not echoing

	mu       sync.Mutex
	accepted []net.Conn
	wg       sync.WaitGroup
}

func startBackend(t *testing.T, echo bool) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	b := &backend{ln: ln, conns: make(chan net.Conn, 16)}
	b.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.accepted = append(b.accepted, c)
			b.mu.Unlock()
			if !echo {
				b.conns <- c
				continue
			}
			b.wg.Go(func() { io.Copy(c, c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for _, c := range b.accepted {
			c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

func (b *backend) addr() string { return b.ln.Addr().String() }

// next returns the next connection the backend accepted.
func (b *backend) next(t *testing.T) net.Conn {
	t.Helper()
	select {
	case c := <-b.conns:
		return c
	case <-time.After(passWait):
		t.Fatal("backend accepted no connection")
		return nil
	}
}

func startRelay(t *testing.T, target string) *faultnet.Relay {
	t.Helper()
	r, err := faultnet.Start(target, slog.New(slog.NewTextHandler(t.Output(), nil)))
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return r
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, passWait)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// link opens a connection through r to be and returns both of its ends,
// once msg has crossed from the client to the server.
func link(t *testing.T, r *faultnet.Relay, be *backend, msg string) (client, server net.Conn) {
	t.Helper()
	client = dial(t, r.Addr())
	write(t, client, msg)
	server = be.next(t)
	expectRead(t, server, msg)
	return client, server
}

func write(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetWriteDeadline(time.Now().Add(passWait))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
}

// expectRead reads exactly msg from c.
func expectRead(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(passWait))
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read %q: %v", msg, err)
	}
	if string(buf) != msg {
		t.Fatalf("read %q, want %q", buf, msg)
	}
}

// expectEcho writes msg on c and reads it back.
func expectEcho(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	write(t, c, msg)
	expectRead(t, c, msg)
}

// expectSilence reads from c for silenceWait and wants a timeout: no byte,
// no end of stream, no reset.
func expectSilence(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(silenceWait))
	var buf [64]byte
	n, err := c.Read(buf[:])
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read during the cut = %q, %v; want a timeout", buf[:n], err)
	}
}

// expectEOF wants c to be closed by its peer.
func expectEOF(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(passWait))
	var buf [64]byte
	n, err := c.Read(buf[:])
	if err != io.EOF {
		t.Fatalf("read = %q, %v; want EOF", buf[:n], err)
	}
}

func TestStartTarget(t *testing.T) {
	for _, tt := range []struct {
		target string
		ok     bool
	}{
		{"127.0.0.1:5432", true},
		{"127.0.0.2:5432", true},
		{"[::1]:5432", true},
		{"localhost:2379", true},
		{"10.0.0.1:5432", false},
		{"0.0.0.0:5432", false},
		{"example.com:80", false},
		{"127.0.0.1", false},
	} {
		t.Run(tt.target, func(t *testing.T) {
			r, err := faultnet.Start(tt.target, nil)
			if (err == nil) != tt.ok {
				t.Fatalf("Start(%q) error = %v, want ok=%v", tt.target, err, tt.ok)
			}
			if err != nil {
				return
			}
			if host, _, _ := net.SplitHostPort(r.Addr()); host != "127.0.0.1" {
				t.Errorf("Addr = %s, want one on 127.0.0.1", r.Addr())
			}
			if err := r.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
}

func TestRelayPassesBytes(t *testing.T) {
	echo := startBackend(t, true)
	r := startRelay(t, echo.addr())

	a, b := dial(t, r.Addr()), dial(t, r.Addr())
	expectEcho(t, a, "hello")
	expectEcho(t, b, "world")

	// Much more than a chunk, written while it is read back.
	payload := make([]byte, 4<<20)
	rand.Read(payload)
	errc := make(chan error, 1)
	go func() {
		a.SetWriteDeadline(time.Now().Add(passWait))
		_, err := a.Write(payload)
		errc <- err
	}()
	a.SetReadDeadline(time.Now().Add(passWait))
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(a, got); err != nil {
		t.Fatalf("read payload: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write payload: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("payload came back altered")
	}
}

func TestClientCloseEndsLink(t *testing.T) {
	be := startBackend(t, false)
	r := startRelay(t, be.addr())
	c, s := link(t, r, be, "x")
	c.Close()
	expectEOF(t, s)
}

func TestTargetDownClosesClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := ln.Addr().String()
	ln.Close() // nothing listens there now
	r := startRelay(t, target)
	c := dial(t, r.Addr())
	c.SetReadDeadline(time.Now().Add(passWait))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read = %v, want EOF", err)
	}
}

// TestCutStopsBothDirections checks a cut from both ends of one link:
// neither side receives bytes, neither learns the other went away, and
// both are closed by Restore.
func TestCutStopsBothDirections(t *testing.T) {
	be := startBackend(t, false)
	r := startRelay(t, be.addr())
	c, s := link(t, r, be, "hello")
	write(t, s, "hi")
	expectRead(t, c, "hi")
	// A second link, whose server leaves during the cut.
	c2, s2 := link(t, r, be, "x")

	r.Cut()
	write(t, s, "to client")
	write(t, c, "to server")
	expectSilence(t, c)
	expectSilence(t, s)

	// Each side leaves during the cut: the other must not learn of it.
	c.Close()
	expectSilence(t, s)
	s2.Close()
	expectSilence(t, c2)

	r.Restore()
	expectEOF(t, s)
	expectEOF(t, c2)
}

func TestCutAndRestore(t *testing.T) {
	echo := startBackend(t, true)
	r := startRelay(t, echo.addr())
	before := dial(t, r.Addr())
	expectEcho(t, before, "before")

	r.Cut()
	r.Cut() // a second Cut changes nothing
	write(t, before, "during")
	expectSilence(t, before)

	during := dial(t, r.Addr()) // accepted, never forwarded
	write(t, during, "during")
	expectSilence(t, during)

	r.Restore()
	expectEOF(t, before)
	expectEOF(t, during)
	after := dial(t, r.Addr())
	expectEcho(t, after, "after")

	r.Restore() // not cut: changes nothing
	expectEcho(t, after, "still")

	// A second cut works as the first, on the connections of its time.
	r.Cut()
	write(t, after, "again")
	expectSilence(t, after)
	r.Restore()
	expectEOF(t, after)
	expectEcho(t, dial(t, r.Addr()), "back")
}

// TestCloseLeavesNoGoroutines closes a relay with links in every state:
// forwarding, held, never forwarded, and blocked writing to a client that
// does not read.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t, goleak.IgnoreCurrent()) }) // runs last
	echo := startBackend(t, true)
	be := startBackend(t, false)

	r, err := faultnet.Start(be.addr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	// A server that writes more than a client that never reads can take:
	// the relay's copier blocks in Write.
	_, s := link(t, r, be, "x")
	pushed := make(chan struct{})
	go func() {
		defer close(pushed)
		s.SetWriteDeadline(time.Now().Add(passWait))
		s.Write(make([]byte, 64<<20)) // fails once the relay closes s's peer
	}()

	re, err := faultnet.Start(echo.addr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	held := dial(t, re.Addr())
	expectEcho(t, held, "x")
	re.Cut()
	never := dial(t, re.Addr())
	write(t, never, "x")
	write(t, held, "x")

	start := time.Now()
	if err := r.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := re.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v", d)
	}
	<-pushed
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	re.Cut() // after Close: no effect, no panic
	re.Restore()
	if c, err := net.DialTimeout("tcp", r.Addr(), time.Second); err == nil {
		c.Close()
		t.Error("relay still accepts after Close")
	}
}
