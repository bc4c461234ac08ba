package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/clusterstate"
	"github.com/pharos-ha/pharos/internal/ctl"
	"github.com/pharos-ha/pharos/internal/etcdlocal"
	"github.com/pharos-ha/pharos/internal/localha"
	"github.com/pharos-ha/pharos/proxy"
	"github.com/pharos-ha/pharos/router"
)

// Demo application account, created through the rw endpoint once the
// cluster is up.
const (
	demoUser     = "app"
	demoPassword = "app-secret"
	demoDB       = "app"
)

// runDemo runs a whole cluster on loopback: an embedded etcd, one agent
// process per PostgreSQL node (supervised: a killed agent is restarted
// after a few seconds), and the proxy following the agents' keys. It prints
// how to connect, writes demo.env, and on Ctrl-C stops everything it
// started.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("pharos demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "demo-data", "directory for etcd, the nodes' data and logs, and demo.env (wiped at start)")
	nodes := fs.Int("nodes", 3, "PostgreSQL nodes, each under its own agent")
	basePort := fs.Int("base-port", 6432, "rw endpoint port; ro is base+1, metrics base+2")
	logLevel := fs.String("log-level", "info", "log level of the proxy and the agents")
	agentArgs := fs.String("agent-args", "", "extra flags for every agent, space-separated (e.g. \"--ttl 6s\")")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if *nodes < 1 || *nodes > 9 {
		fmt.Fprintln(stderr, "pharos demo: --nodes: must be between 1 and 9")
		return exitUsage
	}
	if *basePort < 1 || *basePort > 65533 {
		fmt.Fprintln(stderr, "pharos demo: --base-port: must be between 1 and 65533")
		return exitUsage
	}
	log, err := newLogger(stderr, *logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "pharos demo: %v\n", err)
		return exitUsage
	}
	absDir, err := filepath.Abs(*dir)
	if err != nil {
		fmt.Fprintf(stderr, "pharos demo: --dir: %v\n", err)
		return exitUsage
	}
	if err := demo(ctx, demoOptions{dir: absDir, nodes: *nodes, basePort: *basePort, logLevel: *logLevel,
		agentArgs: strings.Fields(*agentArgs)}, log, stdout); err != nil {
		fmt.Fprintf(stderr, "pharos demo: %v\n", err)
		return exitFailure
	}
	return exitOK
}

type demoOptions struct {
	dir       string
	nodes     int
	basePort  int
	logLevel  string
	agentArgs []string
}

