// Package proxy owns the client side of pharos: the rw and ro listeners,
// client sessions from the startup packet to the last byte, TLS towards
// clients and backends, the proxy's own authentication, pools of server
// connections (pool_mode session), CancelRequest forwarding, fencing of
// sessions and pooled connections whose backend lost its role, and
// draining on shutdown.
//
// It asks a router.Router for a backend and obeys the route's revocation;
// it must not know how the topology was learned (static checks, etcd).
//
// Per session there are two goroutines, one per direction, and exactly one
// writer per socket: backendToClient is the only writer to the client after
// the startup phase, clientToBackend the only writer to the backend. Either
// side ends the session through session.end, which records the reason once
// and wakes both copiers with deadlines; backendToClient then writes the
// FATAL error to the client when the stream is at a message boundary.
//
// Files: server.go holds the listeners, accepting and draining; session.go
// a session's state, its end and its client-side startup (startup packet,
// TLS); backend.go connecting it to a backend (route, dial, backend TLS);
// relay.go the two copiers and their per-message path; pump.go the socket
// reads and writes under them; cancel.go cancel keys and CancelRequests;
// config.go the configuration; auth.go and authquery.go the proxy's own
// authentication; pool.go the pools (limits, waiting, fencing, expiry,
// snapshots), pool_conn.go a pooled server connection (login, reset,
// checks) and pool_session.go a pooled session (greeting, lazy attach,
// release).
//
// A pooled session is one goroutine while it has no server connection
// (waiting, without a buffer, for its client's first message) and the two
// copiers once it has one; its fencing is the pool's fence for its route,
// not a goroutine of its own. When the client leaves, the client side
// wakes the server side without closing the socket (an expired read
// deadline), and the session's goroutine, once both copiers returned,
// clears it and decides whether the connection is reset and reused.
//
// Its Go API carries no stability promise: pharos ships a binary, and
// these packages change with it.
package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/pharos-ha/pharos/internal/pgauth"
	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/router"
	"github.com/pharos-ha/pharos/wire"
)

// Server is the proxy. Create it with New, bind with Listen, run with Serve.
type Server struct {
	// Static after construction.
	cfg        Config
	router     *router.Router
	log        *slog.Logger
	metrics    *metrics.Proxy
	backendTLS *tls.Config // nil when BackendTLS is disable
	clientTLS  *tls.Config // nil when TLSMode is disable
	cert       atomic.Pointer[serverCert]
	users      userSource // AuthFile's or AuthQuery's; nil in passthrough and cert
	certUsers  *certFile  // AuthCert: the AuthFile's credentials for the servers; nil without
	mockSecret []byte     // keys the mock verifiers of unknown users
	// Sessions by router.Endpoint, counted apart so that connections that
	// never log in cannot take the places of those that do: pending from
	// accept to the server's AuthenticationOk, clients from then on.
	pending        [3]atomic.Int64
	clients        [3]atomic.Int64
	tooManyPending []byte // the FATAL for a connection over MaxPendingPerEndpoint
	bytesC2B       prometheusCounter
	bytesB2C       prometheusCounter
	buffers        sync.Pool // *[]byte of cfg.BufferSize, lent to copiers while they read
	pools          *pools
	resetQuery     []byte // cfg.ServerResetQuery as a Query message
	emptyQuery     []byte // the health check of a pooled connection

	// Set by Listen.
	listeners map[router.Endpoint]net.Listener

	// The admin console's (admin.go, adminstats.go).
	nextID atomic.Uint64 // session ids
	admin  adminState
	stats  struct {
		mu sync.Mutex
		statsBook
	}

	mu sync.Mutex
	// Guarded by mu.
	sessions map[*session]struct{}
	keys     cancelKeys
	draining bool
	// retiredTotals are the SHOW STATS counts of the sessions that ended.
	retiredTotals map[string]*dbTotals

	drainFlag atomic.Bool   // mirrors draining for the copiers' per-chunk check
	cancelID  atomic.Uint32 // what keys issued now carry (cancel.go)
}

// prometheusCounter is the one method of prometheus.Counter the hot path
// uses, resolved once so no label lookup happens per chunk.
type prometheusCounter interface{ Add(float64) }

