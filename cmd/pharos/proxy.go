package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/etcdclient"
	"github.com/pharos-ha/pharos/internal/proxyreg"
	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/proxy"
	"github.com/pharos-ha/pharos/router"
)

// proxySettings is the proxy's config file (YAML keys) and flags (the same
// names with dashes).
type proxySettings struct {
	RWListen      string `yaml:"rw_listen"`
	ROListen      string `yaml:"ro_listen"`
	MetricsListen string `yaml:"metrics_listen"`
	LogLevel      string `yaml:"log_level"`
	// Pprof serves /debug/pprof/ on the metrics listener, for profiling.
	Pprof bool `yaml:"pprof"`
	// Threads caps the OS threads running Go code (GOMAXPROCS); 0 keeps
	// Go's default of one per CPU.
	Threads int `yaml:"threads"`

	Source   string   `yaml:"source"`
	Backends []string `yaml:"backends"`
	// Name is the proxy's name in the registry (source pharos only);
	// "" means the host name and the rw listener's port.
	Name string `yaml:"name"`

	// The etcd-driven sources (pharos, patroni).
	EtcdSettings     `yaml:",inline"`
	Cluster          string `yaml:"cluster"`
	PatroniNamespace string `yaml:"patroni_namespace"`
	PatroniScope     string `yaml:"patroni_scope"`

	// HealthChecks adds the static source's checks to an etcd source, where
	// they can only exclude members.
	HealthChecks       bool     `yaml:"health_checks"`
	HealthInterval     duration `yaml:"health_check_interval"`
	HealthTimeout      duration `yaml:"health_check_timeout"`
	HealthUser         string   `yaml:"health_user"`
	HealthPassword     string   `yaml:"health_password"`
	HealthPasswordFile string   `yaml:"health_password_file"`
	HealthDatabase     string   `yaml:"health_database"`
	HealthSSLMode      string   `yaml:"health_sslmode"`
	HealthRequireAuth  string   `yaml:"health_require_auth"`

	MaxLag              byteSize `yaml:"max_lag"`
	ROFallbackToPrimary bool     `yaml:"ro_fallback_to_primary"`

	TLSMode       string `yaml:"tls_mode"`
	TLSCertFile   string `yaml:"tls_cert_file"`
	TLSKeyFile    string `yaml:"tls_key_file"`
	BackendTLS    string `yaml:"backend_tls"`
	BackendCAFile string `yaml:"backend_tls_ca_file"`
	// The proxy's client certificate towards the servers, and the CA
	// that clients' certificates must verify against.
	BackendCertFile string `yaml:"backend_tls_cert_file"`
	BackendKeyFile  string `yaml:"backend_tls_key_file"`
	ClientTLSCAFile string `yaml:"client_tls_ca_file"`

	AuthType string `yaml:"auth_type"`
	AuthFile string `yaml:"auth_file"`
	// auth_user and auth_query: the verifiers from the cluster instead of
	// auth_file.
	AuthUser         string   `yaml:"auth_user"`
	AuthPassword     string   `yaml:"auth_password"`
	AuthPasswordFile string   `yaml:"auth_password_file"`
	AuthQuery        string   `yaml:"auth_query"`
	AuthDatabase     string   `yaml:"auth_dbname"`
	AuthCacheTTL     duration `yaml:"auth_cache_ttl"`
	// AdminUsers may open the admin console (database pharos).
	AdminUsers []string `yaml:"admin_users"`

	PoolMode          string   `yaml:"pool_mode"` // "": session with the proxy's own authentication, none in passthrough
	PoolSize          int      `yaml:"pool_size"`
	MaxDBConnections  int      `yaml:"max_db_connections"`
	ServerIdleTimeout duration `yaml:"server_idle_timeout"`
	ServerLifetime    duration `yaml:"server_lifetime"`
	ServerResetQuery  string   `yaml:"server_reset_query"`
	ServerCheckDelay  duration `yaml:"server_check_delay"`
	QueryWaitTimeout  duration `yaml:"query_wait_timeout"`

	MaxClients           int      `yaml:"max_clients"`
	MaxPendingClients    int      `yaml:"max_pending_clients"` // 0: max_clients
	StartupPacketTimeout duration `yaml:"startup_packet_timeout"`
	StartupTimeout       duration `yaml:"startup_timeout"`
	RouteWait            duration `yaml:"route_wait"`
	ConnectTimeout       duration `yaml:"connect_timeout"`
	MaxMessageSize       byteSize `yaml:"max_message_size"`
	DrainTimeout         duration `yaml:"drain_timeout"`
}

