package proxy

// Cancel keys and CancelRequests.
//
// In passthrough the client gets the server's own BackendKeyData and a
// CancelRequest carrying it goes to the backend that issued it (a real
// PostgreSQL pid is below 2^22, so such a key has owner 0).
//
// When the proxy authenticates clients itself, the client gets a key the
// proxy issues: pid = cancelID<<22 | seq (seq counts in 22 bits and wraps,
// skipping keys still in use), secret = 32 random bits. The key maps to the
// session's cancelTarget, which the session points at the server
// connection it uses at the moment; a CancelRequest with the key is sent
// there carrying that server's own pid and secret, or dropped (and counted)
// when the session has none. A key whose owner (pid>>22) is another
// proxy's cancel ID is passed, as the raw packet, to that proxy's listener
// (Config.ForeignCancel); a key carrying the proxy's own ID never leaves
// it, so two proxies cannot bounce a request between them.
//
// The cancel ID may change while the proxy runs (SetCancelID: the registry
// found the one it started with taken). Keys already issued stay in the
// map under their pid and keep working here; only new keys carry the new
// ID.

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/router"
	"github.com/pharos-ha/pharos/wire"
)

const (
	// cancelSeqBits is how many low bits of a proxy-issued pid count keys.
	cancelSeqBits = 22
	cancelSeqMask = 1<<cancelSeqBits - 1
	// MaxCancelID is the largest cancel ID: 511<<22 | seq still fits a
	// positive int32, which is what clients take a pid for.
	MaxCancelID = 511
)

// CancelOwner returns the cancel ID of the proxy that issued a key with
// this pid, or 0 for a PostgreSQL server's own key.
func CancelOwner(pid uint32) uint16 { return uint16(pid >> cancelSeqBits) }

// cancelTarget is where a session's CancelRequests go: the server
// connection the session uses now. The session sets it when it attaches a
// server connection and clears it when it lets go of one; CancelRequests
// read it from other goroutines. The zero value has no connection.
type cancelTarget struct {
	// interrupt, for an admin console's key, takes its CancelRequests
	// instead of a server; set before the key is issued.
	interrupt chan struct{}

	mu   sync.Mutex
	addr string // the server's address; "" while there is no connection
	pid  uint32 // the server's own key
	key  []byte
}

// set points the target at a server connection at addr whose
// BackendKeyData said pid and key (copied).
func (t *cancelTarget) set(addr string, pid uint32, key []byte) {
	t.mu.Lock()
	t.addr, t.pid = addr, pid
	t.key = append(t.key[:0], key...)
	t.mu.Unlock()
}

// clear says the session has no server connection.
func (t *cancelTarget) clear() {
	t.mu.Lock()
	t.addr = ""
	t.mu.Unlock()
}

// request returns the server's address and the CancelRequest that carries
// its key, or "" when the session has no server connection.
func (t *cancelTarget) request() (addr string, pkt []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.addr == "" {
		return "", nil
	}
	return t.addr, wire.AppendCancelRequest(nil, t.pid, t.key)
}

// sessionCancel is a session's cancel key and where it leads, owned by the session's run
// (target excepted, see cancelTarget).
type sessionCancel struct {
	target    cancelTarget
	ownPID    uint32 // the key the proxy issued; 0 when none
	ownSecret [4]byte
	serverKey string // passthrough: the server's pid+key bytes, as registered; "" when none
}

// ownCancel is a proxy-issued key's entry.
type ownCancel struct {
	secret [4]byte
	target *cancelTarget
}

// cancelKeys are the server's keys, guarded by Server.mu.
type cancelKeys struct {
	seq    uint32
	own    map[uint32]ownCancel     // proxy-issued, by pid
	server map[string]*cancelTarget // passthrough: by the server's pid+key bytes
}

// pickCancelID returns a random cancel ID for a proxy configured with 0.
func pickCancelID() uint16 {
	var b [2]byte
	_, _ = rand.Read(b[:])
	return uint16(binary.BigEndian.Uint16(b[:])%MaxCancelID) + 1
}

// CancelID is the ID the keys the proxy issues now carry.
func (s *Server) CancelID() uint16 { return uint16(s.cancelID.Load()) }

// SetCancelID makes keys issued from now on carry id; keys already issued
// keep working on this proxy.
func (s *Server) SetCancelID(id uint16) error {
	if id < 1 || id > MaxCancelID {
		return fmt.Errorf("cancel id %d is not in 1..%d", id, MaxCancelID)
	}
	if old := s.cancelID.Swap(uint32(id)); old != uint32(id) {
		s.log.Info("cancel ID changed", "from", old, "to", id)
	}
	return nil
}

