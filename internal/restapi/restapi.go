// Package restapi owns the agent's HTTP API: the health check endpoints
// load balancers poll, with Patroni's semantics so that an existing
// HAProxy configuration (option httpchk OPTIONS /primary, /replica…)
// works unchanged; the read-only views (/cluster, /history, /metrics);
// and the authenticated operator calls (/switchover, /failover, /restart,
// /reinitialize).
//
// It must not know etcd, PostgreSQL or HA rules: what the node is comes
// from Backend.Status, and every action goes to the Backend, which judges
// it. This package only shapes requests, answers with the right status
// code, and keeps mutations behind authentication.
//
// Endpoints (GET, HEAD and OPTIONS answer a health check with the same
// status code; GET adds a Patroni-style JSON document):
//
//	/, /primary, /master, /read-write  200 when the node holds the leader key
//	                                   and PostgreSQL runs as primary
//	/leader                            200 when the node holds the leader key
//	/standby-leader                    always 503: pharos has no standby clusters
//	/replica                           200 for a running replica not tagged
//	                                   noloadbalance; ?lag=, ?replication_state=
//	                                   and ?tag_<name>= narrow it
//	/read-only                         /primary or /replica
//	/health                            200 when PostgreSQL is running
//	/liveness                          200 when the HA loop ran within
//	                                   Config.LoopStale, or the cluster is paused
//	/readiness                         200 for the running leader, or a streaming
//	                                   replica (within ?lag= when given)
//	GET /patroni                       the status document, always 200
//	GET /cluster, /history, /metrics   views; 503 when the backend cannot answer.
//	                                   /cluster leaves out the dynamic
//	                                   configuration's PostgreSQL parameters
//	                                   unless the caller sends valid credentials
//	POST /switchover, /failover,       operator calls: basic auth or a bearer
//	     /restart, /reinitialize       token; refused (403) when neither is set
//
// The operator calls also refuse what a web page in a browser can send
// (cross-site request forgery with credentials the browser remembers):
// a request the browser marks cross-origin (Sec-Fetch-Site other than
// same-origin or none, or an Origin naming another host) gets 403, and a
// body that is not declared Content-Type: application/json gets 415
// (an HTML form cannot declare it; a script on another origin that does
// needs a CORS preflight, which this API never grants).
//
// Files: restapi.go holds the API types, the server's lifecycle and the
// routing; health.go the health check endpoints and their rules; views.go
// the read-only views; operator.go the operator calls (authentication,
// cross-origin refusal, request parsing).
package restapi

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pharos-ha/pharos/internal/cluster"
)

// NodeStatus is what the agent knows about its node right now.
type NodeStatus struct {
	Name  string
	Role  cluster.Role
	State string // the agent's words for humans, e.g. "streaming"
	// Running says PostgreSQL is up.
	Running bool
	// Leader says this member holds the leader key (and its record says
	// primary).
	Leader bool
	// Streaming says a replica receives WAL from the leader.
	Streaming bool
	// LagBytes is a replica's replay lag behind the leader; -1 unknown.
	LagBytes       int64
	Timeline       int64
	LSN            cluster.LSN
	Tags           cluster.Tags
	Paused         bool
	PendingRestart bool
	// LoopAt is when the agent's HA loop last completed a round.
	LoopAt time.Time
	Epoch  int64
}

// SwitchoverRequest is the body of POST /switchover and /failover.
type SwitchoverRequest struct {
	// Leader is the current leader the caller wants to replace; required
	// for a switchover.
	Leader string
	// Candidate is the member to promote; required for a failover,
	// optional for a switchover (any healthy replica).
	Candidate string
	// ScheduledAt, when not nil, asks for the switchover at that time
	// (always in the future, with a time zone). Failovers are immediate.
	ScheduledAt *time.Time
}

