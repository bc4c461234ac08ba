package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/pharos-ha/pharos/haagent"
	"github.com/pharos-ha/pharos/haagent/core"
	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/etcdclient"
	"github.com/pharos-ha/pharos/internal/pgproc"
	"github.com/pharos-ha/pharos/internal/restapi"
	"github.com/pharos-ha/pharos/internal/watchdog"
)

// agentSettings are the agent's config-file keys (and, with dashes, its
// flags).
type agentSettings struct {
	Name      string `yaml:"name"`
	DataDir   string `yaml:"data_dir"`
	BinDir    string `yaml:"bin_dir"`
	PGPort    int    `yaml:"pg_port"`
	PGListen  string `yaml:"pg_listen"`
	Host      string `yaml:"host"`
	SocketDir string `yaml:"socket_dir"`
	LogLevel  string `yaml:"log_level"`

	Cluster      string `yaml:"cluster"`
	EtcdSettings `yaml:",inline"`

	SuperUser               string `yaml:"superuser"`
	SuperPassword           string `yaml:"superuser_password"`
	SuperPasswordFile       string `yaml:"superuser_password_file"`
	ReplicationUser         string `yaml:"replication_user"`
	ReplicationPassword     string `yaml:"replication_password"`
	ReplicationPasswordFile string `yaml:"replication_password_file"`
	MonitorUser             string `yaml:"monitor_user"`
	MonitorPassword         string `yaml:"monitor_password"`
	MonitorPasswordFile     string `yaml:"monitor_password_file"`
	ProxyAuthUser           string `yaml:"proxy_auth_user"`
	ProxyAuthPassword       string `yaml:"proxy_auth_password"`
	ProxyAuthPasswordFile   string `yaml:"proxy_auth_password_file"`
	RequireAuth             string `yaml:"require_auth"`

	TTL                  duration          `yaml:"ttl"`
	LoopWait             duration          `yaml:"loop_wait"`
	RetryTimeout         duration          `yaml:"retry_timeout"`
	SafetyMargin         duration          `yaml:"safety_margin"`
	MaximumLagOnFailover byteSize          `yaml:"maximum_lag_on_failover"`
	CrashRestartTimeout  duration          `yaml:"crash_restart_timeout"`
	AutoReinit           bool              `yaml:"auto_reinit"`
	CloneMaxRate         byteSize          `yaml:"clone_max_rate"`
	NoFailover           bool              `yaml:"nofailover"`
	NoLoadBalance        bool              `yaml:"noloadbalance"`
	FailoverPriority     int               `yaml:"failover_priority"`
	Parameters           map[string]string `yaml:"parameters"`
	PGHBA                []string          `yaml:"pg_hba"`

	APIListen       string `yaml:"api_listen"`
	APIUsername     string `yaml:"api_username"`
	APIPassword     string `yaml:"api_password"`
	APIPasswordFile string `yaml:"api_password_file"`
	APIToken        string `yaml:"api_token"`
	APITokenFile    string `yaml:"api_token_file"`
	APICert         string `yaml:"api_cert"`
	APIKey          string `yaml:"api_key"`

	Watchdog       string `yaml:"watchdog"`
	WatchdogDriver string `yaml:"watchdog_driver"`
	WatchdogDevice string `yaml:"watchdog_device"`

	OnStart         string   `yaml:"on_start"`
	OnStop          string   `yaml:"on_stop"`
	OnRestart       string   `yaml:"on_restart"`
	OnRoleChange    string   `yaml:"on_role_change"`
	CallbackTimeout duration `yaml:"callback_timeout"`
}

func defaultAgentSettings() agentSettings {
	t := core.DefaultTiming()
	return agentSettings{
		PGListen:             "127.0.0.1",
		Host:                 "127.0.0.1",
		LogLevel:             "info",
		SuperUser:            "postgres",
		ReplicationUser:      "replicator",
		MonitorUser:          "pharos_monitor",
		ProxyAuthUser:        "pharos_auth",
		RequireAuth:          haagent.DefaultRequireAuth,
		TTL:                  duration(t.TTL),
		LoopWait:             duration(t.LoopWait),
		RetryTimeout:         duration(t.RetryTimeout),
		SafetyMargin:         duration(t.SafetyMargin),
		MaximumLagOnFailover: core.DefaultMaximumLagOnFailover,
		CrashRestartTimeout:  duration(core.DefaultCrashRestartTimeout),
		CallbackTimeout:      duration(30 * time.Second),
		Watchdog:             string(core.WatchdogAutomatic),
		WatchdogDriver:       "device",
		WatchdogDevice:       "/dev/watchdog",
	}
}

