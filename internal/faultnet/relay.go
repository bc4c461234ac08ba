package faultnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Limits. Every wait of the relay is bounded by one of these or ends at
// Close.
const (
	// dialTimeout bounds a dial to the target on loopback.
	dialTimeout = 2 * time.Second
	// chunkSize is the buffer of each direction of a link: the relay holds
	// at most this many bytes of a direction at a time.
	chunkSize = 32 << 10
	// acceptBackoffMin and acceptBackoffMax bound the pause after a failed
	// Accept (too many open files), doubled at each failure in a row.
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// Relay listens on 127.0.0.1 and forwards every connection to a target on
// loopback, until it is cut. Its methods are safe for concurrent use.
//
// Each accepted connection becomes a link: the client's connection and
// the relay's own connection to the target, dialed at accept, with one
// goroutine copying each direction a chunk at a time. When either side
// ends its connection, or a write fails, the link is closed as a whole: a
// half-close is not passed on.
//
// During a cut, every link is held: its copiers go on reading, so that
// neither peer's writes block or fail, but they discard what they read
// instead of passing it on, and a peer that closes its connection is not
// told to the other side. Discarding, rather than holding bytes back, keeps
// the relay's memory bounded however long the cut lasts, and loses what a
// partition loses. A chunk that was already being written when Cut was
// called may still arrive, as a packet already on the wire would. A
// connection accepted during a cut is held from the start and never
// forwarded: the target is not dialed. Restore closes every held link.
type Relay struct {
	// Static after Start.
	target string
	log    *slog.Logger
	ln     net.Listener
	ctx    context.Context // cancelled by Close; bounds dials and accept backoff
	cancel context.CancelFunc

	wg        sync.WaitGroup // the accept loop and every link's goroutines
	discarded atomic.Int64   // bytes read from held links and dropped since the last Restore

	// Guarded by mu.
	mu     sync.Mutex
	cut    bool
	closed bool
	links  map[*link]struct{} // open links; nil once closed
}

// link is one relayed connection.
type link struct {
	client net.Conn      // static
	done   chan struct{} // closed by close

	// held is set by Cut, or at accept during a cut, and never cleared: a
	// held link lives until Restore or Close closes it.
	held atomic.Bool

	mu     sync.Mutex
	target net.Conn // guarded by mu; nil until dialed, and for a link never forwarded
	closed bool     // guarded by mu
}

// attach sets the link's connection to the target; false means the link
// was closed meanwhile, and t is the caller's to close.
func (l *link) attach(t net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.target = t
	return true
}

// close closes both of the link's connections. Its copiers then fail and
// return.
func (l *link) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.closed = true
	close(l.done)
	l.client.Close()
	if l.target != nil {
		l.target.Close()
	}
}

// Start listens on 127.0.0.1:0 and forwards every connection to target, a
// host:port whose host is a loopback IP address or "localhost". A nil log
// discards the relay's messages.
func Start(target string, log *slog.Logger) (*Relay, error) {
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		return nil, fmt.Errorf("faultnet: target %q: %w", target, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("faultnet: target %q: not a loopback address", target)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultnet: listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Relay{
		target: target,
		log:    log,
		ln:     ln,
		ctx:    ctx,
		cancel: cancel,
		links:  make(map[*link]struct{}),
	}
	r.wg.Go(r.acceptLoop)
	return r, nil
}

// Addr returns the address the relay listens on, 127.0.0.1:port.
func (r *Relay) Addr() string { return r.ln.Addr().String() }

// Cut partitions the link: existing connections stop passing bytes, in
// both directions, without being closed, so their peers see timeouts
// rather than resets; new connections are accepted but never forwarded.
// Cutting a cut or closed relay does nothing.
func (r *Relay) Cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || r.cut {
		return
	}
	r.cut = true
	for l := range r.links {
		l.held.Store(true)
	}
	r.log.Info("faultnet: cut", "relay", r.Addr(), "target", r.target, "held", len(r.links))
}

