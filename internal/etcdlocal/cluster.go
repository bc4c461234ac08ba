package etcdlocal

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
)

// Options configure Start. The zero value starts one member in a temporary
// directory.
type Options struct {
	// Dir holds one data directory per member (Dir/m0, Dir/m1, ...). Empty
	// means a new temporary directory, removed by Close. A given Dir is kept
	// by Close and must not already hold member data.
	Dir string
	// Members is the cluster size: 0 means 1. Use 3 for member-loss tests.
	Members int
	// Logger receives member state changes. Nil discards them.
	Logger *slog.Logger
	// ClientTLS, when set, makes members serve clients over TLS with this
	// certificate (peers stay plaintext). Client uses CAFile to verify it.
	ClientTLS *TLSFiles
}

// TLSFiles name PEM files.
type TLSFiles struct {
	CertFile, KeyFile, CAFile string
}

// Timeouts. Every wait in this package is bounded by one of these or by the
// caller's context.
const (
	// ClientDialTimeout is the DialTimeout of clients from Cluster.Client.
	ClientDialTimeout = 2 * time.Second
	// portFreeTimeout bounds the wait, after a member is closed, until its
	// ports can be bound again.
	portFreeTimeout = 5 * time.Second
	// startAttempts is how often Start picks new ports when one it picked
	// was taken by someone else in the meantime.
	startAttempts = 3
)

// probeKey is read by Client and CurrentRevision. It need not exist.
const probeKey = "etcdlocal/probe"

// Cluster is a running embedded etcd cluster. Its methods are safe for
// concurrent use; operations on different members run concurrently.
type Cluster struct {
	// Static after Start.
	log     *slog.Logger
	tls     *TLSFiles // client TLS, nil for plaintext
	dir     string
	ownDir  bool
	members []*member
	// Set by startNew before the first successful start; etcd ignores
	// them when a member restarts on its data.
	initialCluster string
	token          string

	closed atomic.Bool
}

// Start starts a cluster and returns once every member is ready to serve.
// Members start concurrently, since each waits for a quorum of peers.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	n := opts.Members
	if n == 0 {
		n = 1
	}
	if n < 0 {
		return nil, fmt.Errorf("etcdlocal: %d members", n)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Cluster{log: log, tls: opts.ClientTLS, dir: opts.Dir}
	if c.dir == "" {
		d, err := os.MkdirTemp("", "etcdlocal-")
		if err != nil {
			return nil, fmt.Errorf("etcdlocal: data dir: %w", err)
		}
		c.dir, c.ownDir = d, true
	} else if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return nil, fmt.Errorf("etcdlocal: data dir: %w", err)
	}
	for i := range n {
		m := &member{name: "m" + strconv.Itoa(i), clientScheme: "http"}
		if opts.ClientTLS != nil {
			m.clientScheme = "https"
		}
		m.dir = filepath.Join(c.dir, m.name)
		if _, err := os.Stat(m.dir); err == nil {
			c.removeOwnDir()
			return nil, fmt.Errorf("etcdlocal: %s already holds member data", m.dir)
		}
		c.members = append(c.members, m)
	}

	var err error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		if err = c.startNew(ctx); err == nil {
			return c, nil
		}
		for _, m := range c.members {
			os.RemoveAll(m.dir)
		}
		if !isAddrInUse(err) || ctx.Err() != nil {
			break
		}
		log.Info("etcd port taken, retrying with new ports", "attempt", attempt, "err", err)
	}
	c.removeOwnDir()
	return nil, err
}

// startNew picks ports for all members and starts a new cluster on them. On
// failure every member it started is stopped again.
func (c *Cluster) startNew(ctx context.Context) error {
	ports, err := freePorts(4 * len(c.members))
	if err != nil {
		return err
	}
	addr := func(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
	initial := make([]string, len(c.members))
	for i, m := range c.members {
		m.clientAddr = addr(ports[4*i])
		m.clientBehind = addr(ports[4*i+1])
		m.peerAddr = addr(ports[4*i+2])
		m.peerBehind = addr(ports[4*i+3])
		initial[i] = m.name + "=" + m.peerURL()
	}
	c.initialCluster = strings.Join(initial, ",")
	// A token unique to this cluster, so that members of another cluster
	// that later get the same ports cannot join this one by mistake.
	c.token = "etcdlocal-" + strconv.Itoa(ports[0]) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)

	g, gctx := errgroup.WithContext(ctx)
	for _, m := range c.members {
		g.Go(func() error {
			m.mu.Lock()
			defer m.mu.Unlock()
			return c.startLocked(gctx, m)
		})
	}
	if err := g.Wait(); err != nil {
		c.stopAll()
		return err
	}
	return nil
}