func defaultProxySettings() proxySettings {
	return proxySettings{
		RWListen:             "127.0.0.1:6432",
		ROListen:             "127.0.0.1:6433",
		MetricsListen:        "127.0.0.1:6434",
		LogLevel:             "info",
		Source:               "static",
		PatroniNamespace:     "/service",
		HealthInterval:       duration(time.Second),
		HealthTimeout:        duration(800 * time.Millisecond),
		HealthUser:           "pharos_monitor",
		HealthDatabase:       "postgres",
		HealthSSLMode:        "prefer",
		HealthRequireAuth:    router.DefaultRequireAuth,
		TLSMode:              string(proxy.TLSDisable),
		BackendTLS:           string(proxy.BackendTLSDisable),
		AuthType:             string(proxy.AuthPassthrough),
		AuthQuery:            proxy.DefaultAuthQuery,
		AuthDatabase:         "postgres",
		AuthCacheTTL:         duration(proxy.DefaultAuthCacheTTL),
		ServerIdleTimeout:    duration(proxy.DefaultServerIdleTimeout),
		ServerLifetime:       duration(proxy.DefaultServerLifetime),
		ServerResetQuery:     proxy.DefaultServerResetQuery,
		ServerCheckDelay:     duration(proxy.DefaultServerCheckDelay),
		QueryWaitTimeout:     duration(proxy.DefaultQueryWaitTimeout),
		MaxClients:           proxy.DefaultMaxClients,
		StartupPacketTimeout: duration(proxy.DefaultStartupPacketTimeout),
		StartupTimeout:       duration(60 * time.Second),
		RouteWait:            duration(5 * time.Second),
		ConnectTimeout:       duration(5 * time.Second),
		DrainTimeout:         duration(30 * time.Second),
	}
}

