package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"

	"github.com/pharos-ha/pharos/internal/pgauth"
	"github.com/pharos-ha/pharos/router"
)

// DefaultAuthQuery is AuthQuery's default: the function the pharos agent
// creates at bootstrap (docs/proxy.md gives its SQL for other clusters).
// Like PgBouncer's, the query takes the user name as $1 and returns at
// most one row of the name and its verifier (rolpassword).
const DefaultAuthQuery = "SELECT usename, passwd FROM pharos.get_auth($1)"

// DefaultAuthCacheTTL is AuthCacheTTL's default.
const DefaultAuthCacheTTL = 60 * time.Second

// authCacheMax bounds the users the auth_query cache holds, unknown ones
// included, so that a client trying names cannot grow it without bound.
const authCacheMax = 10000

// authRequireAuth is what the auth_user's connection lets a server ask for:
// SCRAM only, so a server that cannot prove it holds the auth_user's
// verifier gets nothing, as with the health checks.
const authRequireAuth = router.DefaultRequireAuth

// userSource gives the verifier the proxy authenticates a user against.
type userSource interface {
	// lookup returns user's verifier (known false: no such user, or one
	// without a usable verifier). fresh asks for the cluster's current
	// answer rather than a cached one; fetched says the answer was read
	// from the cluster during this call, so asking again is pointless.
	lookup(ctx context.Context, user string, fresh bool) (v pgauth.Verifier, known, fetched bool, err error)
	// reload drops what the source holds for what it reads now (RELOAD,
	// SIGHUP). On error the source keeps what it had.
	reload() error
}

// fileUsers is an auth_file, read at start and again by reload; a login
// never refreshes it.
type fileUsers struct {
	path  string
	users atomic.Pointer[map[string]pgauth.Verifier]
}

func newFileUsers(path string) (*fileUsers, error) {
	f := &fileUsers{path: path}
	if err := f.reload(); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *fileUsers) lookup(_ context.Context, user string, _ bool) (pgauth.Verifier, bool, bool, error) {
	v, ok := (*f.users.Load())[user]
	return v, ok, true, nil
}

// reload reads the file again; a file that does not parse (one being
// written, say) leaves the users read before in place.
func (f *fileUsers) reload() error {
	users, err := loadAuthFile(f.path)
	if err != nil {
		return fmt.Errorf("auth_file: %w", err)
	}
	f.users.Store(&users)
	return nil
}

// Lookups in the cluster are bounded to authQueryRate a second, with
// bursts of authQueryBurst: each opens a connection to the primary as
// auth_user (a backend fork and a SCRAM login there), and a client trying
// random user names, or failing logins of a real one, would otherwise
// make one per attempt. A lookup for a user the cache does not hold waits
// its turn (first come, first served) within its login's deadline; a
// refresh after a failed login is skipped when there is no token left.
// Concurrent lookups of one user are merged into one query.
const (
	authQueryRate  = 50
	authQueryBurst = 100
)

// errAuthQueryBusy is a lookup that could not get its turn within its
// login's deadline.
var errAuthQueryBusy = errors.New("too many user lookups in the cluster (auth_query runs at most 50 a second)")

// errNoAuthBackend is a lookup with no server to run on.
var errNoAuthBackend = errors.New("no primary or replica is available to run auth_query on")

// queryUsers looks verifiers up with auth_query as auth_user on the
// primary (a replica when there is none), and caches the answers (unknown
// users too) for AuthCacheTTL.
type queryUsers struct {
	// Static after construction.
	srv     *Server
	ttl     time.Duration
	now     func() time.Time
	fetch   func(ctx context.Context, user string) (pgauth.Verifier, bool, error) // q.query; tests replace it
	limit   *rate.Limiter
	flights singleflight.Group

	mu sync.Mutex
	// Guarded by mu.
	cache map[string]cachedUser
}

type cachedUser struct {
	v       pgauth.Verifier
	known   bool
	fetched time.Time
}

func newQueryUsers(s *Server) *queryUsers {
	q := &queryUsers{srv: s, ttl: s.cfg.AuthCacheTTL, now: time.Now, cache: make(map[string]cachedUser),
		limit: rate.NewLimiter(authQueryRate, authQueryBurst)}
	q.fetch = q.query
	return q
}

// reload forgets every cached answer, so that each user is looked up
// again at its next login.
func (q *queryUsers) reload() error {
	q.mu.Lock()
	clear(q.cache)
	q.mu.Unlock()
	return nil
}

func (q *queryUsers) lookup(ctx context.Context, user string, fresh bool) (pgauth.Verifier, bool, bool, error) {
	now := q.now()
	if !fresh {
		q.mu.Lock()
		c, ok := q.cache[user]
		q.mu.Unlock()
		if ok && now.Sub(c.fetched) < q.ttl {
			return c.v, c.known, false, nil
		}
	}
	// Logins of one user at the same time share one query (run in the
	// goroutine of the first, under its deadline: every login's is
	// startup_timeout from its accept, so the others' are close).
	type answer struct {
		v     pgauth.Verifier
		known bool
	}
	res, err, _ := q.flights.Do(user, func() (any, error) {
		if fresh {
			if !q.limit.Allow() {
				return nil, errAuthQueryBusy
			}
		} else if err := q.limit.Wait(ctx); err != nil {
			return nil, fmt.Errorf("%w: %v", errAuthQueryBusy, err)
		}
		v, known, err := q.fetch(ctx, user)
		if err != nil {
			return nil, err
		}
		q.store(user, cachedUser{v: v, known: known, fetched: now})
		return answer{v, known}, nil
	})
	if err != nil {
		return pgauth.Verifier{}, false, true, err
	}
	a := res.(answer)
	return a.v, a.known, true, nil
}

