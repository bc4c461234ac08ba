package proxy

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/router"
	"github.com/pharos-ha/pharos/wire"
)

func newCancelTestServer(t *testing.T, id uint16) *Server {
	t.Helper()
	af := filepath.Join(t.TempDir(), "userlist.txt")
	if err := os.WriteFile(af, []byte(`"u" "md5d5bd6e8a1f2f4f2b1f0a1b2c3d4e5f60"`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m := metrics.NewProxy(prometheus.NewRegistry())
	s, err := New(Config{RWListen: "127.0.0.1:0", AuthType: AuthTrust, AuthFile: af, CancelID: id}, router.New(router.Config{}, nil, m), nil, m)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// cancelPacket parses a CancelRequest as the session would get it.
func cancelPacket(t *testing.T, pid uint32, key []byte) wire.StartupPacket {
	t.Helper()
	raw := wire.AppendCancelRequest(nil, pid, key)
	pkt, err := wire.ParseStartupPacket(raw)
	if err != nil {
		t.Fatal(err)
	}
	return pkt
}

// TestCancelKeySequence: keys carry the cancel ID, their sequence wraps in
// 22 bits and skips keys still in use, and keys issued before SetCancelID
// still lead to their sessions afterwards.
func TestCancelKeySequence(t *testing.T) {
	s := newCancelTestServer(t, 3)
	var a, b cancelTarget
	s.keys.seq = cancelSeqMask
	pidA, secA := s.issueCancelKey(&a)
	if pidA != 3<<22|cancelSeqMask || CancelOwner(pidA) != 3 {
		t.Fatalf("pid %#x, want %#x", pidA, 3<<22|cancelSeqMask)
	}
	if s.keys.seq != 0 {
		t.Fatalf("sequence %d after its last value, want 0", s.keys.seq)
	}
	// Every value but pidA's is taken: the next key must be pidA's
	// neighbour after wrapping, not a duplicate.
	s.keys.own[3<<22|0] = ownCancel{target: &b}
	s.keys.own[3<<22|1] = ownCancel{target: &b}
	pidB, _ := s.issueCancelKey(&b)
	if pidB != 3<<22|2 {
		t.Fatalf("pid %#x, want the first free one %#x", pidB, 3<<22|2)
	}
	if err := s.SetCancelID(400); err != nil {
		t.Fatal(err)
	}
	if err := s.SetCancelID(MaxCancelID + 1); err == nil || s.CancelID() != 400 {
		t.Fatalf("SetCancelID(%d): %v, id now %d", MaxCancelID+1, err, s.CancelID())
	}
	pidC, _ := s.issueCancelKey(&b)
	if CancelOwner(pidC) != 400 {
		t.Fatalf("key issued after the change has owner %d, want 400", CancelOwner(pidC))
	}
	if got, ok := s.lookupCancel(pidA, secA[:]); !ok || got != &a {
		t.Fatal("a key issued before the change no longer leads to its session")
	}
	wrong := secA
	wrong[0] ^= 0x80
	if _, ok := s.lookupCancel(pidA, wrong[:]); ok {
		t.Fatal("a wrong secret was accepted")
	}
	if _, ok := s.lookupCancel(pidA, append(secA[:], 0)); ok {
		t.Fatal("the secret with a byte more was accepted")
	}
}

// TestCancelWithoutServerConnection: a key whose session has no server
// connection at the moment is dropped and counted, without a dial; once
// the session dropped its key, the key is unknown.
func TestCancelWithoutServerConnection(t *testing.T) {
	s := newCancelTestServer(t, 0)
	if id := s.CancelID(); id < 1 || id > MaxCancelID {
		t.Fatalf("random cancel ID %d out of range", id)
	}
	sess := &session{srv: s, ep: router.RW}
	c := &sess.cancelKey
	c.ownPID, c.ownSecret = s.issueCancelKey(&c.target)
	c.target.set("127.0.0.1:1", 42, []byte{9, 9, 9, 9})
	c.target.clear()
	sess.handleCancel(cancelPacket(t, c.ownPID, c.ownSecret[:]))
	if got := testutil.ToFloat64(s.metrics.Cancels.WithLabelValues(metrics.CancelNoServer)); got != 1 {
		t.Fatalf("no_server %v, want 1", got)
	}
	s.dropCancel(c)
	sess.handleCancel(cancelPacket(t, c.ownPID, c.ownSecret[:]))
	if got := testutil.ToFloat64(s.metrics.Cancels.WithLabelValues(metrics.CancelUnknown)); got != 1 {
		t.Fatalf("unknown %v after the session left, want 1", got)
	}
	if len(s.keys.own) != 0 {
		t.Fatalf("%d keys left", len(s.keys.own))
	}
}

// TestCancelRequestCarriesServerKey: the request sent on is the server's
// key, not the client's.
func TestCancelRequestCarriesServerKey(t *testing.T) {
	var tg cancelTarget
	tg.set("10.0.0.1:5432", 4242, []byte{1, 2, 3, 4, 5, 6, 7, 8})
	addr, req := tg.request()
	want := wire.AppendCancelRequest(nil, 4242, []byte{1, 2, 3, 4, 5, 6, 7, 8})
	if addr != "10.0.0.1:5432" || string(req) != string(want) {
		t.Fatalf("request to %s: %x, want %x", addr, req, want)
	}
}

// TestCancelToUnreachableProxy: a key of another proxy whose listener
// refuses the connection is counted failed, not passed on.
func TestCancelToUnreachableProxy(t *testing.T) {
	s := newCancelTestServer(t, 5)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	s.cfg.ForeignCancel = func(owner uint16) (string, bool) { return dead, owner == 9 }
	sess := &session{srv: s, ep: router.RW}
	sess.handleCancel(cancelPacket(t, 9<<cancelSeqBits|1, []byte{1, 2, 3, 4}))
	failed := testutil.ToFloat64(s.metrics.Cancels.WithLabelValues(metrics.CancelFailed))
	passed := testutil.ToFloat64(s.metrics.Cancels.WithLabelValues(metrics.CancelToProxy))
	if failed != 1 || passed != 0 {
		t.Fatalf("failed %v, to_proxy %v; want 1 and 0", failed, passed)
	}
}