// parseProxyArgs reads --config and the flags; flags override the file.
func parseProxyArgs(args []string, stderr io.Writer) (proxySettings, error) {
	fs := flag.NewFlagSet("pharos proxy", flag.ContinueOnError)
	configPath := fs.String("config", "", "YAML config file (flags override it)")
	o := &overrides[proxySettings]{fs: fs}
	str := func(name, usage string, f func(*proxySettings) *string) { bind(o, name, usage, parseString, f) }
	dur := func(name, usage string, f func(*proxySettings) *duration) { bind(o, name, usage, parseDuration, f) }
	str("rw-listen", "read-write endpoint address (\"\" to disable)", func(s *proxySettings) *string { return &s.RWListen })
	str("ro-listen", "read-only endpoint address (\"\" to disable)", func(s *proxySettings) *string { return &s.ROListen })
	str("metrics-listen", "Prometheus /metrics address (\"\" to disable)", func(s *proxySettings) *string { return &s.MetricsListen })
	bind(o, "pprof", "serve /debug/pprof/ on the metrics listener", parseBool, func(s *proxySettings) *bool { return &s.Pprof })
	bind(o, "threads", "OS threads running the relay (GOMAXPROCS; 0: one per CPU)", parseInt, func(s *proxySettings) *int { return &s.Threads })
	str("log-level", "debug, info, warn or error", func(s *proxySettings) *string { return &s.LogLevel })
	str("source", "topology source: static (health checks on --backends), pharos or patroni (etcd)", func(s *proxySettings) *string { return &s.Source })
	bind(o, "backends", "comma-separated host:port list for --source static", parseList, func(s *proxySettings) *[]string { return &s.Backends })
	str("name", "with --source pharos, the proxy's name in etcd (proxies/<name>; default host name:rw port)", func(s *proxySettings) *string { return &s.Name })
	bindEtcdFlags(o, func(s *proxySettings) *EtcdSettings { return &s.EtcdSettings })
	str("cluster", "cluster name in etcd (pharos: /pharos/<cluster>/; patroni: the scope)", func(s *proxySettings) *string { return &s.Cluster })
	str("patroni-namespace", "Patroni's namespace (its default is /service)", func(s *proxySettings) *string { return &s.PatroniNamespace })
	str("patroni-scope", "Patroni's scope (default: --cluster)", func(s *proxySettings) *string { return &s.PatroniScope })
	bind(o, "health-checks", "with --source pharos or patroni, also health-check members and exclude those that fail", parseBool, func(s *proxySettings) *bool { return &s.HealthChecks })
	dur("health-check-interval", "interval between health checks", func(s *proxySettings) *duration { return &s.HealthInterval })
	dur("health-check-timeout", "timeout of one health check (below the interval)", func(s *proxySettings) *duration { return &s.HealthTimeout })
	str("health-user", "user the health checks log in as", func(s *proxySettings) *string { return &s.HealthUser })
	str("health-password-file", "file holding the health user's password (or env PHAROS_HEALTH_PASSWORD)", func(s *proxySettings) *string { return &s.HealthPasswordFile })
	str("health-database", "database the health checks connect to", func(s *proxySettings) *string { return &s.HealthDatabase })
	str("health-sslmode", "sslmode of the health-check connections", func(s *proxySettings) *string { return &s.HealthSSLMode })
	str("health-require-auth", "authentication methods a backend may ask the health checks for (libpq require_auth, e.g. scram-sha-256,md5)", func(s *proxySettings) *string { return &s.HealthRequireAuth })
	bind(o, "max-lag", "exclude replicas lagging more than this from ro (e.g. 16MB; 0 = no limit)", parseByteSize, func(s *proxySettings) *byteSize { return &s.MaxLag })
	bind(o, "ro-fallback-to-primary", "let ro use the primary when no replica is eligible", parseBool, func(s *proxySettings) *bool { return &s.ROFallbackToPrimary })
	str("tls-mode", "client TLS: disable, allow or require", func(s *proxySettings) *string { return &s.TLSMode })
	str("tls-cert-file", "PEM certificate for client TLS (reloaded on SIGHUP)", func(s *proxySettings) *string { return &s.TLSCertFile })
	str("tls-key-file", "PEM key for client TLS (reloaded on SIGHUP)", func(s *proxySettings) *string { return &s.TLSKeyFile })
	str("backend-tls", "backend TLS: disable, require or verify-ca", func(s *proxySettings) *string { return &s.BackendTLS })
	str("backend-tls-ca-file", "CA bundle for backend-tls verify-ca", func(s *proxySettings) *string { return &s.BackendCAFile })
	str("backend-tls-cert-file", "PEM certificate the proxy presents to servers that ask for one (with --backend-tls-key-file)", func(s *proxySettings) *string { return &s.BackendCertFile })
	str("backend-tls-key-file", "PEM key of --backend-tls-cert-file", func(s *proxySettings) *string { return &s.BackendKeyFile })
	str("client-tls-ca-file", "CA bundle client certificates must verify against (asked for when set; required by auth-type cert)", func(s *proxySettings) *string { return &s.ClientTLSCAFile })
	str("auth-type", "who authenticates clients: passthrough (the server, through the proxy), scram-sha-256, md5 or trust (the proxy, against --auth-file), cert (the proxy, by client certificate)", func(s *proxySettings) *string { return &s.AuthType })
	str("auth-file", "users' verifiers in PgBouncer's userlist.txt format, for auth-type other than passthrough", func(s *proxySettings) *string { return &s.AuthFile })
	str("auth-user", "instead of --auth-file: the user the proxy logs in to the primary as to run --auth-query", func(s *proxySettings) *string { return &s.AuthUser })
	str("auth-password-file", "file holding the auth user's password (or env PHAROS_AUTH_PASSWORD)", func(s *proxySettings) *string { return &s.AuthPasswordFile })
	str("auth-query", "query returning a user's name and verifier, the user name as $1", func(s *proxySettings) *string { return &s.AuthQuery })
	str("auth-dbname", "database the auth query runs in", func(s *proxySettings) *string { return &s.AuthDatabase })
	bind(o, "admin-users", "comma-separated users who may open the admin console (database pharos; needs auth-type other than passthrough)", parseList, func(s *proxySettings) *[]string { return &s.AdminUsers })
	dur("auth-cache-ttl", "how long a looked-up verifier (or an unknown user) is cached; a failed login asks again", func(s *proxySettings) *duration { return &s.AuthCacheTTL })
	str("pool-mode", "none (a server connection per client) or session (pooled; the default with the proxy's own authentication)", func(s *proxySettings) *string { return &s.PoolMode })
	bind(o, "pool-size", "server connections per pool (endpoint, backend, user, database); 0 = no limit", parseInt, func(s *proxySettings) *int { return &s.PoolSize })
	bind(o, "max-db-connections", "server connections per database and backend, all pools together; 0 = no limit", parseInt, func(s *proxySettings) *int { return &s.MaxDBConnections })
	dur("server-idle-timeout", "close a pooled server connection idle this long", func(s *proxySettings) *duration { return &s.ServerIdleTimeout })
	dur("server-lifetime", "close a pooled server connection this old when its client leaves", func(s *proxySettings) *duration { return &s.ServerLifetime })
	str("server-reset-query", "query run on a server connection going back to the pool", func(s *proxySettings) *string { return &s.ServerResetQuery })
	dur("server-check-delay", "check a pooled server connection idle longer than this (empty query) before reuse", func(s *proxySettings) *duration { return &s.ServerCheckDelay })
	dur("query-wait-timeout", "time a client waits for a pooled server connection at pool-size or max-db-connections", func(s *proxySettings) *duration { return &s.QueryWaitTimeout })
	bind(o, "max-clients", "authenticated sessions per endpoint", parseInt, func(s *proxySettings) *int { return &s.MaxClients })
	bind(o, "max-pending-clients", "connections per endpoint still logging in (0 = max-clients); more are closed at once", parseInt, func(s *proxySettings) *int { return &s.MaxPendingClients })
	dur("startup-packet-timeout", "time a new connection has to complete TLS and send its startup packet", func(s *proxySettings) *duration { return &s.StartupPacketTimeout })
	dur("startup-timeout", "time a client has to complete TLS and authentication", func(s *proxySettings) *duration { return &s.StartupTimeout })
	dur("route-wait", "time a new session waits for a backend before 57P03", func(s *proxySettings) *duration { return &s.RouteWait })
	dur("connect-timeout", "backend connect timeout", func(s *proxySettings) *duration { return &s.ConnectTimeout })
	bind(o, "max-message-size", "largest client message (0 = PostgreSQL's 1GB)", parseByteSize, func(s *proxySettings) *byteSize { return &s.MaxMessageSize })
	dur("drain-timeout", "on SIGTERM, time sessions get to finish their transactions", func(s *proxySettings) *duration { return &s.DrainTimeout })

	return o.parse(args, configPath, defaultProxySettings(), stderr)
}

