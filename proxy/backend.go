package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"time"

	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/router"
	"github.com/pharos-ha/pharos/wire"
)

// attach picks a backend and connects to it, retrying once on another
// replica for ro when the first cannot be reached.
func (sess *session) attach(deadline time.Time) (metrics.Outcome, error) {
	s := sess.srv
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	var tried []*router.Backend
	for attempt := 0; ; attempt++ {
		waitCtx, cancelWait := context.WithTimeout(ctx, s.cfg.RouteWait)
		route, err := s.router.AcquireExcept(waitCtx, sess.ep, tried)
		cancelWait()
		if err != nil {
			what := "no primary is available"
			if sess.ep == router.RO {
				what = "no replica is available"
			}
			return metrics.OutcomeNoBackend, &startupError{code: wire.CodeCannotConnectNow, message: "pharos: " + what + " for the " + sess.ep.String() + " endpoint", err: err}
		}
		if slices.Contains(tried, route.Backend) {
			route.Release()
			return metrics.OutcomeBackendError, &startupError{code: wire.CodeCannotConnectNow, message: "pharos: could not connect to any backend"}
		}
		conn, err := s.dialBackend(ctx, sess.ep, route.Backend.Addr)
		if err == nil {
			sess.connMu.Lock()
			sess.backend = conn
			sess.connMu.Unlock()
			sess.route = route
			if sess.ended.Load() != nil {
				// Drained or fenced while dialling.
				return metrics.OutcomeShuttingDown, errors.New("session ended during connect")
			}
			return "", nil
		}
		route.Release()
		tried = append(tried, route.Backend)
		s.log.Warn("backend connect failed", "endpoint", sess.ep, "backend", route.Backend.Name, "err", err)
		if sess.ep == router.RW || attempt >= 1 || ctx.Err() != nil {
			return metrics.OutcomeBackendError, &startupError{code: wire.CodeCannotConnectNow,
				message: fmt.Sprintf("pharos: could not connect to backend %s", route.Backend.Name), err: err}
		}
	}
}

// dialBackend opens a connection to addr, with TLS when configured.
func (s *Server) dialBackend(ctx context.Context, ep router.Endpoint, addr string) (net.Conn, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ConnectTimeout)
	defer cancel()
	d := net.Dialer{KeepAlive: 15 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if s.backendTLS != nil {
		tc, err := s.startBackendTLS(ctx, conn, addr)
		if err != nil {
			_ = conn.Close()
			return nil, err
		}
		conn = tc
	}
	s.metrics.BackendConnect.WithLabelValues(ep.String()).Observe(time.Since(start).Seconds())
	return conn, nil
}

func (s *Server) startBackendTLS(ctx context.Context, conn net.Conn, addr string) (net.Conn, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
		defer func() { _ = conn.SetDeadline(time.Time{}) }()
	}
	if _, err := conn.Write(wire.AppendSSLRequest(nil)); err != nil {
		return nil, fmt.Errorf("backend SSLRequest: %w", err)
	}
	var answer [1]byte
	if _, err := io.ReadFull(conn, answer[:]); err != nil {
		return nil, fmt.Errorf("backend SSLRequest answer: %w", err)
	}
	if answer[0] != 'S' {
		return nil, fmt.Errorf("backend %s does not accept TLS (answered %q)", addr, answer[0])
	}
	cfg := s.backendTLS.Clone()
	if host, _, err := net.SplitHostPort(addr); err == nil {
		cfg.ServerName = host
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("backend TLS handshake: %w", err)
	}
	return tc, nil
}