// issueCancelKey registers t under a new proxy-issued key and returns it.
func (s *Server) issueCancelKey(t *cancelTarget) (pid uint32, secret [4]byte) {
	_, _ = rand.Read(secret[:])
	high := s.cancelID.Load() << cancelSeqBits
	s.mu.Lock()
	defer s.mu.Unlock()
	// Bounded: at most len(own) of the 2^22 values are taken.
	for {
		pid = high | s.keys.seq
		s.keys.seq = (s.keys.seq + 1) & cancelSeqMask
		if _, taken := s.keys.own[pid]; !taken {
			break
		}
	}
	s.keys.own[pid] = ownCancel{secret: secret, target: t}
	return pid, secret
}

// backendKeyData handles the server's BackendKeyData during a session's
// startup and returns the message the client must get: the proxy's own
// key when it authenticated the client, else the server's (msg itself).
func (sess *session) backendKeyData(msg []byte) []byte {
	pid, key, err := wire.ParseBackendKeyData(msg)
	if err != nil {
		// Relayed as it is: the client judges it as it would the server.
		return msg
	}
	s := sess.srv
	c := &sess.cancelKey
	c.target.set(sess.route.Backend.Addr, pid, key)
	if s.cfg.AuthType == AuthPassthrough {
		c.serverKey = string(msg[wire.HeaderLen:])
		s.mu.Lock()
		s.keys.server[c.serverKey] = &c.target
		s.mu.Unlock()
		return msg
	}
	if c.ownPID == 0 {
		c.ownPID, c.ownSecret = s.issueCancelKey(&c.target)
	}
	return wire.AppendBackendKeyData(nil, c.ownPID, c.ownSecret[:])
}

// dropCancel forgets the session's keys; run calls it at the end.
func (s *Server) dropCancel(c *sessionCancel) {
	if c.ownPID == 0 && c.serverKey == "" {
		return
	}
	s.mu.Lock()
	if c.ownPID != 0 {
		delete(s.keys.own, c.ownPID)
	}
	if c.serverKey != "" {
		delete(s.keys.server, c.serverKey)
	}
	s.mu.Unlock()
	c.target.clear()
}

// lookupCancel finds the target of a key this proxy issued or relayed.
func (s *Server) lookupCancel(pid uint32, key []byte) (*cancelTarget, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.keys.own[pid]; ok {
		if subtle.ConstantTimeCompare(e.secret[:], key) == 1 {
			return e.target, true
		}
		return nil, false
	}
	var buf [4 + 256]byte
	k := binary.BigEndian.AppendUint32(buf[:0], pid)
	k = append(k, key...)
	t, ok := s.keys.server[string(k)]
	return t, ok
}

// handleCancel passes a CancelRequest on: to the server connection of the
// session whose key it carries, whichever endpoint it arrived on, or to
// the proxy that issued the key. It waits until the far side has taken it
// (closed the connection) so the client's wait means what it does against
// PostgreSQL itself.
func (sess *session) handleCancel(pkt wire.StartupPacket) {
	s := sess.srv
	if t, ok := s.lookupCancel(pkt.CancelPID, pkt.CancelKey); ok {
		if t.interrupt != nil {
			select {
			case t.interrupt <- struct{}{}:
			default:
			}
			s.metrics.Cancels.WithLabelValues(metrics.CancelConsole).Inc()
			return
		}
		addr, req := t.request()
		if addr == "" {
			s.metrics.Cancels.WithLabelValues(metrics.CancelNoServer).Inc()
			return
		}
		s.sendCancel(sess.ep, addr, req, true, metrics.CancelForwarded)
		return
	}
	owner := CancelOwner(pkt.CancelPID)
	if owner != 0 && owner != s.CancelID() && s.cfg.ForeignCancel != nil {
		if addr, ok := s.cfg.ForeignCancel(owner); ok {
			s.sendCancel(sess.ep, addr, pkt.Raw, false, metrics.CancelToProxy)
			return
		}
	}
	s.metrics.Cancels.WithLabelValues(metrics.CancelUnknown).Inc()
}

// sendCancel writes req to addr (a backend, with backend TLS when
// configured, or another proxy's listener in plain TCP, which takes
// CancelRequests whatever its tls_mode) and waits for the close.
func (s *Server) sendCancel(ep router.Endpoint, addr string, req []byte, backend bool, result string) {
	var (
		conn net.Conn
		err  error
	)
	if backend {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ConnectTimeout)
		conn, err = s.dialBackend(ctx, ep, addr)
		cancel()
	} else {
		conn, err = net.DialTimeout("tcp", addr, s.cfg.ConnectTimeout)
	}
	if err != nil {
		s.metrics.Cancels.WithLabelValues(metrics.CancelFailed).Inc()
		s.log.Warn("cancel forward failed", "to", addr, "proxy", !backend, "err", err)
		return
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(s.cfg.ConnectTimeout))
	if _, err := conn.Write(req); err != nil {
		s.metrics.Cancels.WithLabelValues(metrics.CancelFailed).Inc()
		return
	}
	_, _ = io.Copy(io.Discard, conn)
	s.metrics.Cancels.WithLabelValues(result).Inc()
}
