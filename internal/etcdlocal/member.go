package etcdlocal

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/pharos-ha/pharos/internal/freeport"
)

// member is one etcd server: its identity, directory and ports never change,
// so a restarted member is the same member to its peers and its clients.
type member struct {
	// Static after Start (which picks new ports when an attempt fails).
	// Each address is 127.0.0.1:port. Clients and peers connect to the
	// gates; etcd listens behind them.
	name         string
	dir          string
	clientScheme string // http, or https with Options.ClientTLS
	clientAddr   string // client gate, advertised to clients
	clientBehind string // where etcd serves clients
	peerAddr     string // peer gate, advertised to peers
	peerBehind   string // where etcd serves peers

	// Guarded by mu, which is held for the whole of a start or stop.
	mu         sync.Mutex
	etcd       *embed.Etcd // nil while stopped
	clientGate *gate       // nil while stopped
	peerGate   *gate       // nil while stopped
}

func httpURL(addr string) url.URL { return url.URL{Scheme: "http", Host: addr} }

func (m *member) clientURL() string { return m.clientScheme + "://" + m.clientAddr }
func (m *member) peerURL() string   { return "http://" + m.peerAddr }

// closeGatesLocked cuts every connection to m, from clients and peers.
func (m *member) closeGatesLocked() {
	for _, g := range []*gate{m.clientGate, m.peerGate} {
		if g != nil {
			g.close()
		}
	}
}

// startLocked starts m and waits until it is ready.
func (c *Cluster) startLocked(ctx context.Context, m *member) error {
	cfg := embed.NewConfig()
	cfg.Name = m.name
	cfg.Dir = m.dir
	// etcd logs spurious errors while closing; it gets a logger of its own
	// that discards everything.
	cfg.Logger = "zap"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.ListenClientUrls = []url.URL{{Scheme: m.clientScheme, Host: m.clientBehind}}
	cfg.AdvertiseClientUrls = []url.URL{{Scheme: m.clientScheme, Host: m.clientAddr}}
	if t := c.tls; t != nil {
		cfg.ClientTLSInfo = transport.TLSInfo{CertFile: t.CertFile, KeyFile: t.KeyFile}
	}
	cfg.ListenPeerUrls = []url.URL{httpURL(m.peerBehind)}
	cfg.AdvertisePeerUrls = []url.URL{httpURL(m.peerAddr)}
	cfg.InitialCluster = c.initialCluster
	cfg.InitialClusterToken = c.token
	cfg.ClusterState = embed.ClusterStateFlagNew
	cfg.AutoCompactionRetention = "0" // off
	cfg.UnsafeNoFsync = true

	// Peers must reach the member before it can be ready; clients only
	// once it is.
	pg, err := openGate(m.peerAddr, m.peerBehind)
	if err != nil {
		return fmt.Errorf("etcdlocal: start %s: peer gate: %w", m.name, err)
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		pg.close()
		return fmt.Errorf("etcdlocal: start %s: %w", m.name, err)
	}
	fail := func(err error) error {
		pg.close()
		e.Server.HardStop()
		e.Close()
		return fmt.Errorf("etcdlocal: start %s: %w", m.name, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		return fail(err)
	case <-e.Server.StopNotify():
		return fail(errors.New("server stopped before it was ready"))
	case <-ctx.Done():
		return fail(fmt.Errorf("waiting until ready: %w", ctx.Err()))
	}
	cg, err := openGate(m.clientAddr, m.clientBehind)
	if err != nil {
		return fail(fmt.Errorf("client gate: %w", err))
	}
	m.etcd, m.clientGate, m.peerGate = e, cg, pg
	c.log.Info("etcd member started", "member", m.name, "client", m.clientURL(), "peer", m.peerURL(), "dir", m.dir)
	return nil
}

// stopLocked closes m's server, if running, and waits until its ports are
// free again.
func (c *Cluster) stopLocked(m *member) error {
	if m.etcd == nil {
		return nil
	}
	// Cut clients and peers off first, so that etcd's graceful stop has no
	// open streams or peer connections to wait for. Then stop the server
	// without handing its leadership over, as a crash would: the transfer
	// would make a member loss gentler than a real one, and waits for
	// seconds when the peers are stopping too.
	m.closeGatesLocked()
	m.etcd.Server.HardStop()
	m.etcd.Close()
	m.etcd, m.clientGate, m.peerGate = nil, nil, nil
	if err := waitPortsFree(portFreeTimeout, m.clientAddr, m.clientBehind, m.peerAddr, m.peerBehind); err != nil {
		return fmt.Errorf("etcdlocal: stop %s: %w", m.name, err)
	}
	c.log.Info("etcd member stopped", "member", m.name)
	return nil
}

// stopAll stops every member concurrently. It first cuts every member off
// from clients and peers, so that no connection between two members
// outlives them: etcd's peer transport can otherwise leave a connection,
// and its goroutines, waiting for seconds on a peer's read timeout.
func (c *Cluster) stopAll() error {
	for _, m := range c.members {
		m.mu.Lock()
		m.closeGatesLocked()
		m.mu.Unlock()
	}
	errs := make([]error, len(c.members))
	var wg sync.WaitGroup
	for i, m := range c.members {
		wg.Go(func() {
			m.mu.Lock()
			defer m.mu.Unlock()
			errs[i] = c.stopLocked(m)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (c *Cluster) member(i int) (*member, error) {
	if i < 0 || i >= len(c.members) {
		return nil, fmt.Errorf("etcdlocal: no member %d in a cluster of %d", i, len(c.members))
	}
	return c.members[i], nil
}

// StopMember stops member i (0-based) the way an etcd process dies: its
// clients' connections are reset at once, open watches and lease
// keep-alives included, new ones are refused until StartMember, and a
// leader does not hand its leadership over, so the others elect a new one
// after an election timeout (1 s). It returns once the server is closed and
// its ports are free. Stopping a stopped member is an error.
func (c *Cluster) StopMember(i int) error {
	m, err := c.member(i)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.etcd == nil {
		return fmt.Errorf("etcdlocal: stop %s: not running", m.name)
	}
	return c.stopLocked(m)
}

// StartMember starts member i again on its data directory and ports, and
// waits until it is ready, which needs a quorum of the cluster: with two of
// three members stopped, start them concurrently. Starting a running member
// is an error.
func (c *Cluster) StartMember(ctx context.Context, i int) error {
	m, err := c.member(i)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if c.closed.Load() {
		return fmt.Errorf("etcdlocal: start %s: cluster closed", m.name)
	}
	if m.etcd != nil {
		return fmt.Errorf("etcdlocal: start %s: already running", m.name)
	}
	return c.startLocked(ctx, m)
}

// Running reports whether member i is running.
func (c *Cluster) Running(i int) bool {
	m, err := c.member(i)
	if err != nil {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.etcd != nil
}

// freePorts returns n distinct loopback ports that were free a moment ago,
// outside the ephemeral range so that a stopped member finds its ports
// still free when it starts again. Someone else may take one before etcd
// binds it; Start retries with new ports when that happens.
func freePorts(n int) ([]int, error) {
	ports, err := freeport.Distinct(n)
	if err != nil {
		return nil, fmt.Errorf("etcdlocal: %w", err)
	}
	return ports, nil
}

// waitPortsFree waits until every addr can be bound, for at most timeout.
func waitPortsFree(timeout time.Duration, addrs ...string) error {
	deadline := time.Now().Add(timeout)
	for _, addr := range addrs {
		for {
			l, err := net.Listen("tcp", addr)
			if err == nil {
				l.Close()
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("port %s still in use after %v: %w", addr, timeout, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return nil
}
