package proxy

import (
	"crypto/tls"
	"fmt"
	"os"
	"strings"
	"time"
)

// TLSMode is the client-side TLS policy.
type TLSMode string

const (
	TLSDisable TLSMode = "disable" // answer SSLRequest with 'N'
	TLSAllow   TLSMode = "allow"   // TLS when the client asks, plaintext otherwise
	TLSRequire TLSMode = "require" // refuse plaintext sessions with FATAL 28000
)

// BackendTLSMode is the TLS policy towards PostgreSQL servers.
type BackendTLSMode string

const (
	BackendTLSDisable  BackendTLSMode = "disable"   // plaintext to backends
	BackendTLSRequire  BackendTLSMode = "require"   // TLS, certificate not verified
	BackendTLSVerifyCA BackendTLSMode = "verify-ca" // TLS, chain checked against BackendCAFile
)

// AuthType says who authenticates clients.
type AuthType string

const (
	// AuthPassthrough relays the server's authentication to the client
	// untouched: the proxy never sees a credential.
	AuthPassthrough AuthType = "passthrough"
	// AuthSCRAM, AuthMD5 and AuthTrust make the proxy authenticate the
	// client itself against the verifiers of AuthFile, as a server with
	// that pg_hba.conf method would (md5 runs SCRAM for a user whose
	// verifier is a SCRAM one, as PostgreSQL does), and then log in to the
	// backend as that user with what the login left (the SCRAM ClientKey,
	// or the md5 hash; nothing for trust, so the backend must trust the
	// proxy for the user).
	AuthSCRAM AuthType = "scram-sha-256"
	AuthMD5   AuthType = "md5"
	AuthTrust AuthType = "trust"
	// AuthCert makes the proxy authenticate the client by its TLS
	// certificate (PgBouncer's client_tls_sslmode verify-full): it must
	// verify against ClientTLSCAFile and its common name is the user, as
	// PostgreSQL's cert method. Towards the servers the proxy logs in with
	// the AuthFile's password (or md5 hash) for the user, or with nothing
	// but its own BackendCertFile certificate or the servers' trust.
	AuthCert AuthType = "cert"
)

// PoolMode says whether server connections are pooled.
type PoolMode string

const (
	// PoolNone gives every client a server connection of its own, opened
	// at its login and closed when it leaves.
	PoolNone PoolMode = "none"
	// PoolSession lends a client a pooled server connection opened with
	// exactly its startup parameters for as long as it stays connected;
	// when it leaves the connection is reset (ServerResetQuery) and kept
	// for the next client with the same parameters. It needs the proxy's
	// own authentication, which is what lets the proxy log in on a
	// client's behalf.
	PoolSession PoolMode = "session"
)

// Pool defaults (PgBouncer's where it has the setting).
const (
	DefaultServerIdleTimeout = 600 * time.Second
	DefaultServerLifetime    = 3600 * time.Second
	DefaultServerCheckDelay  = 30 * time.Second
	DefaultQueryWaitTimeout  = 120 * time.Second
	DefaultServerResetQuery  = "DISCARD ALL"
)