// proxyConfig turns settings into the packages' configs, validating them.
func (ps proxySettings) proxyConfig() (proxy.Config, error) {
	cfg := proxy.Config{
		RWListen:              ps.RWListen,
		ROListen:              ps.ROListen,
		TLSMode:               proxy.TLSMode(ps.TLSMode),
		CertFile:              ps.TLSCertFile,
		KeyFile:               ps.TLSKeyFile,
		BackendTLS:            proxy.BackendTLSMode(ps.BackendTLS),
		BackendCAFile:         ps.BackendCAFile,
		BackendCertFile:       ps.BackendCertFile,
		BackendKeyFile:        ps.BackendKeyFile,
		ClientTLSCAFile:       ps.ClientTLSCAFile,
		AuthType:              proxy.AuthType(ps.AuthType),
		AuthFile:              ps.AuthFile,
		AuthUser:              ps.AuthUser,
		AuthQuery:             ps.AuthQuery,
		AuthDatabase:          ps.AuthDatabase,
		AuthCacheTTL:          time.Duration(ps.AuthCacheTTL),
		AdminUsers:            ps.AdminUsers,
		Version:               version,
		MaxClientsPerEndpoint: ps.MaxClients,
		MaxPendingPerEndpoint: ps.MaxPendingClients,
		StartupPacketTimeout:  time.Duration(ps.StartupPacketTimeout),
		StartupTimeout:        time.Duration(ps.StartupTimeout),
		RouteWait:             time.Duration(ps.RouteWait),
		ConnectTimeout:        time.Duration(ps.ConnectTimeout),
		MaxMessageSize:        int(ps.MaxMessageSize),
		DrainTimeout:          time.Duration(ps.DrainTimeout),
		PoolMode:              proxy.PoolMode(ps.PoolMode),
		PoolSize:              ps.PoolSize,
		MaxDBConnections:      ps.MaxDBConnections,
		ServerIdleTimeout:     time.Duration(ps.ServerIdleTimeout),
		ServerLifetime:        time.Duration(ps.ServerLifetime),
		ServerResetQuery:      ps.ServerResetQuery,
		ServerCheckDelay:      time.Duration(ps.ServerCheckDelay),
		QueryWaitTimeout:      time.Duration(ps.QueryWaitTimeout),
	}
	if ps.AuthUser != "" {
		pw, err := readSecret("auth_password", ps.AuthPassword, ps.AuthPasswordFile, "PHAROS_AUTH_PASSWORD")
		if err != nil {
			return cfg, err
		}
		cfg.AuthPassword = pw
	}
	if ps.AuthCacheTTL <= 0 && ps.AuthUser != "" {
		return cfg, usageErrorf("auth_cache_ttl: must be positive")
	}
	for _, d := range []struct {
		key string
		v   duration
	}{{"server_idle_timeout", ps.ServerIdleTimeout}, {"server_lifetime", ps.ServerLifetime},
		{"server_check_delay", ps.ServerCheckDelay}, {"query_wait_timeout", ps.QueryWaitTimeout}} {
		if d.v <= 0 {
			return cfg, usageErrorf("%s: must be positive", d.key)
		}
	}
	if strings.TrimSpace(ps.ServerResetQuery) == "" {
		return cfg, usageErrorf("server_reset_query: must not be empty (a pooled connection is reset before the next client gets it)")
	}
	if ps.MaxClients < 1 {
		// 0 used to mean no limit; a limit is what keeps the proxy from
		// running out of descriptors, so there is none to turn off.
		return cfg, usageErrorf("max_clients: must be at least 1 (default %d; there is no unlimited setting)", proxy.DefaultMaxClients)
	}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return cfg, usageErrorf("%v", err)
	}
	return cfg, nil
}