// Members returns the cluster size.
func (c *Cluster) Members() int { return len(c.members) }

// Endpoints returns the client URL of every member, "http://127.0.0.1:port",
// in member order. They do not change when members restart.
func (c *Cluster) Endpoints() []string {
	eps := make([]string, len(c.members))
	for i, m := range c.members {
		eps[i] = m.clientURL()
	}
	return eps
}

// Dir returns the directory holding the members' data directories.
func (c *Cluster) Dir() string { return c.dir }

// Leader returns the index of the running member that is the raft leader,
// or -1 when no running member is. The answer may be stale by the time it
// is used; it is meant for choosing which member a test stops.
func (c *Cluster) Leader() int {
	for i, m := range c.members {
		m.mu.Lock()
		e := m.etcd
		m.mu.Unlock()
		if e != nil && e.Server.Leader() == e.Server.MemberID() {
			return i
		}
	}
	return -1
}

// Client returns a client of all members that has answered a linearizable
// read within ctx. It logs nothing, and its DialTimeout is
// ClientDialTimeout. The caller closes it.
func (c *Cluster) Client(ctx context.Context) (*clientv3.Client, error) {
	cfg := clientv3.Config{
		Endpoints:   c.Endpoints(),
		DialTimeout: ClientDialTimeout,
		Logger:      zap.NewNop(),
	}
	if c.tls != nil {
		pem, err := os.ReadFile(c.tls.CAFile)
		if err != nil {
			return nil, fmt.Errorf("etcdlocal: client: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcdlocal: client: no certificate in %s", c.tls.CAFile)
		}
		cfg.TLS = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcdlocal: client: %w", err)
	}
	if _, err := cli.Get(ctx, probeKey); err != nil {
		cli.Close()
		return nil, fmt.Errorf("etcdlocal: client: probe read: %w", err)
	}
	return cli, nil
}

// CurrentRevision returns the cluster's current revision, read
// linearizably.
func (c *Cluster) CurrentRevision(ctx context.Context) (int64, error) {
	cli, err := c.Client(ctx)
	if err != nil {
		return 0, err
	}
	defer cli.Close()
	resp, err := cli.Get(ctx, probeKey)
	if err != nil {
		return 0, fmt.Errorf("etcdlocal: current revision: %w", err)
	}
	return resp.Header.Revision, nil
}

// Compact compacts the key-value history up to rev and waits until the
// member that answered has removed the compacted entries from its storage
// (physical compaction). Afterwards a watch or read at a revision below rev
// fails with rpctypes.ErrCompacted.
func (c *Cluster) Compact(ctx context.Context, rev int64) error {
	cli, err := c.Client(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		return fmt.Errorf("etcdlocal: compact at %d: %w", rev, err)
	}
	c.log.Info("etcd compacted", "revision", rev)
	return nil
}

// Close stops every member and, when Start created the directory, removes
// it. It is safe to call more than once.
func (c *Cluster) Close() error {
	c.closed.Store(true)
	err := c.stopAll()
	if rerr := c.removeOwnDir(); rerr != nil {
		err = errors.Join(err, rerr)
	}
	return err
}

func (c *Cluster) removeOwnDir() error {
	if !c.ownDir {
		return nil
	}
	if err := os.RemoveAll(c.dir); err != nil {
		return fmt.Errorf("etcdlocal: remove %s: %w", c.dir, err)
	}
	return nil
}

// isAddrInUse reports whether err comes from binding a taken port. etcd
// does not always wrap the listener's error, hence the text match.
func isAddrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}