// Restore ends a cut: it closes every connection held during it, so that
// clients reconnect, and forwards new connections again. Restoring a relay
// that is not cut does nothing.
func (r *Relay) Restore() {
	r.mu.Lock()
	if r.closed || !r.cut {
		r.mu.Unlock()
		return
	}
	r.cut = false
	var held []*link
	for l := range r.links {
		if l.held.Load() {
			held = append(held, l)
			delete(r.links, l)
		}
	}
	r.mu.Unlock()
	for _, l := range held {
		l.close()
	}
	r.log.Info("faultnet: restored", "relay", r.Addr(), "target", r.target,
		"closed", len(held), "discarded_bytes", r.discarded.Swap(0))
}

// Close stops listening, closes every connection and returns once all of
// the relay's goroutines have. Later calls return nil.
func (r *Relay) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	links := r.links
	r.links = nil
	r.mu.Unlock()

	r.cancel()
	err := r.ln.Close()
	for l := range links {
		l.close()
	}
	r.wg.Wait()
	if err != nil {
		return fmt.Errorf("faultnet: close: %w", err)
	}
	return nil
}

func (r *Relay) acceptLoop() {
	backoff := time.Duration(0)
	for {
		c, err := r.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || r.ctx.Err() != nil {
				return
			}
			backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
			r.log.Warn("faultnet: accept", "relay", r.Addr(), "err", err, "retry_in", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-r.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		backoff = 0
		l := r.track(c)
		if l == nil {
			c.Close()
			return // closing
		}
		r.wg.Go(func() { r.serve(l) })
	}
}

// track registers a link for c, held when the relay is cut; nil means the
// relay is closing.
func (r *Relay) track(c net.Conn) *link {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	l := &link{client: c, done: make(chan struct{})}
	l.held.Store(r.cut)
	r.links[l] = struct{}{}
	return l
}

// forget closes l and removes it from the relay. A held link is left to
// Restore or Close, so that the end of one side does not reach the other
// across the cut.
func (r *Relay) forget(l *link) {
	if l.held.Load() {
		<-l.done
	}
	l.close()
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.links, l) // no-op when Restore or Close took it already
}

// serve owns l from accept to end: it dials the target, runs both
// copiers, and forgets l once both have returned.
func (r *Relay) serve(l *link) {
	defer r.forget(l)
	if l.held.Load() {
		// Cut before it was forwarded: never forward it. Read and discard
		// until the client leaves or Restore or Close closes it.
		copier{relay: r, l: l, src: l.client}.run()
		return
	}
	d := net.Dialer{Timeout: dialTimeout}
	t, err := d.DialContext(r.ctx, "tcp", r.target)
	if err != nil {
		if r.ctx.Err() == nil {
			r.log.Warn("faultnet: dial target", "relay", r.Addr(), "target", r.target, "err", err)
		}
		return
	}
	if !l.attach(t) {
		t.Close()
		return
	}
	toTarget := copier{relay: r, l: l, src: l.client, dst: t}
	toClient := copier{relay: r, l: l, src: t, dst: l.client}
	done := make(chan struct{})
	r.wg.Go(func() {
		defer close(done)
		toTarget.run()
	})
	toClient.run()
	<-done
}

// copier copies one direction of a link, a chunk at a time, and checks
// before writing each chunk whether the link is held.
type copier struct {
	relay    *Relay
	l        *link
	src, dst net.Conn // dst is nil for a link never forwarded
}

// run copies until src or dst fails. A failure of either side ends the
// link, unless the link is held: see forget.
func (c copier) run() {
	buf := make([]byte, chunkSize)
	for {
		n, err := c.src.Read(buf)
		if n > 0 {
			if c.dst == nil || c.l.held.Load() {
				c.relay.discarded.Add(int64(n))
			} else if _, werr := c.dst.Write(buf[:n]); werr != nil {
				if !c.l.held.Load() {
					c.l.close()
				}
				return
			}
		}
		if err != nil {
			if !c.l.held.Load() {
				c.l.close()
			}
			return
		}
	}
}