// healthConfig is the health-check part of the settings, not validated.
func (ps proxySettings) healthConfig() (router.StaticConfig, error) {
	password, err := readSecret("health_password", ps.HealthPassword, ps.HealthPasswordFile, "PHAROS_HEALTH_PASSWORD")
	if err != nil {
		return router.StaticConfig{}, err
	}
	return router.StaticConfig{
		Backends:    ps.Backends,
		Interval:    time.Duration(ps.HealthInterval),
		Timeout:     time.Duration(ps.HealthTimeout),
		User:        ps.HealthUser,
		Password:    password,
		Database:    ps.HealthDatabase,
		SSLMode:     ps.HealthSSLMode,
		RequireAuth: ps.HealthRequireAuth,
	}, nil
}

func (ps proxySettings) staticConfig() (router.StaticConfig, error) {
	cfg, err := ps.healthConfig()
	if err != nil {
		return cfg, err
	}
	if err := cfg.Validate(); err != nil {
		return cfg, usageErrorf("%v", err)
	}
	return cfg, nil
}

func runProxy(ctx context.Context, args []string, _ io.Writer, stderr io.Writer) int {
	settings, err := parseProxyArgs(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(stderr, "pharos proxy: %v\n", err)
		return exitUsage
	}
	log, err := newLogger(stderr, settings.LogLevel)
	if err != nil {
		fmt.Fprintf(stderr, "pharos proxy: %v\n", err)
		return exitUsage
	}
	if settings.Threads < 0 {
		fmt.Fprintln(stderr, "pharos proxy: threads: must not be negative")
		return exitUsage
	}
	if settings.Threads > 0 {
		runtime.GOMAXPROCS(settings.Threads)
	}
	p, err := newProxyStack(settings, log)
	if err != nil {
		fmt.Fprintf(stderr, "pharos proxy: %v\n", err)
		var ue *usageError
		if errors.As(err, &ue) {
			return exitUsage
		}
		return exitFailure
	}
	// The secrets are read (newProxyStack): out of the environment.
	scrubSecretEnv()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if err := p.run(ctx, hup); err != nil {
		log.Error("proxy stopped", "err", err)
		return exitFailure
	}
	return exitOK
}