// New validates cfg and returns a server that routes with r.
func New(cfg Config, r *router.Router, log *slog.Logger, m *metrics.Proxy) (*Server, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:       cfg,
		router:    r,
		log:       log,
		metrics:   m,
		bytesC2B:  m.Bytes.WithLabelValues(metrics.DirClientToBackend),
		bytesB2C:  m.Bytes.WithLabelValues(metrics.DirBackendToClient),
		listeners: make(map[router.Endpoint]net.Listener),
		sessions:  make(map[*session]struct{}),
		keys:      cancelKeys{own: make(map[uint32]ownCancel), server: make(map[string]*cancelTarget)},

		retiredTotals: make(map[string]*dbTotals),
		tooManyPending: wire.FatalError(wire.CodeTooManyConnections,
			"pharos: too many clients are logging in at once, try again"),
		pools:      newPools(),
		resetQuery: encodeQuery(cfg.ServerResetQuery),
		emptyQuery: encodeQuery(""),
	}
	id := cfg.CancelID
	if id == 0 {
		id = pickCancelID()
	}
	s.cancelID.Store(uint32(id))
	s.admin.init()
	s.stats.times = make(map[string]*dbTotals)
	switch {
	case cfg.AuthType == AuthCert:
		if cfg.AuthFile != "" {
			users, err := newCertFile(cfg.AuthFile)
			if err != nil {
				return nil, err
			}
			s.certUsers = users
		}
	case cfg.AuthType != AuthPassthrough:
		if cfg.AuthFile != "" {
			users, err := newFileUsers(cfg.AuthFile)
			if err != nil {
				return nil, err
			}
			s.users = users
		} else {
			s.users = newQueryUsers(s)
		}
		s.mockSecret = make([]byte, 32)
		_, _ = rand.Read(s.mockSecret)
	}
	s.buffers.New = func() any {
		b := make([]byte, cfg.BufferSize)
		return &b
	}
	if cfg.TLSMode != TLSDisable {
		if err := s.ReloadTLS(); err != nil {
			return nil, err
		}
		s.clientTLS = &tls.Config{
			MinVersion: tls.VersionTLS12,
			NextProtos: []string{alpnPostgres},
			// Full-size records from a session's first byte: dynamic sizing
			// (records growing from ~1.2 KB over a connection's first 128 KB)
			// is for a browser's first paint; for a driver it is only more
			// records to read and open (tlsrecord_test.go).
			DynamicRecordSizingDisabled: true,
			GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
				c := s.cert.Load()
				if bc, ok := hello.Conn.(*boundConn); ok {
					bc.cert = c
				}
				return &c.cert, nil
			},
			// As PostgreSQL: no resumption, so every handshake sends (and
			// records, for channel binding) the current certificate.
			SessionTicketsDisabled: true,
		}
		if cfg.ClientTLSCAFile != "" {
			pool, err := loadCertPool(cfg.ClientTLSCAFile)
			if err != nil {
				return nil, fmt.Errorf("client_tls_ca_file: %w", err)
			}
			// As PostgreSQL with ssl_ca_file: asked for, checked when
			// given; auth_type cert refuses a login without one.
			s.clientTLS.ClientAuth = tls.VerifyClientCertIfGiven
			s.clientTLS.ClientCAs = pool
		}
	}
	switch cfg.BackendTLS {
	case BackendTLSRequire:
		// Like libpq's sslmode=require: encrypted, not authenticated.
		s.backendTLS = &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true}
	case BackendTLSVerifyCA:
		pool, err := loadCertPool(cfg.BackendCAFile)
		if err != nil {
			return nil, fmt.Errorf("backend_tls_ca_file: %w", err)
		}
		s.backendTLS = &tls.Config{
			MinVersion:         tls.VersionTLS12,
			InsecureSkipVerify: true, // the chain is checked below, the host name is not (verify-ca)
			VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
				return verifyChain(raw, pool)
			},
		}
	}
	if s.backendTLS != nil && cfg.BackendCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.BackendCertFile, cfg.BackendKeyFile)
		if err != nil {
			return nil, fmt.Errorf("backend_tls_cert_file: %w", err)
		}
		s.backendTLS.Certificates = []tls.Certificate{cert}
	}
	return s, nil
}

// loadCertPool reads a PEM CA bundle.
func loadCertPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no certificate found in %s", path)
	}
	return pool, nil
}

func verifyChain(raw [][]byte, roots *x509.CertPool) error {
	if len(raw) == 0 {
		return errors.New("backend sent no certificate")
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return fmt.Errorf("backend certificate: %w", err)
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter})
	return err
}

// ReloadTLS reads the certificate and key files again; on error the old
// certificate stays in use. Sessions already established keep theirs.
func (s *Server) ReloadTLS() error {
	if s.cfg.TLSMode == TLSDisable {
		return nil
	}
	cert, err := tls.LoadX509KeyPair(s.cfg.CertFile, s.cfg.KeyFile)
	if err != nil {
		return fmt.Errorf("load TLS certificate: %w", err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return fmt.Errorf("load TLS certificate: %w", err)
		}
	}
	sc := &serverCert{cert: cert}
	if sc.binding, err = pgauth.TLSServerEndPoint(leaf); err != nil {
		s.log.Warn("TLS certificate has no channel binding: SCRAM-SHA-256-PLUS is not offered, so clients with channel_binding=require cannot log in", "cert", s.cfg.CertFile, "err", err)
	}
	s.cert.Store(sc)
	s.log.Info("TLS certificate loaded", "cert", s.cfg.CertFile)
	return nil
}

// serverCert is the proxy's TLS certificate with its tls-server-end-point
// channel-binding data (nil when RFC 5929 defines none for it).
type serverCert struct {
	cert    tls.Certificate
	binding []byte
}

// boundConn is the connection under a client's TLS handshake; the
// handshake records in it the certificate it sent, since a reload may
// replace the current one before the SCRAM exchange that binds to it.
type boundConn struct {
	net.Conn
	cert *serverCert // set by GetCertificate during the handshake
}