// Config is the proxy's static configuration.
type Config struct {
	RWListen string // "" disables the rw endpoint
	ROListen string // "" disables the ro endpoint

	TLSMode  TLSMode
	CertFile string // PEM; reloaded by ReloadTLS (SIGHUP)
	KeyFile  string

	// ClientTLSCAFile, when set, makes the client TLS handshake ask for a
	// certificate and verify one that is given against this CA bundle
	// (a client with an unverifiable one fails the handshake); AuthCert
	// requires one. Read once by New.
	ClientTLSCAFile string

	BackendTLS    BackendTLSMode
	BackendCAFile string
	// BackendCertFile and BackendKeyFile are the certificate the proxy
	// presents to the servers when they ask (PostgreSQL's cert method, or
	// clientcert=verify-full). Read once by New.
	BackendCertFile string
	BackendKeyFile  string

	// AuthType is who authenticates clients; "" means AuthPassthrough.
	AuthType AuthType
	// AuthFile holds the verifiers (PgBouncer's userlist.txt format) the
	// proxy authenticates clients against; required unless AuthType is
	// passthrough. Read once by New.
	AuthFile string
	// AuthUser, instead of AuthFile, makes the proxy look users' verifiers
	// up in the cluster: it logs in to the primary as AuthUser with
	// AuthPassword (SCRAM required of the server) on AuthDatabase ("" means
	// "postgres") and runs AuthQuery ("" means DefaultAuthQuery) with the
	// user name as $1. Answers, unknown users included, are cached for
	// AuthCacheTTL (0 means DefaultAuthCacheTTL) and asked again after a
	// failed login.
	AuthUser     string
	AuthPassword string
	AuthQuery    string
	AuthDatabase string
	AuthCacheTTL time.Duration

	// AdminUsers may open the admin console: database AdminDatabase on
	// either listener, authenticated by the proxy (so not with
	// AuthPassthrough).
	AdminUsers []string
	// Version is what the console's SHOW VERSION reports.
	Version string
	// PoolMode is PoolNone or PoolSession; "" means PoolSession when the
	// proxy authenticates clients itself and PoolNone in passthrough.
	PoolMode PoolMode
	// PoolSize bounds the server connections of one pool (endpoint,
	// backend, user, database); 0 means no limit.
	PoolSize int
	// MaxDBConnections bounds the server connections to one database of
	// one backend, all users and endpoints together; 0 means no limit.
	MaxDBConnections int
	// ServerIdleTimeout closes a pooled connection idle that long (0 means
	// DefaultServerIdleTimeout).
	ServerIdleTimeout time.Duration
	// ServerLifetime closes a pooled connection that old when its client
	// leaves, instead of keeping it (0 means DefaultServerLifetime).
	ServerLifetime time.Duration
	// ServerResetQuery runs on a connection going back to the pool (""
	// means DefaultServerResetQuery).
	ServerResetQuery string
	// ServerCheckDelay: a pooled connection idle longer than this is
	// checked with an empty query before it is reused (0 means
	// DefaultServerCheckDelay).
	ServerCheckDelay time.Duration
	// QueryWaitTimeout bounds a client's wait for a pooled connection when
	// PoolSize or MaxDBConnections is reached (0 means
	// DefaultQueryWaitTimeout).
	QueryWaitTimeout time.Duration

	// MaxClientsPerEndpoint bounds an endpoint's authenticated sessions:
	// a client whose login the server accepts beyond it gets FATAL 53300
	// instead of its AuthenticationOk. 0 means DefaultMaxClients.
	MaxClientsPerEndpoint int
	// MaxPendingPerEndpoint bounds an endpoint's connections that are not
	// authenticated yet (TLS, startup packet, authentication), counted
	// apart so that sockets which never log in cannot use up
	// MaxClientsPerEndpoint. A connection beyond it is closed at accept,
	// after a FATAL 53300 it may not read. 0 means MaxClientsPerEndpoint,
	// so that every session a failover cuts can log in again at once.
	MaxPendingPerEndpoint int
	// StartupPacketTimeout bounds, from accept, the TLS handshake and the
	// startup packet: the part of the login before any backend connection
	// is opened, where the proxy waits on the client alone. 0 means 10s;
	// it is capped by StartupTimeout.
	StartupPacketTimeout time.Duration
	// StartupTimeout bounds the client's whole startup phase (TLS
	// handshake, startup packet, authentication) as PostgreSQL's
	// authentication_timeout does.
	StartupTimeout time.Duration
	// RouteWait is how long a new session waits for a backend (an election
	// in progress, say) before it gets FATAL 57P03.
	RouteWait time.Duration
	// ConnectTimeout bounds dialling a backend, TLS included.
	ConnectTimeout time.Duration
	// MaxMessageSize bounds a client message's length word (which counts
	// itself but not the type byte, as PostgreSQL's own limit does); a
	// larger one ends the session with FATAL 08P01. 0 means PostgreSQL's
	// limit of 1 GiB.
	MaxMessageSize int
	// DrainTimeout is how long a stopping proxy lets sessions finish their
	// transactions before it cuts them.
	DrainTimeout time.Duration
	// BufferSize is the relay buffer a copier borrows while it reads; an
	// idle plain-TCP session holds none.
	BufferSize int

	// CancelID (1..MaxCancelID) is carried by the cancel keys the proxy
	// issues when it authenticates clients itself (pid = CancelID<<22 |
	// seq); 0 means New picks one at random. The registry keeps it unique
	// among the cluster's live proxies (Server.SetCancelID).
	CancelID uint16
	// ForeignCancel, when not nil, gives the listener address of the live
	// proxy whose cancel ID is owner, so that a CancelRequest with a key it
	// issued is passed on to it; ok false drops the request as an unknown
	// key. It is called once per such CancelRequest and must not block
	// (read a cache). It is never asked about the proxy's own ID.
	ForeignCancel func(owner uint16) (addr string, ok bool)
}

// DefaultMaxClients is MaxClientsPerEndpoint's default. Every session is a
// PostgreSQL backend of its own, so the servers' max_connections (100 by
// default) is what a deployment meets first; the proxy's limit sits well
// above that and only bounds what a runaway pool or a connection leak can
// take from the proxy itself: at the defaults, 2 endpoints × (1000
// sessions + 1000 logging in) × 2 sockets is 8000 file descriptors, far
// below the unit's LimitNOFILE, so the proxy refuses with 53300 long before
// it would run out of descriptors (and fail its own etcd connection).
const DefaultMaxClients = 1000