// proxyStack is a proxy with its router, topology source and metrics
// endpoint, bound and ready to run. The demo embeds one too.
type proxyStack struct {
	log         *slog.Logger
	server      *proxy.Server
	router      *router.Router
	source      topologySource
	closeSource func()
	metrics     net.Listener // nil when disabled
	handler     http.Handler
	pprof       bool
	// The registry (source pharos only; nil otherwise).
	registrar *proxyreg.Registrar
	directory *proxyreg.Directory
}

func newProxyStack(settings proxySettings, log *slog.Logger) (*proxyStack, error) {
	pcfg, err := settings.proxyConfig()
	if err != nil {
		return nil, err
	}
	reg := metrics.NewRegistry()
	metrics.RegisterBuildInfo(reg, "proxy", version)
	m := metrics.NewProxy(reg)
	src, etcdCli, closeSource, err := settings.newSource(log, m, reg)
	if err != nil {
		return nil, err
	}
	// Set before Serve starts; the closure lets New take it before the
	// listeners (and so the default name) are known.
	var directory *proxyreg.Directory
	if etcdCli != nil && settings.Source == "pharos" {
		pcfg.ForeignCancel = func(owner uint16) (string, bool) { return directory.CancelAddr(owner) }
	}
	r := router.New(router.Config{MaxLagBytes: int64(settings.MaxLag), ROFallbackToPrimary: settings.ROFallbackToPrimary}, log, m)
	srv, err := proxy.New(pcfg, r, log, m)
	if err != nil {
		closeSource()
		return nil, usageErrorf("%v", err)
	}
	if err := srv.Listen(); err != nil {
		closeSource()
		return nil, err
	}
	st := &proxyStack{log: log, server: srv, router: r, source: src, closeSource: closeSource, handler: metrics.Handler(reg), pprof: settings.Pprof}
	if settings.MetricsListen != "" {
		ln, err := net.Listen("tcp", settings.MetricsListen)
		if err != nil {
			srv.CloseListeners()
			closeSource()
			return nil, fmt.Errorf("metrics_listen %s: %w", settings.MetricsListen, err)
		}
		st.metrics = ln
	}
	if pcfg.ForeignCancel != nil {
		registrar, dir, err := settings.newRegistry(etcdCli, st, m, log)
		if err != nil {
			srv.CloseListeners()
			if st.metrics != nil {
				_ = st.metrics.Close()
			}
			closeSource()
			return nil, err
		}
		m.RegisterRegistry(reg)
		m.CancelID.Set(float64(srv.CancelID())) // until the registration claims one
		st.registrar, st.directory, directory = registrar, dir, dir
	}
	return st, nil
}