func parseAgentArgs(args []string, stderr io.Writer) (agentSettings, error) {
	fs := flag.NewFlagSet("pharos agent", flag.ContinueOnError)
	configPath := fs.String("config", "", "YAML config file (flags override it)")
	o := &overrides[agentSettings]{fs: fs}
	str := func(name, usage string, f func(*agentSettings) *string) { bind(o, name, usage, parseString, f) }
	dur := func(name, usage string, f func(*agentSettings) *duration) { bind(o, name, usage, parseDuration, f) }
	str("name", "member name (unique in the cluster)", func(s *agentSettings) *string { return &s.Name })
	str("data-dir", "PostgreSQL data directory", func(s *agentSettings) *string { return &s.DataDir })
	str("bin-dir", "directory of the PostgreSQL programs (default: found like pg_config does)", func(s *agentSettings) *string { return &s.BinDir })
	bind(o, "pg-port", "PostgreSQL port", parseInt, func(s *agentSettings) *int { return &s.PGPort })
	str("pg-listen", "PostgreSQL listen_addresses", func(s *agentSettings) *string { return &s.PGListen })
	str("host", "address other members and the proxy reach this PostgreSQL at", func(s *agentSettings) *string { return &s.Host })
	str("socket-dir", "PostgreSQL Unix socket directory (default: the data directory's parent)", func(s *agentSettings) *string { return &s.SocketDir })
	str("log-level", "debug, info, warn or error", func(s *agentSettings) *string { return &s.LogLevel })
	str("cluster", "cluster name (keys under /pharos/<cluster>/)", func(s *agentSettings) *string { return &s.Cluster })
	bindEtcdFlags(o, func(s *agentSettings) *EtcdSettings { return &s.EtcdSettings })
	str("superuser", "PostgreSQL superuser the agent creates and uses", func(s *agentSettings) *string { return &s.SuperUser })
	str("superuser-password-file", "file holding its password (or env PHAROS_SUPERUSER_PASSWORD)", func(s *agentSettings) *string { return &s.SuperPasswordFile })
	str("replication-user", "replication account", func(s *agentSettings) *string { return &s.ReplicationUser })
	str("replication-password-file", "file holding its password (or env PHAROS_REPLICATION_PASSWORD)", func(s *agentSettings) *string { return &s.ReplicationPasswordFile })
	str("monitor-user", "non-superuser pg_monitor login bootstrap creates for the proxies' health checks", func(s *agentSettings) *string { return &s.MonitorUser })
	str("proxy-auth-user", "login bootstrap creates for the proxies' auth_user, the only role that may run pharos.get_auth", func(s *agentSettings) *string { return &s.ProxyAuthUser })
	str("proxy-auth-password-file", "file holding its password (or env PHAROS_PROXY_AUTH_PASSWORD; none: no such login)", func(s *agentSettings) *string { return &s.ProxyAuthPasswordFile })
	str("monitor-password-file", "file holding its password (or env PHAROS_MONITOR_PASSWORD; none: no such login)", func(s *agentSettings) *string { return &s.MonitorPasswordFile })
	str("require-auth", "authentication methods a server may ask the agent for (libpq require_auth, e.g. scram-sha-256,md5)", func(s *agentSettings) *string { return &s.RequireAuth })
	dur("ttl", "lease of the leader key and member records (whole seconds)", func(s *agentSettings) *duration { return &s.TTL })
	dur("loop-wait", "loop and renewal period", func(s *agentSettings) *duration { return &s.LoopWait })
	dur("retry-timeout", "bound of one etcd call", func(s *agentSettings) *duration { return &s.RetryTimeout })
	dur("safety-margin", "time before lease expiry by which an unrenewed leader has fenced itself", func(s *agentSettings) *duration { return &s.SafetyMargin })
	bind(o, "maximum-lag-on-failover", "a replica further behind (bytes, e.g. 1MB) does not take the lead", parseByteSize, func(s *agentSettings) *byteSize { return &s.MaximumLagOnFailover })
	dur("crash-restart-timeout", "how long a leader restarts a crashed PostgreSQL in place before releasing the key", func(s *agentSettings) *duration { return &s.CrashRestartTimeout })
	bind(o, "auto-reinit", "wipe and clone again when pg_rewind fails", parseBool, func(s *agentSettings) *bool { return &s.AutoReinit })
	bind(o, "clone-max-rate", "bytes per second a clone may read from its source (pg_basebackup --max-rate, e.g. 100MB; 0 = no limit)", parseByteSize, func(s *agentSettings) *byteSize { return &s.CloneMaxRate })
	bind(o, "nofailover", "never take the lead", parseBool, func(s *agentSettings) *bool { return &s.NoFailover })
	bind(o, "noloadbalance", "keep the proxy's ro endpoint away from this member", parseBool, func(s *agentSettings) *bool { return &s.NoLoadBalance })
	str("api-listen", "REST API address, e.g. 127.0.0.1:8008 (\"\" disables it)", func(s *agentSettings) *string { return &s.APIListen })
	str("api-username", "user for the REST API's mutating calls (basic auth)", func(s *agentSettings) *string { return &s.APIUsername })
	str("api-password-file", "file holding its password (or env PHAROS_API_PASSWORD)", func(s *agentSettings) *string { return &s.APIPasswordFile })
	str("api-token-file", "file holding a bearer token for the mutating calls (or env PHAROS_API_TOKEN)", func(s *agentSettings) *string { return &s.APITokenFile })
	str("api-cert", "PEM certificate: serve the REST API over HTTPS", func(s *agentSettings) *string { return &s.APICert })
	str("api-key", "PEM key for --api-cert", func(s *agentSettings) *string { return &s.APIKey })
	str("watchdog", "off, automatic (arm when possible) or required (no leadership without it)", func(s *agentSettings) *string { return &s.Watchdog })
	str("watchdog-driver", "device (Linux /dev/watchdog) or software (a pharos watchdog process)", func(s *agentSettings) *string { return &s.WatchdogDriver })
	str("watchdog-device", "watchdog device for --watchdog-driver device", func(s *agentSettings) *string { return &s.WatchdogDevice })
	str("on-start", "command run after PostgreSQL starts (args: action role cluster)", func(s *agentSettings) *string { return &s.OnStart })
	str("on-stop", "command run after PostgreSQL stops", func(s *agentSettings) *string { return &s.OnStop })
	str("on-restart", "command run after PostgreSQL is restarted in place after a crash", func(s *agentSettings) *string { return &s.OnRestart })
	str("on-role-change", "command run when this member becomes primary or stops being it", func(s *agentSettings) *string { return &s.OnRoleChange })
	dur("callback-timeout", "bound on one callback run (its process group is killed then)", func(s *agentSettings) *duration { return &s.CallbackTimeout })
	bind(o, "failover-priority", "breaks ties between equally advanced candidates (higher wins)", parseInt, func(s *agentSettings) *int { return &s.FailoverPriority })

	return o.parse(args, configPath, defaultAgentSettings(), stderr)
}