// Backend is the agent as the API sees it. Status must be cheap and never
// block: health checks call it on every request. The other calls get the
// request's context, which ends when the client goes away or the server
// shuts down.
type Backend interface {
	Status() NodeStatus
	// Cluster returns a JSON-marshalable view of the cluster. Without
	// authenticated (the caller sent no credentials) the view must leave
	// out the dynamic configuration's PostgreSQL parameters: they often
	// hold secrets (an archive_command's credentials).
	Cluster(ctx context.Context, authenticated bool) (any, error)
	History(ctx context.Context) (cluster.History, error)
	// Switchover returns once the switchover is done, or once it is
	// recorded when r.ScheduledAt is set.
	Switchover(ctx context.Context, r SwitchoverRequest) error
	// Failover returns once r.Candidate leads.
	Failover(ctx context.Context, r SwitchoverRequest) error
	Restart(ctx context.Context) error
	// Reinitialize returns once the re-clone has started.
	Reinitialize(ctx context.Context) error
}

// Errors a Backend wraps to choose the status code; any other error is
// answered 503. The error's text is the response body.
var (
	// ErrBadRequest: the request cannot be carried out as asked (400).
	ErrBadRequest = errors.New("bad request")
	// ErrConflict: the cluster's state does not allow it now, e.g. no
	// healthy candidate, or another operation in progress: 412 for a
	// switchover or failover (as Patroni answers "not possible"), 409 for
	// a restart or reinitialize.
	ErrConflict = errors.New("conflict")
)

// Config configures the server.
type Config struct {
	// Listen is the host:port to bind.
	Listen string
	// Username and Password enable basic authentication for the mutating
	// calls; both or neither.
	Username, Password string
	// Token enables "Authorization: Bearer <token>" for the mutating calls.
	// With neither Username nor Token the mutating calls are refused (403).
	Token string
	// CertFile and KeyFile, both or neither, serve HTTPS.
	CertFile, KeyFile string
	// LoopStale is how old NodeStatus.LoopAt may be before /liveness
	// fails. Required.
	LoopStale time.Duration
	// Metrics is served at GET /metrics; nil answers 404.
	Metrics http.Handler
}

// Bounds on the HTTP server.
const (
	readHeaderTimeout = 10 * time.Second
	readTimeout       = 30 * time.Second
	idleTimeout       = 2 * time.Minute
	shutdownTimeout   = 5 * time.Second
	maxHeaderBytes    = 64 << 10
	maxBodyBytes      = 64 << 10
	// viewTimeout bounds a /cluster or /history read.
	viewTimeout = 10 * time.Second
	// badLagLogEvery spaces the warnings about an unparsable ?lag=, which
	// a load balancer repeats every few seconds.
	badLagLogEvery = time.Minute
)

const realm = "pharos"

// Server is the REST API. Create it with New, optionally bind with Listen,
// run with Serve (once).
type Server struct {
	// Static after construction.
	cfg     Config
	backend Backend
	log     *slog.Logger
	tls     *tls.Config // nil: plain HTTP
	// SHA-256 digests of the configured secrets, compared in constant
	// time whatever the length of what the client sent.
	userSum, passSum, tokenSum [sha256.Size]byte
	// crossOrigin refuses operator calls a browser marks as coming from
	// another origin.
	crossOrigin *http.CrossOriginProtection

	mu sync.Mutex
	ln net.Listener // guarded by mu; set by Listen

	lastBadLagLog atomic.Int64 // unix nanoseconds
}

// New validates cfg and returns a server answering from b.
func New(cfg Config, b Backend, log *slog.Logger) (*Server, error) {
	if b == nil {
		return nil, errors.New("restapi: no backend")
	}
	if cfg.Listen == "" {
		return nil, errors.New("restapi: listen address is empty")
	}
	if (cfg.Username == "") != (cfg.Password == "") {
		return nil, errors.New("restapi: username and password must be set together")
	}
	if strings.ContainsAny(cfg.Username, ":") {
		return nil, errors.New("restapi: username must not contain ':'")
	}
	if strings.TrimSpace(cfg.Token) != cfg.Token {
		return nil, errors.New("restapi: token must not begin or end with white space")
	}
	if cfg.LoopStale <= 0 {
		return nil, fmt.Errorf("restapi: liveness threshold (LoopStale) is %v, must be positive", cfg.LoopStale)
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, errors.New("restapi: certificate and key files must be set together")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, backend: b, log: log, crossOrigin: http.NewCrossOriginProtection()}
	if cfg.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("restapi: load TLS certificate: %w", err)
		}
		s.tls = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	}
	if cfg.Username != "" {
		s.userSum = sha256.Sum256([]byte(cfg.Username))
		s.passSum = sha256.Sum256([]byte(cfg.Password))
	}
	if cfg.Token != "" {
		s.tokenSum = sha256.Sum256([]byte(cfg.Token))
	}
	if cfg.Username == "" && cfg.Token == "" {
		log.Warn("REST API has no credentials: switchover, failover, restart and reinitialize are refused")
	}
	return s, nil
}

