package etcdlocal

import (
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// gateDialTimeout bounds the gate's dial to etcd on loopback.
const gateDialTimeout = 2 * time.Second

// gate is the TCP front door of a member's client or peer port: it listens
// on the member's advertised address and forwards each connection to the
// address etcd itself listens on.
//
// It exists so that stopping a member looks to clients and peers like the
// death of an etcd process: closing the gate resets every connection at once
// and refuses new ones. Without it, embed.Etcd.Close stops gRPC gracefully
// and lets open streams (watches, lease keep-alives) run on for etcd's
// request timeout, about 7 s, while the server still answers them; and a
// connection between two members can outlive both, with its goroutines,
// until a read timeout of 5 s.
type gate struct {
	// Static after construction.
	addr   string // where clients connect
	target string // where etcd listens

	ln net.Listener // owned by the gate between open and close

	mu    sync.Mutex
	conns map[net.Conn]struct{} // guarded by mu; both sides of every forwarded connection
	wg    sync.WaitGroup        // the accept loop and every copier
}

// openGate listens on addr and starts forwarding to target.
func openGate(addr, target string) (*gate, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	g := &gate{addr: addr, target: target, ln: ln, conns: make(map[net.Conn]struct{})}
	g.wg.Go(g.acceptLoop)
	return g, nil
}

func (g *gate) acceptLoop() {
	for {
		c, err := g.ln.Accept()
		if err != nil {
			return // closed
		}
		g.wg.Go(func() { g.forward(c) })
	}
}

// forward connects c to the target and copies both ways until either side
// ends, then closes both. A half-close is not passed on: gRPC over HTTP/2
// never half-closes, and an ended side means the connection is over.
func (g *gate) forward(c net.Conn) {
	if !g.track(c) {
		c.Close()
		return
	}
	defer g.untrack(c)
	t, err := net.DialTimeout("tcp", g.target, gateDialTimeout)
	if err != nil {
		return
	}
	if !g.track(t) {
		t.Close()
		return
	}
	defer g.untrack(t)

	done := make(chan struct{}, 2)
	g.wg.Go(func() { io.Copy(t, c); done <- struct{}{} })
	g.wg.Go(func() { io.Copy(c, t); done <- struct{}{} })
	<-done
	c.Close()
	t.Close()
	<-done
}

// track registers c so close can cut it; false means the gate is closing.
func (g *gate) track(c net.Conn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.conns == nil {
		return false
	}
	g.conns[c] = struct{}{}
	return true
}

func (g *gate) untrack(c net.Conn) {
	c.Close()
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.conns, c)
}

// close stops accepting, resets every forwarded connection and waits until
// all of the gate's goroutines have returned.
func (g *gate) close() {
	g.ln.Close()
	g.mu.Lock()
	conns := g.conns
	g.conns = nil
	g.mu.Unlock()
	for c := range conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0) // reset, as a dying process's connections are
		}
		c.Close()
	}
	g.wg.Wait()
}