func demo(ctx context.Context, o demoOptions, log *slog.Logger, stdout io.Writer) error {
	for _, sub := range []string{"etcd", "nodes"} {
		if err := os.RemoveAll(filepath.Join(o.dir, sub)); err != nil {
			return fmt.Errorf("clean %s: %w", o.dir, err)
		}
	}
	if err := os.MkdirAll(o.dir, 0o755); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	const clusterName = "demo"
	keys, _ := cluster.NewKeys(clusterName)

	fmt.Fprintf(stdout, "[1/4] starting etcd (embedded) ...\n")
	etcd, err := etcdlocal.Start(ctx, etcdlocal.Options{Dir: filepath.Join(o.dir, "etcd")})
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer etcd.Close()
	cli, err := etcd.Client(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()

	fmt.Fprintf(stdout, "[2/4] starting %d agents; the first to claim the cluster runs initdb, the others clone it ...\n", o.nodes)
	started := time.Now()
	nodesDir := filepath.Join(o.dir, "nodes")
	hc, err := localha.Start(ctx, localha.Options{
		Binary: self, Dir: nodesDir, Nodes: o.nodes, Cluster: clusterName, Etcd: etcd.Endpoints(),
		AgentArgs: append([]string{"--log-level", o.logLevel, "--auto-reinit=true",
			"--watchdog", "automatic", "--watchdog-driver", "software"}, o.agentArgs...),
		ProxyAuth: true,
		Logger:    log,
	})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(stdout, "stopping agents (each stops its PostgreSQL) ...")
		sctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := hc.Close(sctx); err != nil {
			fmt.Fprintf(stdout, "stop: %v\n", err)
		}
	}()
	var names []string
	for _, n := range hc.Nodes() {
		names = append(names, n.Name)
	}
	if err := waitClusterUp(ctx, cli, keys, names, 3*time.Minute, stdout); err != nil {
		return fmt.Errorf("%w\nagent logs are in %s/*/agent.log", err, nodesDir)
	}
	fmt.Fprintf(stdout, "      cluster up in %s\n", time.Since(started).Round(100*time.Millisecond))

	fmt.Fprintf(stdout, "[3/4] starting the proxy ...\n")
	settings := defaultProxySettings()
	settings.LogLevel = o.logLevel
	settings.Source = "pharos"
	settings.Etcd = etcd.Endpoints()
	settings.Cluster = clusterName
	settings.Name = "demo-proxy"
	settings.RWListen = "127.0.0.1:" + strconv.Itoa(o.basePort)
	settings.ROListen = "127.0.0.1:" + strconv.Itoa(o.basePort+1)
	settings.MetricsListen = "127.0.0.1:" + strconv.Itoa(o.basePort+2)
	settings.ROFallbackToPrimary = true
	settings.DrainTimeout = duration(2 * time.Second)
	// The proxy checks every login itself (SCRAM), against the verifiers
	// it looks up on the primary as the agents' proxy auth user.
	settings.AuthType = string(proxy.AuthSCRAM)
	settings.AuthUser = hc.ProxyAuthUser
	settings.AuthPasswordFile = hc.ProxyAuthPasswordFile
	// The superuser may open the proxy's admin console.
	settings.AdminUsers = []string{hc.SuperUser}
	stack, err := newProxyStack(settings, log)
	if err != nil {
		return err
	}
	proxyCtx, stopProxy := context.WithCancel(ctx)
	proxyDone := make(chan error, 1)
	go func() { proxyDone <- stack.run(proxyCtx, nil) }()
	defer func() { stopProxy(); <-proxyDone }()

	rwAddr, roAddr := stack.server.Addr(router.RW), stack.server.Addr(router.RO)
	fmt.Fprintf(stdout, "[4/4] creating the demo database through the proxy ...\n")
	superDSN := fmt.Sprintf("postgres://%s:%s@%s/postgres?sslmode=disable", hc.SuperUser, hc.SuperPassword, rwAddr)
	if err := createDemoDB(ctx, superDSN); err != nil {
		return err
	}

	rwDSN := fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", demoUser, demoPassword, rwAddr, demoDB)
	roDSN := fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", demoUser, demoPassword, roAddr, demoDB)
	adminDSN := fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", hc.SuperUser, hc.SuperPassword, rwAddr, proxy.AdminDatabase)
	metricsURL := "http://" + settings.MetricsListen + "/metrics"
	env := strings.Join([]string{
		"PHAROS_RW_DSN=" + rwDSN,
		"PHAROS_RO_DSN=" + roDSN,
		"PHAROS_METRICS_URL=" + metricsURL,
		"PHAROS_ETCD=" + strings.Join(etcd.Endpoints(), ","),
		"PHAROS_CLUSTER=" + clusterName,
		"PHAROS_SUPERUSER_DSN=" + superDSN,
		"PHAROS_ADMIN_DSN=" + adminDSN,
		"",
	}, "\n")
	envPath := filepath.Join(o.dir, "demo.env")
	if err := os.WriteFile(envPath, []byte(env), 0o600); err != nil {
		return err
	}

	fmt.Fprintf(stdout, "\npharos demo is running (Ctrl-C stops it)\n\n")
	fmt.Fprintf(stdout, "  read-write:  psql '%s'\n", rwDSN)
	fmt.Fprintf(stdout, "  read-only:   psql '%s'\n", roDSN)
	fmt.Fprintf(stdout, "  console:     psql '%s' -c 'SHOW POOLS'   (SHOW HELP lists the commands)\n", adminDSN)
	fmt.Fprintf(stdout, "  metrics:     %s\n", metricsURL)
	fmt.Fprintf(stdout, "  settings:    %s   (source it: set -a; . %s)\n", envPath, envPath)
	fmt.Fprintf(stdout, "  status:      %s ctl --etcd %s --cluster %s list\n", self, strings.Join(etcd.Endpoints(), ","), clusterName)
	fmt.Fprintf(stdout, "  agent logs:  %s/n*/agent.log\n", nodesDir)
	var apis []string
	for _, n := range hc.Nodes() {
		apis = append(apis, n.Name+" "+n.APIURL)
	}
	fmt.Fprintf(stdout, "  REST APIs:   %s   (e.g. curl %s/primary; POSTs need -u %s:$(cat %s/api.password))\n\n",
		strings.Join(apis, ", "), hc.Nodes()[0].APIURL, hc.APIUser, nodesDir)
	if st, err := clusterstate.Status(ctx, cli, keys); err == nil {
		_ = ctl.WriteTable(stdout, st)
	}
	fmt.Fprintf(stdout, "\nTry:\n"+
		"  %[1]s ctl --etcd %[3]s --cluster %[4]s switchover --force\n"+
		"                                       planned switchover (about a second of write outage)\n"+
		"  kill -9 $(head -1 %[2]s/<leader>/data/postmaster.pid)   a crash: restarted in place\n"+
		"  kill -STOP <leader's agent pid>      a hung agent: its watchdog kills PostgreSQL, a replica takes over\n"+
		"  kill -9 the leader's agent and postmaster   node loss: failover in ~4 s; the agent is restarted\n"+
		"                                       after 5 s and its node rejoins as a replica\n\n", self, nodesDir, strings.Join(etcd.Endpoints(), ","), clusterName)

	select {
	case <-ctx.Done():
		return nil
	case err := <-proxyDone:
		proxyDone <- err
		return fmt.Errorf("proxy: %w", err)
	}
}

