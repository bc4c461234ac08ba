package proxy_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/proxy"
	"github.com/pharos-ha/pharos/router"
	"github.com/pharos-ha/pharos/wire"
)

// sleepOnServer runs pg_sleep(30) on conn (whose server pid is pid), calls
// during once the server shows it running, and returns the query's error.
func sleepOnServer(t *testing.T, conn *pgx.Conn, in *pglocal.Instance, pid int32, during func(cancelQuery func())) error {
	t.Helper()
	qctx, qcancel := context.WithCancel(context.Background())
	defer qcancel()
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(qctx, "SELECT pg_sleep(30)")
		done <- err
	}()
	waitActive(t, in, "pid = $1 AND query LIKE '%pg_sleep%'", pid)
	during(qcancel)
	select {
	case err := <-done:
		return err
	case <-time.After(20 * time.Second):
		qcancel()
		<-done
		t.Fatal("pg_sleep(30) not cancelled within 20s")
		return nil
	}
}

// TestProxyIssuedCancelKeys: with the proxy's own authentication the
// client's key is the proxy's (its pid carries the cancel ID and is not
// the server's), a wrong secret cancels nothing, and pgx's CancelRequest
// (a cancelled context) reaches the server connection, on either listener.
func TestProxyIssuedCancelKeys(t *testing.T) {
	p := startProxy(t, proxyOptions{
		Config: proxy.Config{AuthType: proxy.AuthSCRAM, AuthFile: writeAuthFile(t), CancelID: 77},
		Ready:  func(rw string, ro []string) bool { return rw != "" && len(ro) > 0 },
	})
	if p.CancelID() != 77 {
		t.Fatalf("cancel ID %d, want the configured 77", p.CancelID())
	}
	for _, ep := range []router.Endpoint{router.RW, router.RO} {
		t.Run(ep.String(), func(t *testing.T) {
			conn := connectConfig(t, p.DSN(ep, pglocal.UserSCRAM, ""), cancelByRequest)
			pid, key := conn.PgConn().PID(), slices.Clone(conn.PgConn().SecretKey())
			spid := int32(backendPID(t, conn))
			if proxy.CancelOwner(pid) != 77 || int32(pid) == spid || len(key) != 4 {
				t.Fatalf("client key pid %d (owner %d, %d-byte secret), server pid %d; want the proxy's key with owner 77",
					pid, proxy.CancelOwner(pid), len(key), spid)
			}
			other := router.RO
			if ep == router.RO {
				other = router.RW
			}
			unknown := counter(p.Metrics.Cancels, metrics.CancelUnknown)
			forwarded := counter(p.Metrics.Cancels, metrics.CancelForwarded)
			err := sleepOnServer(t, conn, instanceFor(ep), spid, func(cancelQuery func()) {
				wrong := slices.Clone(key)
				wrong[3] ^= 1
				sendCancel(t, p.Addr(other).String(), pid, wrong)
				// The server's pid with the proxy's secret is no key either.
				sendCancel(t, p.Addr(ep).String(), uint32(spid), key)
				waitActive(t, instanceFor(ep), "pid = $1 AND query LIKE '%pg_sleep%'", spid)
				cancelQuery()
			})
			checkCancelled(t, conn, err)
			if got := counter(p.Metrics.Cancels, metrics.CancelUnknown) - unknown; got != 2 {
				t.Errorf("%v cancel requests counted unknown, want 2", got)
			}
			if got := counter(p.Metrics.Cancels, metrics.CancelForwarded) - forwarded; got != 1 {
				t.Errorf("%v cancel requests forwarded, want 1", got)
			}
		})
	}
}

// TestPassthroughKeepsServerKey: in passthrough the client's key is the
// server's own, owner 0.
func TestPassthroughKeepsServerKey(t *testing.T) {
	p := startProxy(t, proxyOptions{})
	conn := p.connect(t, router.RW, pglocal.UserSCRAM, "")
	if pid := conn.PgConn().PID(); int(pid) != backendPID(t, conn) || proxy.CancelOwner(pid) != 0 {
		t.Fatalf("client pid %d, want the server's", pid)
	}
}

// fakeProxy accepts connections and records what each sent before it
// closed its side.
type fakeProxy struct {
	ln   net.Listener
	mu   sync.Mutex
	got  [][]byte
	done sync.WaitGroup
}

func newFakeProxy(t *testing.T) *fakeProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeProxy{ln: ln}
	f.done.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			b, _ := io.ReadAll(io.LimitReader(c, 16))
			_ = c.Close()
			f.mu.Lock()
			f.got = append(f.got, b)
			f.mu.Unlock()
		}
	})
	t.Cleanup(func() { _ = ln.Close(); f.done.Wait() })
	return f
}

func (f *fakeProxy) received() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.got)
}

// TestForeignCancelKeys: a key whose owner is another proxy's cancel ID is
// passed on as the very packet to the address ForeignCancel gives; a key
// with the proxy's own ID, an owner ForeignCancel does not know and a
// server's key (owner 0) are not, and ForeignCancel is never asked about
// the proxy's own ID.
func TestForeignCancelKeys(t *testing.T) {
	far := newFakeProxy(t)
	var (
		mu    sync.Mutex
		asked []uint16
	)
	p := startProxy(t, proxyOptions{Config: proxy.Config{
		CancelID: 5,
		ForeignCancel: func(owner uint16) (string, bool) {
			mu.Lock()
			asked = append(asked, owner)
			mu.Unlock()
			return far.ln.Addr().String(), owner == 9
		},
	}})
	addr := p.Addr(router.RO).String()
	key := []byte{1, 2, 3, 4}
	toProxy := counter(p.Metrics.Cancels, metrics.CancelToProxy)
	unknown := counter(p.Metrics.Cancels, metrics.CancelUnknown)
	sendCancel(t, addr, 9<<22|1234, key)  // another proxy's
	sendCancel(t, addr, 5<<22|1234, key)  // ours, not issued
	sendCancel(t, addr, 11<<22|1234, key) // nobody's
	sendCancel(t, addr, 1234, key)        // a server's, not ours
	want := wire.AppendCancelRequest(nil, 9<<22|1234, key)
	if got := far.received(); len(got) != 1 || !bytes.Equal(got[0], want) {
		t.Fatalf("the other proxy received %x, want one %x", got, want)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(asked, []uint16{9, 11}) {
		t.Errorf("ForeignCancel asked about %v, want [9 11]", asked)
	}
	if got := counter(p.Metrics.Cancels, metrics.CancelToProxy) - toProxy; got != 1 {
		t.Errorf("%v forwarded to a proxy, want 1", got)
	}
	if got := counter(p.Metrics.Cancels, metrics.CancelUnknown) - unknown; got != 3 {
		t.Errorf("%v unknown, want 3", got)
	}
}

func TestCancelIDValidated(t *testing.T) {
	cfg := proxy.Config{RWListen: "127.0.0.1:0", CancelID: proxy.MaxCancelID + 1}
	cfg.Defaults()
	if err := cfg.Validate(); err == nil {
		t.Fatalf("cancel id %d accepted", cfg.CancelID)
	}
}