// DefaultStartupPacketTimeout is StartupPacketTimeout's default: ample for
// a TLS handshake and one packet from a live client, short enough that a
// pending slot held by a silent socket comes back quickly.
const DefaultStartupPacketTimeout = 10 * time.Second

// Defaults fills unset fields with production defaults.
func (c *Config) Defaults() {
	if c.MaxClientsPerEndpoint == 0 {
		c.MaxClientsPerEndpoint = DefaultMaxClients
	}
	if c.MaxPendingPerEndpoint == 0 {
		c.MaxPendingPerEndpoint = c.MaxClientsPerEndpoint
	}
	if c.StartupPacketTimeout == 0 {
		c.StartupPacketTimeout = DefaultStartupPacketTimeout
	}
	if c.TLSMode == "" {
		c.TLSMode = TLSDisable
	}
	if c.BackendTLS == "" {
		c.BackendTLS = BackendTLSDisable
	}
	if c.AuthType == "" {
		c.AuthType = AuthPassthrough
	}
	if c.AuthUser != "" {
		if c.AuthQuery == "" {
			c.AuthQuery = DefaultAuthQuery
		}
		if c.AuthDatabase == "" {
			c.AuthDatabase = "postgres"
		}
		if c.AuthCacheTTL == 0 {
			c.AuthCacheTTL = DefaultAuthCacheTTL
		}
	}
	if c.PoolMode == "" {
		c.PoolMode = PoolNone
		if c.AuthType != AuthPassthrough {
			c.PoolMode = PoolSession
		}
	}
	if c.ServerIdleTimeout == 0 {
		c.ServerIdleTimeout = DefaultServerIdleTimeout
	}
	if c.ServerLifetime == 0 {
		c.ServerLifetime = DefaultServerLifetime
	}
	if c.ServerResetQuery == "" {
		c.ServerResetQuery = DefaultServerResetQuery
	}
	if c.ServerCheckDelay == 0 {
		c.ServerCheckDelay = DefaultServerCheckDelay
	}
	if c.QueryWaitTimeout == 0 {
		c.QueryWaitTimeout = DefaultQueryWaitTimeout
	}
	if c.StartupTimeout == 0 {
		c.StartupTimeout = 60 * time.Second // PostgreSQL's authentication_timeout
	}
	if c.RouteWait == 0 {
		c.RouteWait = 5 * time.Second
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = 5 * time.Second
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 30 * time.Second
	}
	if c.BufferSize == 0 {
		c.BufferSize = 32 << 10
	}
}