// binding returns the channel-binding data of the certificate the
// handshake sent, nil when there is none.
func (c *boundConn) binding() []byte {
	if c.cert == nil {
		return nil
	}
	return c.cert.binding
}

// Listen binds the configured endpoints.
func (s *Server) Listen() error {
	for ep, addr := range map[router.Endpoint]string{router.RW: s.cfg.RWListen, router.RO: s.cfg.ROListen} {
		if addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("%s_listen %s: %w", ep, addr, err)
		}
		s.listeners[ep] = ln
	}
	return nil
}

// Addr returns the bound address of an endpoint, or nil.
func (s *Server) Addr(ep router.Endpoint) net.Addr {
	if ln := s.listeners[ep]; ln != nil {
		return ln.Addr()
	}
	return nil
}

// CloseListeners releases the endpoints bound by Listen, for a caller that
// gives up before Serve (which closes them itself).
func (s *Server) CloseListeners() { s.closeListeners() }

func (s *Server) closeListeners() {
	for _, ln := range s.listeners {
		_ = ln.Close()
	}
}

// Serve accepts clients until ctx ends, then drains: it stops accepting,
// lets sessions finish their transactions for up to DrainTimeout, cuts the
// rest with FATAL 57P01 and returns once every session is gone.
func (s *Server) Serve(ctx context.Context) error {
	if len(s.listeners) == 0 {
		if err := s.Listen(); err != nil {
			return err
		}
	}
	var sessions sync.WaitGroup
	g, gctx := errgroup.WithContext(ctx)
	for ep, ln := range s.listeners {
		g.Go(func() error { return s.acceptLoop(gctx, ep, ln, &sessions) })
	}
	g.Go(func() error {
		<-gctx.Done()
		s.closeListeners()
		return nil
	})
	g.Go(func() error {
		s.runSampler(gctx)
		return nil
	})
	g.Go(func() error {
		s.janitor(gctx)
		return nil
	})
	err := g.Wait()
	s.drain(&sessions)
	s.stopPools()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func (s *Server) acceptLoop(ctx context.Context, ep router.Endpoint, ln net.Listener, sessions *sync.WaitGroup) error {
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ECONNABORTED) {
				// Out of file descriptors and the like: back off instead of
				// spinning, as net/http does.
				backoff = min(max(backoff*2, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed, backing off", "endpoint", ep, "err", err, "backoff", backoff)
				select {
				case <-time.After(backoff):
				case <-ctx.Done():
					return nil
				}
				continue
			}
			return fmt.Errorf("accept on %s: %w", ep, err)
		}
		backoff = 0
		if !takeSlot(&s.pending[ep], s.cfg.MaxPendingPerEndpoint) {
			s.refusePending(ep, conn)
			continue
		}
		sess := s.newSession(ep, conn)
		sess.group = sessions
		sessions.Go(sess.run)
	}
}

// takeSlot counts one more in n unless that would pass limit.
func takeSlot(n *atomic.Int64, limit int) bool {
	if n.Add(1) > int64(limit) {
		n.Add(-1)
		return false
	}
	return true
}

// refusePending turns away a connection over the pending limit without
// reading from it or starting a goroutine, so a flood of them costs an
// accept, one write into an empty socket buffer and a close each. A client
// that already sent its first packet may see the close (a reset) rather
// than the FATAL; either way it is refused at once.
func (s *Server) refusePending(ep router.Endpoint, conn net.Conn) {
	s.metrics.Sessions.WithLabelValues(ep.String(), string(metrics.OutcomeTooManyPending)).Inc()
	_ = conn.SetWriteDeadline(time.Now().Add(refuseWriteGrace))
	_, _ = conn.Write(s.tooManyPending)
	_ = conn.Close()
}

// refuseWriteGrace bounds the write of refusePending, which runs on the
// accept loop: a fresh socket's buffer takes the few bytes at once, so it
// only matters if the kernel says otherwise.
const refuseWriteGrace = 50 * time.Millisecond

// drain runs after the listeners closed.
func (s *Server) drain(sessions *sync.WaitGroup) {
	s.mu.Lock()
	s.draining = true
	s.drainFlag.Store(true)
	n := len(s.sessions)
	for sess := range s.sessions {
		sess.drainIfIdle()
	}
	s.mu.Unlock()
	if n > 0 {
		s.log.Info("draining sessions", "sessions", n, "timeout", s.cfg.DrainTimeout)
	}
	done := make(chan struct{})
	go func() { sessions.Wait(); close(done) }()
	timer := time.NewTimer(s.cfg.DrainTimeout)
	defer timer.Stop()
	select {
	case <-done:
		return
	case <-timer.C:
	}
	s.mu.Lock()
	for sess := range s.sessions {
		sess.end(metrics.ReasonShutdown, wire.CodeAdminShutdown, "terminating connection because the proxy is shutting down")
	}
	s.mu.Unlock()
	<-done
}

func (s *Server) addSession(sess *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return false
	}
	s.sessions[sess] = struct{}{}
	return true
}

func (s *Server) removeSession(sess *session) {
	s.mu.Lock()
	delete(s.sessions, sess)
	s.mu.Unlock()
}