// agentConfig validates the settings into the agent's config.
func (s agentSettings) agentConfig(ctx context.Context, log *slog.Logger) (haagent.Config, etcdclient.Config, cluster.Keys, error) {
	var zero haagent.Config
	if s.Name == "" {
		return zero, etcdclient.Config{}, cluster.Keys{}, usageErrorf("name: required (--name)")
	}
	if s.DataDir == "" {
		return zero, etcdclient.Config{}, cluster.Keys{}, usageErrorf("data_dir: required (--data-dir)")
	}
	if s.PGPort < 1 || s.PGPort > 65535 {
		return zero, etcdclient.Config{}, cluster.Keys{}, usageErrorf("pg_port: %d is not a port (--pg-port)", s.PGPort)
	}
	// The host is published in the member record, which other members put
	// into their connection strings.
	if err := cluster.CheckHost(s.Host); err != nil {
		return zero, etcdclient.Config{}, cluster.Keys{}, usageErrorf("host: %v (--host)", err)
	}
	if err := s.checkParameters(); err != nil {
		return zero, etcdclient.Config{}, cluster.Keys{}, err
	}
	if len(s.Etcd) == 0 {
		return zero, etcdclient.Config{}, cluster.Keys{}, usageErrorf("etcd: at least one endpoint is required (--etcd)")
	}
	keys, err := cluster.NewKeys(s.Cluster)
	if err != nil {
		return zero, etcdclient.Config{}, cluster.Keys{}, usageErrorf("cluster: %v", err)
	}
	ecfg, err := s.etcdConfig()
	if err != nil {
		return zero, etcdclient.Config{}, cluster.Keys{}, err
	}
	superPW, err := readSecret("superuser_password", s.SuperPassword, s.SuperPasswordFile, "PHAROS_SUPERUSER_PASSWORD")
	if err != nil {
		return zero, ecfg, keys, err
	}
	replPW, err := readSecret("replication_password", s.ReplicationPassword, s.ReplicationPasswordFile, "PHAROS_REPLICATION_PASSWORD")
	if err != nil {
		return zero, ecfg, keys, err
	}
	if superPW == "" {
		return zero, ecfg, keys, usageErrorf("superuser_password: required (file, config or env PHAROS_SUPERUSER_PASSWORD)")
	}
	if replPW == "" {
		return zero, ecfg, keys, usageErrorf("replication_password: required (file, config or env PHAROS_REPLICATION_PASSWORD)")
	}
	monitorPW, err := readSecret("monitor_password", s.MonitorPassword, s.MonitorPasswordFile, "PHAROS_MONITOR_PASSWORD")
	if err != nil {
		return zero, ecfg, keys, err
	}
	// Bootstrap sets these from SCRAM verifiers it computes (see
	// core.CheckRolePassword): refused now rather than at bootstrap.
	if err := haagent.CheckRolePassword(replPW); err != nil {
		return zero, ecfg, keys, usageErrorf("replication_password: %v", err)
	}
	if monitorPW != "" {
		if err := haagent.CheckRolePassword(monitorPW); err != nil {
			return zero, ecfg, keys, usageErrorf("monitor_password: %v", err)
		}
		if s.MonitorUser == "" || s.MonitorUser == s.SuperUser || s.MonitorUser == s.ReplicationUser {
			return zero, ecfg, keys, usageErrorf("monitor_user: %q must be a role of its own, neither the superuser nor the replication user", s.MonitorUser)
		}
	}
	authPW, err := readSecret("proxy_auth_password", s.ProxyAuthPassword, s.ProxyAuthPasswordFile, "PHAROS_PROXY_AUTH_PASSWORD")
	if err != nil {
		return zero, ecfg, keys, err
	}
	if authPW != "" {
		if err := haagent.CheckRolePassword(authPW); err != nil {
			return zero, ecfg, keys, usageErrorf("proxy_auth_password: %v", err)
		}
		if s.ProxyAuthUser == "" || s.ProxyAuthUser == s.SuperUser || s.ProxyAuthUser == s.ReplicationUser || (monitorPW != "" && s.ProxyAuthUser == s.MonitorUser) {
			return zero, ecfg, keys, usageErrorf("proxy_auth_user: %q must be a role of its own, neither the superuser, the replication user nor the monitor user", s.ProxyAuthUser)
		}
	}
	if err := haagent.CheckRequireAuth(s.RequireAuth); err != nil {
		return zero, ecfg, keys, usageErrorf("%v", err)
	}
	binDir, err := pgproc.FindBinDir(ctx, s.BinDir)
	if err != nil {
		return zero, ecfg, keys, usageErrorf("bin_dir: %v", err)
	}
	owner, err := pgproc.CurrentOwner()
	if err != nil {
		return zero, ecfg, keys, fmt.Errorf("server account: %w", err)
	}
	rules := core.Rules{
		Name: s.Name,
		Timing: core.Timing{
			TTL: time.Duration(s.TTL), LoopWait: time.Duration(s.LoopWait),
			RetryTimeout: time.Duration(s.RetryTimeout), SafetyMargin: time.Duration(s.SafetyMargin),
		},
		Tags:                 cluster.Tags{NoFailover: s.NoFailover, NoLoadBalance: s.NoLoadBalance, FailoverPriority: s.FailoverPriority},
		MaximumLagOnFailover: int64(s.MaximumLagOnFailover),
		CrashRestartTimeout:  time.Duration(s.CrashRestartTimeout),
		AutoReinit:           s.AutoReinit,
	}
	if err := rules.Validate(); err != nil {
		return zero, ecfg, keys, usageErrorf("%v", err)
	}
	wdMode, err := core.ParseWatchdogMode(s.Watchdog)
	if err != nil {
		return zero, ecfg, keys, usageErrorf("%v", err)
	}
	var wd haagent.Watchdog
	if wdMode != core.WatchdogOff {
		switch s.WatchdogDriver {
		case "device":
			wd = watchdog.OpenDevice(s.WatchdogDevice, log)
		case "software":
			self, err := os.Executable()
			if err != nil {
				return zero, ecfg, keys, fmt.Errorf("watchdog_driver software: %w", err)
			}
			wd = watchdog.NewSoftware(self, s.DataDir, log)
		default:
			return zero, ecfg, keys, usageErrorf("watchdog_driver %q: device or software", s.WatchdogDriver)
		}
	}
	// pg_basebackup takes kB/s, between 32 kB/s and 1 GB/s.
	cloneMaxRate := ""
	if s.CloneMaxRate != 0 {
		if s.CloneMaxRate < 32<<10 || s.CloneMaxRate > 1<<30 {
			return zero, ecfg, keys, usageErrorf("clone_max_rate %d: 0 (no limit) or between 32kB and 1024MB per second", int64(s.CloneMaxRate))
		}
		cloneMaxRate = strconv.FormatInt(int64(s.CloneMaxRate)>>10, 10) + "k"
	}
	if s.CallbackTimeout <= 0 {
		return zero, ecfg, keys, usageErrorf("callback_timeout %v: must be positive", time.Duration(s.CallbackTimeout))
	}
	return haagent.Config{
		Rules:        rules,
		Host:         s.Host,
		Cluster:      s.Cluster,
		APIURL:       s.apiURL(),
		WatchdogMode: wdMode,
		Watchdog:     wd,
		Callbacks: haagent.Callbacks{
			OnStart: s.OnStart, OnStop: s.OnStop, OnRestart: s.OnRestart, OnRoleChange: s.OnRoleChange,
			Timeout: time.Duration(s.CallbackTimeout),
		},
		Postgres: haagent.PostgresConfig{
			DataDir: s.DataDir, BinDir: binDir, SocketDir: s.SocketDir, Listen: s.PGListen, Port: s.PGPort,
			SuperUser: s.SuperUser, SuperPassword: superPW,
			ReplicationUser: s.ReplicationUser, ReplicationPassword: replPW,
			MonitorUser: s.MonitorUser, MonitorPassword: monitorPW,
			ProxyAuthUser: s.ProxyAuthUser, ProxyAuthPassword: authPW,
			RequireAuth:  s.RequireAuth,
			CloneMaxRate: cloneMaxRate,
			HBA:          s.PGHBA, Parameters: s.Parameters, Owner: owner,
		},
	}, ecfg, keys, nil
}