// Validate reports the first unusable setting, naming its config key.
func (c *Config) Validate() error {
	if c.RWListen == "" && c.ROListen == "" {
		return fmt.Errorf("rw_listen: at least one of rw_listen and ro_listen is required")
	}
	switch c.TLSMode {
	case TLSDisable:
	case TLSAllow, TLSRequire:
		if c.CertFile == "" || c.KeyFile == "" {
			return fmt.Errorf("tls_cert_file: tls_mode %s needs tls_cert_file and tls_key_file", c.TLSMode)
		}
		if _, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile); err != nil {
			return fmt.Errorf("tls_cert_file: %w", err)
		}
	default:
		return fmt.Errorf("tls_mode: %q is not one of disable, allow, require", c.TLSMode)
	}
	switch c.BackendTLS {
	case BackendTLSDisable, BackendTLSRequire:
	case BackendTLSVerifyCA:
		if c.BackendCAFile == "" {
			return fmt.Errorf("backend_tls_ca_file: backend_tls verify-ca needs a CA file")
		}
		if _, err := os.ReadFile(c.BackendCAFile); err != nil {
			return fmt.Errorf("backend_tls_ca_file: %w", err)
		}
	default:
		return fmt.Errorf("backend_tls: %q is not one of disable, require, verify-ca", c.BackendTLS)
	}
	if c.BackendCertFile != "" || c.BackendKeyFile != "" {
		if c.BackendTLS == BackendTLSDisable {
			return fmt.Errorf("backend_tls_cert_file: a certificate for the servers needs backend_tls require or verify-ca")
		}
		if _, err := tls.LoadX509KeyPair(c.BackendCertFile, c.BackendKeyFile); err != nil {
			return fmt.Errorf("backend_tls_cert_file: %w", err)
		}
	}
	if c.ClientTLSCAFile != "" {
		if c.TLSMode == TLSDisable {
			return fmt.Errorf("client_tls_ca_file: client certificates need tls_mode allow or require")
		}
		if _, err := loadCertPool(c.ClientTLSCAFile); err != nil {
			return fmt.Errorf("client_tls_ca_file: %w", err)
		}
	}
	switch c.AuthType {
	case AuthPassthrough:
		if c.AuthFile != "" || c.AuthUser != "" {
			return fmt.Errorf("auth_type: auth_file and auth_user are for the proxy's own authentication; with auth_type passthrough the server authenticates clients")
		}
		if len(c.AdminUsers) > 0 {
			return fmt.Errorf("admin_users: the admin console needs the proxy's own authentication (auth_type)")
		}
	case AuthSCRAM, AuthMD5, AuthTrust:
		switch {
		case c.AuthFile != "" && c.AuthUser != "":
			return fmt.Errorf("auth_file: auth_file and auth_user (auth_query) are exclusive: the verifiers come from one or the other")
		case c.AuthFile != "":
			if _, err := loadAuthFile(c.AuthFile); err != nil {
				return fmt.Errorf("auth_file: %w", err)
			}
		case c.AuthUser != "":
			if c.AuthPassword == "" {
				return fmt.Errorf("auth_password: auth_user %q needs its password (auth_password_file or env PHAROS_AUTH_PASSWORD)", c.AuthUser)
			}
			if !strings.Contains(c.AuthQuery, "$1") {
				return fmt.Errorf("auth_query: %q does not take the user name as $1", c.AuthQuery)
			}
			if c.AuthCacheTTL < 0 {
				return fmt.Errorf("auth_cache_ttl: must not be negative")
			}
		default:
			return fmt.Errorf("auth_file: auth_type %s needs auth_file (the users' verifiers in PgBouncer's userlist.txt format) or auth_user (to look them up in the cluster with auth_query)", c.AuthType)
		}
	case AuthCert:
		switch {
		case c.ClientTLSCAFile == "":
			return fmt.Errorf("client_tls_ca_file: auth_type cert needs the CA bundle that client certificates must verify against")
		case c.AuthUser != "":
			return fmt.Errorf("auth_user: auth_type cert checks no password, so there is nothing to look up; the servers' credentials for certificate users come from auth_file (or backend_tls_cert_file)")
		case c.AuthFile != "":
			if _, err := loadCertAuthFile(c.AuthFile); err != nil {
				return fmt.Errorf("auth_file: %w", err)
			}
		}
	default:
		return fmt.Errorf("auth_type: %q is not one of passthrough, scram-sha-256, md5, trust, cert", c.AuthType)
	}
	for _, u := range c.AdminUsers {
		if u == "" {
			return fmt.Errorf("admin_users: an empty user name")
		}
	}
	switch c.PoolMode {
	case PoolNone:
	case PoolSession:
		if c.AuthType == AuthPassthrough {
			return fmt.Errorf("pool_mode: session needs the proxy's own authentication (auth_type)")
		}
	default:
		return fmt.Errorf("pool_mode: %q is not one of none, session", c.PoolMode)
	}
	if c.PoolSize < 0 {
		return fmt.Errorf("pool_size: must not be negative (0 = no limit)")
	}
	if c.MaxDBConnections < 0 {
		return fmt.Errorf("max_db_connections: must not be negative (0 = no limit)")
	}
	if strings.ContainsRune(c.ServerResetQuery, 0) {
		return fmt.Errorf("server_reset_query: must not contain a NUL byte")
	}
	for _, d := range []struct {
		key string
		d   time.Duration
	}{
		{"server_idle_timeout", c.ServerIdleTimeout}, {"server_lifetime", c.ServerLifetime},
		{"server_check_delay", c.ServerCheckDelay}, {"query_wait_timeout", c.QueryWaitTimeout},
		{"startup_timeout", c.StartupTimeout}, {"startup_packet_timeout", c.StartupPacketTimeout},
		{"route_wait", c.RouteWait},
		{"connect_timeout", c.ConnectTimeout}, {"drain_timeout", c.DrainTimeout},
	} {
		if d.d < 0 {
			return fmt.Errorf("%s: must not be negative", d.key)
		}
	}
	if c.MaxClientsPerEndpoint < 0 {
		return fmt.Errorf("max_clients: must not be negative")
	}
	if c.MaxPendingPerEndpoint < 0 {
		return fmt.Errorf("max_pending_clients: must not be negative")
	}
	if c.MaxMessageSize < 0 || (c.MaxMessageSize > 0 && c.MaxMessageSize < 1024) {
		return fmt.Errorf("max_message_size: must be 0 (no limit) or at least 1024 bytes")
	}
	if c.CancelID > MaxCancelID {
		return fmt.Errorf("cancel_id: %d is not in 1..%d (0 picks one)", c.CancelID, MaxCancelID)
	}
	if c.BufferSize < 4096 {
		return fmt.Errorf("buffer_size: must be at least 4096 bytes")
	}
	return nil
}