// registryStartWait bounds how long a starting proxy waits for its first
// registration before it accepts clients, so that the keys it issues carry
// the cancel ID it claimed; with etcd unreachable it serves without (the
// registrar keeps trying, the ID may then change, keys already issued keep
// working on this proxy).
const registryStartWait = 2 * time.Second

// newRegistry builds the proxy's registrar and its directory of the other
// proxies, for source pharos.
func (ps proxySettings) newRegistry(cli *clientv3.Client, st *proxyStack, m *metrics.Proxy, log *slog.Logger) (*proxyreg.Registrar, *proxyreg.Directory, error) {
	keys, err := cluster.NewKeys(ps.Cluster)
	if err != nil {
		return nil, nil, usageErrorf("cluster: %v", err)
	}
	host, err := os.Hostname()
	if err != nil {
		host = "localhost"
	}
	var lst cluster.ProxyListeners
	if a := st.server.Addr(router.RW); a != nil {
		lst.RW = advertised(a.String(), host)
	}
	if a := st.server.Addr(router.RO); a != nil {
		lst.RO = advertised(a.String(), host)
	}
	if st.metrics != nil {
		lst.Metrics = advertised(st.metrics.Addr().String(), host)
	}
	name := ps.Name
	if name == "" {
		port := "0"
		if a := lst.CancelAddr(); a != "" {
			_, port, _ = net.SplitHostPort(a)
		}
		name = host + ":" + port
	}
	if !cluster.ValidProxyName(name) {
		return nil, nil, usageErrorf("name: %q is not a proxy name: at most 128 letters, digits, '-', '_', '.' and ':'", name)
	}
	rec := cluster.Proxy{Name: name, Version: version, Listeners: lst, StartedAt: time.Now().UTC().Truncate(time.Second)}
	registrar, err := proxyreg.NewRegistrar(proxyreg.Config{
		Client: cli, Keys: keys, Record: rec,
		CancelID: st.server.CancelID, SetCancelID: st.server.SetCancelID,
		Log: log, Metrics: m,
	})
	if err != nil {
		return nil, nil, usageErrorf("%v", err)
	}
	return registrar, proxyreg.NewDirectory(cli, keys, name, log), nil
}

// advertised is a bound address as other proxies can dial it: an
// unspecified host (0.0.0.0, ::) becomes the host name.
func advertised(addr, hostname string) string {
	h, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(h); h == "" || (ip != nil && ip.IsUnspecified()) {
		h = hostname
	}
	return net.JoinHostPort(h, port)
}

// topologySource feeds the router until its context ends.
type topologySource interface {
	Run(ctx context.Context, r *router.Router) error
}

// newSource builds the configured topology source, its etcd client (nil
// for static) and a function that releases what it holds (the client).
func (ps proxySettings) newSource(log *slog.Logger, m *metrics.Proxy, reg prometheus.Registerer) (topologySource, *clientv3.Client, func(), error) {
	nothing := func() {}
	switch ps.Source {
	case "static":
		scfg, err := ps.staticConfig()
		if err != nil {
			return nil, nil, nothing, err
		}
		src, err := router.NewStatic(scfg, log, m)
		if err != nil {
			return nil, nil, nothing, usageErrorf("%v", err)
		}
		return src, nil, nothing, nil
	case "pharos", "patroni":
	default:
		return nil, nil, nothing, usageErrorf("source: %q is not one of static, pharos, patroni", ps.Source)
	}
	if len(ps.Etcd) == 0 {
		return nil, nil, nothing, usageErrorf("etcd: source %s needs at least one etcd endpoint", ps.Source)
	}
	var format router.Format
	if ps.Source == "pharos" {
		keys, err := cluster.NewKeys(ps.Cluster)
		if err != nil {
			return nil, nil, nothing, usageErrorf("cluster: %v", err)
		}
		format = router.NewPharosFormat(keys, log)
	} else {
		scope := ps.PatroniScope
		if scope == "" {
			scope = ps.Cluster
		}
		keys, err := cluster.NewPatroniKeys(ps.PatroniNamespace, scope)
		if err != nil {
			return nil, nil, nothing, usageErrorf("patroni_scope: %v", err)
		}
		format = router.NewPatroniFormat(keys, log)
	}
	ecfg, err := ps.etcdConfig()
	if err != nil {
		return nil, nil, nothing, err
	}
	client, err := etcdclient.New(ecfg)
	if err != nil {
		return nil, nil, nothing, usageErrorf("etcd: %v", err)
	}
	m.RegisterEtcd(reg)
	src := router.NewEtcd(client, format, 0, log, m)
	if ps.HealthChecks {
		hcfg, err := ps.healthConfig()
		if err != nil {
			_ = client.Close()
			return nil, nil, nothing, err
		}
		checker, err := router.NewHealthChecker(hcfg, log, m)
		if err != nil {
			_ = client.Close()
			return nil, nil, nothing, usageErrorf("%v", err)
		}
		src.WithHealthChecks(checker)
	}
	return src, client, func() { _ = client.Close() }, nil
}