// Listen binds Config.Listen. Serve calls it when the caller did not.
func (s *Server) Listen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		return errors.New("restapi: already listening")
	}
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("restapi listen %s: %w", s.cfg.Listen, err)
	}
	s.ln = ln
	return nil
}

// Addr returns the bound address, or "" before Listen.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Serve answers requests until ctx ends, then shuts down: it stops
// accepting, lets requests in progress finish for up to 5 s, then cancels
// their contexts and closes the connections. It returns nil after a
// shutdown, or the error that stopped serving earlier.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	ln := s.ln
	s.mu.Unlock()
	if ln == nil {
		if err := s.Listen(); err != nil {
			return err
		}
		s.mu.Lock()
		ln = s.ln
		s.mu.Unlock()
	}
	if s.tls != nil {
		ln = tls.NewListener(ln, s.tls)
	}
	// Handlers' contexts outlive ctx by the shutdown grace period, so a
	// request in progress can finish.
	baseCtx, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	scheme := "http"
	if s.tls != nil {
		scheme = "https"
	}
	s.log.Info("REST API listening", "addr", ln.Addr().String(), "scheme", scheme)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		_ = srv.Close() // ends any connection still open; Serve closed ln
		return fmt.Errorf("restapi serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		s.log.Warn("REST API requests still running at shutdown, cut", "err", err)
		cancelBase()
		_ = srv.Close()
	}
	<-served
	return nil
}

// ServeHTTP routes a request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	if c, ok := healthPaths[path]; ok {
		if allow(w, r, http.MethodGet, http.MethodHead, http.MethodOptions) {
			s.serveHealth(w, r, c)
		}
		return
	}
	switch path {
	case "/patroni":
		if allow(w, r, http.MethodGet, http.MethodHead) {
			writeJSON(w, r, http.StatusOK, newStatusDoc(s.backend.Status()))
		}
	case "/cluster":
		if allow(w, r, http.MethodGet, http.MethodHead) {
			s.serveCluster(w, r)
		}
	case "/history":
		if allow(w, r, http.MethodGet, http.MethodHead) {
			s.serveView(w, r, func(ctx context.Context) (any, error) {
				h, err := s.backend.History(ctx)
				if h == nil {
					h = cluster.History{}
				}
				return h, err
			})
		}
	case "/metrics":
		if allow(w, r, http.MethodGet, http.MethodHead) {
			if s.cfg.Metrics == nil {
				writeText(w, r, http.StatusNotFound, "metrics are not enabled")
				return
			}
			s.cfg.Metrics.ServeHTTP(w, r)
		}
	case "/switchover":
		s.mutate(w, r, s.switchover)
	case "/failover":
		s.mutate(w, r, s.failover)
	case "/restart":
		s.mutate(w, r, s.restart)
	case "/reinitialize":
		s.mutate(w, r, s.reinitialize)
	default:
		writeText(w, r, http.StatusNotFound, "no such endpoint: "+path)
	}
}

// allow answers 405 with an Allow header unless r's method is one of
// methods.
func allow(w http.ResponseWriter, r *http.Request, methods ...string) bool {
	for _, m := range methods {
		if r.Method == m {
			return true
		}
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	writeText(w, r, http.StatusMethodNotAllowed, fmt.Sprintf("%s is not allowed on %s", r.Method, r.URL.Path))
	return false
}

func writeText(w http.ResponseWriter, r *http.Request, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	if r.Method != http.MethodHead {
		_, _ = io.WriteString(w, msg+"\n")
	}
}

func writeJSON(w http.ResponseWriter, r *http.Request, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeText(w, r, http.StatusInternalServerError, "encode response: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	if r.Method != http.MethodHead {
		_, _ = w.Write(append(b, '\n'))
	}
}