// waitClusterUp polls until a leader runs as primary and every member is a
// running primary or streaming replica, printing what each node does (from
// the member records: "n2 creating replica 62%") whenever that changed,
// at most once a second, with the time since it started.
func waitClusterUp(ctx context.Context, cli *clientv3.Client, keys cluster.Keys, names []string, timeout time.Duration, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	started := time.Now()
	shown := statusLine{every: time.Second}
	last := ""
	for {
		st, err := clusterstate.Status(ctx, cli, keys)
		if err == nil {
			ready := st.Leader != nil
			count := 0
			for _, m := range st.Members {
				if m.Role == cluster.RolePrimary || (m.Role == cluster.RoleReplica && m.Streaming) {
					count++
				}
			}
			ready = ready && count == len(names)
			last = ctl.Summary(st, names...)
			// The state it is up in is shown however soon it follows.
			if now := time.Now(); shown.due(now, last, ready) {
				fmt.Fprintf(stdout, "      %5.1fs  %s\n", now.Sub(started).Seconds(), last)
			}
			if ready {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster not up within %v (last: %s)", timeout, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// statusLine decides when the demo prints the cluster's summary: when it
// changed, at most once per every, so that a clone's progress moves on
// screen without flooding it. A change within every is printed once every
// has passed, since the caller keeps polling.
type statusLine struct {
	every time.Duration
	last  string
	at    time.Time
}

// due reports whether to print line at now; final lines skip the wait.
func (s *statusLine) due(now time.Time, line string, final bool) bool {
	if line == s.last || (!final && !s.at.IsZero() && now.Sub(s.at) < s.every) {
		return false
	}
	s.last, s.at = line, now
	return true
}

// createDemoDB creates the demo role and database (idempotent).
func createDemoDB(ctx context.Context, superDSN string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, superDSN)
	if err != nil {
		return fmt.Errorf("connect through the proxy: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)", demoUser).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		if _, err := conn.Exec(ctx, "CREATE ROLE "+demoUser+" LOGIN PASSWORD '"+demoPassword+"'"); err != nil {
			return err
		}
	}
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", demoDB).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+demoDB+" OWNER "+demoUser); err != nil {
			return err
		}
	}
	// The printed ro DSN must work at once: wait until every replica
	// replayed the new database.
	for {
		var behind int
		err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_replication
			WHERE replay_lsn IS NULL OR replay_lsn < pg_current_wal_lsn()`).Scan(&behind)
		if err != nil {
			return err
		}
		if behind == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("replicas did not replay the demo database: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