// httpTimeouts bound how long a client of an HTTP listener can hold a
// connection without finishing a request.
type httpTimeouts struct {
	readHeader time.Duration // from accept (or the last response) to the end of the headers
	read       time.Duration // from accept to the end of the request, body included
	idle       time.Duration // a kept-alive connection between requests
}

// metricsTimeouts are the metrics listener's. Its requests are bodiless
// GETs, so seconds are plenty; idle outlasts Prometheus's usual scrape
// interval (up to a minute), so a scraper keeps its connection. There is no
// write timeout: /debug/pprof/profile writes only after sampling for
// ?seconds= (30 by default).
var metricsTimeouts = httpTimeouts{readHeader: 5 * time.Second, read: 10 * time.Second, idle: 90 * time.Second}

// newMetricsServer is the metrics listener's HTTP server: without these
// bounds a client that connects and trickles its request (or keeps an idle
// connection) holds a socket and a goroutine forever.
func newMetricsServer(h http.Handler, t httpTimeouts) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: t.readHeader,
		ReadTimeout:       t.read,
		IdleTimeout:       t.idle,
		MaxHeaderBytes:    64 << 10,
	}
}

// run serves until ctx ends, then drains; hup reloads what RELOAD does.
func (p *proxyStack) run(ctx context.Context, hup <-chan os.Signal) error {
	log := p.log
	log.Info("proxy listening", "rw", p.server.Addr(router.RW), "ro", p.server.Addr(router.RO))
	srcCtx, stopSource := context.WithCancel(context.Background())
	defer stopSource()
	defer p.closeSource()
	g, gctx := errgroup.WithContext(ctx)
	// The source outlives ctx: draining sessions still need fencing.
	g.Go(func() error { return p.source.Run(srcCtx, p.router) })
	if p.registrar != nil {
		// So does the registration: the record stays while sessions drain
		// (the listeners are closed by then, so cancel requests other
		// proxies pass on fail and are counted) and the lease is revoked
		// once Serve returns.
		g.Go(func() error { return p.registrar.Run(srcCtx) })
		g.Go(func() error { return p.directory.Run(srcCtx) })
		t := time.NewTimer(registryStartWait)
		select {
		case <-p.registrar.Ready():
		case <-t.C:
			log.Warn("not registered in etcd yet; serving, the registration goes on trying", "waited", registryStartWait)
		case <-gctx.Done():
		}
		t.Stop()
	}
	g.Go(func() error {
		defer stopSource()
		return p.server.Serve(gctx)
	})
	if p.metrics != nil {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", p.handler)
		if p.pprof {
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		}
		hs := newMetricsServer(mux, metricsTimeouts)
		g.Go(func() error {
			if err := hs.Serve(p.metrics); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("metrics server: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			return hs.Shutdown(sctx)
		})
	}
	g.Go(func() error {
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-hup:
				// As the console's RELOAD: the TLS certificate, auth_file and
				// the auth_query cache; what fails keeps its old state.
				log.Info("SIGHUP: reloading")
				_ = p.server.Reload() // logs what failed
			}
		}
	})
	return g.Wait()
}