// store caches c for user, making room when the cache is full: expired
// entries go first, then arbitrary ones down to nine tenths of the bound,
// so that a full cache is swept once per authCacheMax/10 new users, not
// for each.
func (q *queryUsers) store(user string, c cachedUser) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := q.cache[user]; !ok && len(q.cache) >= authCacheMax {
		for u, e := range q.cache {
			if c.fetched.Sub(e.fetched) >= q.ttl {
				delete(q.cache, u)
			}
		}
		for u := range q.cache {
			if len(q.cache) < authCacheMax-authCacheMax/10 {
				break
			}
			delete(q.cache, u)
		}
	}
	q.cache[user] = c
}

// authRoute picks the server auth_query runs on: the primary, where
// ALTER ROLE lands; when there is none (a failover under way), a replica,
// since the verifier replicates and a login should not fail for want of a
// primary it does not need; with neither, whichever comes first within
// route_wait.
func (s *Server) authRoute(ctx context.Context) (*router.Route, error) {
	waitCtx, cancel := context.WithTimeout(ctx, s.cfg.RouteWait)
	defer cancel()
	now, nowCancel := context.WithCancel(ctx)
	nowCancel() // Acquire with a done context takes what is there, or fails at once
	for {
		changed := s.router.Changed()
		if route, err := s.router.Acquire(now, router.RW); err == nil {
			return route, nil
		}
		if route, err := s.router.Acquire(now, router.RO); err == nil {
			return route, nil
		}
		select {
		case <-changed:
		case <-waitCtx.Done():
			return nil, fmt.Errorf("%w (waited route_wait, %v)", errNoAuthBackend, s.cfg.RouteWait)
		}
	}
}

// query runs auth_query for user (see authRoute for where). A row whose
// verifier is NULL or not a verifier (a plaintext password) is a user
// without one: the client gets the mock exchange, as PostgreSQL does.
func (q *queryUsers) query(ctx context.Context, user string) (pgauth.Verifier, bool, error) {
	s := q.srv
	route, err := s.authRoute(ctx)
	if err != nil {
		return pgauth.Verifier{}, false, err
	}
	defer route.Release()
	if route.Endpoint == router.RO {
		s.log.Info("auth_query: no primary, looking the user up on a replica", "user", user, "backend", route.Backend.Name)
	}
	conn, err := s.connectAuthUser(ctx, route.Backend.Addr)
	if err != nil {
		return pgauth.Verifier{}, false, fmt.Errorf("log in as auth_user %q to %s: %w", s.cfg.AuthUser, route.Backend.Name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var name string
	var passwd *string
	err = conn.QueryRow(ctx, s.cfg.AuthQuery, user).Scan(&name, &passwd)
	if errors.Is(err, pgx.ErrNoRows) {
		return pgauth.Verifier{}, false, nil
	}
	if err != nil {
		return pgauth.Verifier{}, false, fmt.Errorf("auth_query on %s: %w", route.Backend.Name, err)
	}
	if passwd == nil {
		return pgauth.Verifier{}, false, nil
	}
	v, err := pgauth.ParseVerifier(*passwd)
	if err != nil {
		s.log.Warn("auth_query: the user's password in the cluster is not a verifier, so the user cannot log in through the proxy", "user", user, "err", err)
		return pgauth.Verifier{}, false, nil
	}
	return v, true, nil
}

// connectAuthUser logs in to addr as AuthUser, with the backends' TLS
// setting and SCRAM required of the server.
func (s *Server) connectAuthUser(ctx context.Context, addr string) (*pgx.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	quote := strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace
	cc, err := pgx.ParseConfig(fmt.Sprintf("host='%s' port='%s' user='%s' dbname='%s' sslmode=disable application_name=pharos-proxy-auth",
		quote(host), quote(port), quote(s.cfg.AuthUser), quote(s.cfg.AuthDatabase)))
	if err != nil {
		return nil, err
	}
	cc.Password = s.cfg.AuthPassword
	// After parsing, so that no PGREQUIREAUTH in the environment widens it.
	cc.RequireAuth = authRequireAuth
	cc.ConnectTimeout = s.cfg.ConnectTimeout
	if s.backendTLS != nil {
		tc := s.backendTLS.Clone()
		tc.ServerName = host
		cc.TLSConfig = tc
	}
	cc.Fallbacks = nil
	// One statement on a connection closed after it: no prepared statement.
	cc.DefaultQueryExecMode = pgx.QueryExecModeExec
	return pgx.ConnectConfig(ctx, cc)
}
