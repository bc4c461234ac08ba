package proxy

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingPool counts the buffers lent and not yet returned.
type countingPool struct {
	sync.Pool
	out atomic.Int64
}

func (p *countingPool) Get() any  { p.out.Add(1); return p.Pool.Get() }
func (p *countingPool) Put(b any) { p.out.Add(-1); p.Pool.Put(b) }

// TestIdlePumpsHoldNoBuffer: sessions that wait for data give their relay
// buffer back, so idle sessions hold none. Fifty pumps each get a message
// in turn; afterwards, with all of them waiting, no buffer is out.
func TestIdlePumpsHoldNoBuffer(t *testing.T) {
	buffers := &countingPool{Pool: sync.Pool{New: func() any {
		b := make([]byte, 4096)
		return &b
	}}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	const sessions = 50
	got := make(chan int, sessions)
	var pumps sync.WaitGroup
	var clients []net.Conn
	defer func() {
		for _, c := range clients {
			c.Close()
		}
		pumps.Wait()
	}()
	for range sessions {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		server, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		pumps.Go(func() {
			defer server.Close()
			_ = pump(server, buffers, func(p []byte) bool { got <- len(p); return true })
		})
	}
	for i, c := range clients {
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		select {
		case n := <-got:
			if n != 4 {
				t.Fatalf("session %d: got %d bytes, want 4", i, n)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("session %d: no data relayed", i)
		}
	}
	// Every pump has relayed its message and waits for the next one; the
	// last may still be on its way back to waiting.
	deadline := time.Now().Add(5 * time.Second)
	for buffers.out.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d buffers still lent out with all %d sessions idle", buffers.out.Load(), sessions)
		}
		time.Sleep(time.Millisecond)
	}
}