// checkParameters refuses settings the agent writes into pharos.conf that
// would not be one line of it meaning what they say (cluster.CheckParameter),
// and local parameters the agent sets itself.
func (s agentSettings) checkParameters() error {
	for _, v := range []struct{ key, param, value string }{
		{"pg_listen", "listen_addresses", s.PGListen},
		{"socket_dir", "unix_socket_directories", s.SocketDir},
	} {
		if err := cluster.CheckParameter(v.param, v.value); err != nil {
			return usageErrorf("%s: %v", v.key, err)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(s.Parameters)) {
		if err := cluster.CheckParameter(k, s.Parameters[k]); err != nil {
			return usageErrorf("parameters: %v", err)
		}
		if cluster.ProtectedParameter(k) {
			return usageErrorf("parameters: %s is set by the agent itself (see pg_port, pg_listen, socket_dir and name)", k)
		}
	}
	return nil
}

// apiURL is the REST API's address as published in the member record.
func (s agentSettings) apiURL() string {
	if s.APIListen == "" {
		return ""
	}
	host, port, err := net.SplitHostPort(s.APIListen)
	if err != nil {
		return ""
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = s.Host
	}
	scheme := "http"
	if s.APICert != "" {
		scheme = "https"
	}
	return scheme + "://" + net.JoinHostPort(host, port)
}

// apiConfig is the REST API's configuration, secrets read.
func (s agentSettings) apiConfig(loopStale time.Duration) (restapi.Config, error) {
	password, err := readSecret("api_password", s.APIPassword, s.APIPasswordFile, "PHAROS_API_PASSWORD")
	if err != nil {
		return restapi.Config{}, err
	}
	token, err := readSecret("api_token", s.APIToken, s.APITokenFile, "PHAROS_API_TOKEN")
	if err != nil {
		return restapi.Config{}, err
	}
	if (s.APIUsername == "") != (password == "") {
		return restapi.Config{}, usageErrorf("api_username: basic auth needs both a user name and a password")
	}
	return restapi.Config{Listen: s.APIListen, Username: s.APIUsername, Password: password, Token: token,
		CertFile: s.APICert, KeyFile: s.APIKey, LoopStale: loopStale}, nil
}
