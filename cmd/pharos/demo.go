package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/internal/router"
)

// runDemo starts a local primary with streaming replicas and the proxy in
// front of them (static source), prints how to connect and writes
// demo.env, then runs until Ctrl-C and stops everything it started.
//
// Until the agent exists there is no failover here: the demo shows the
// proxy's data path, routing and metrics on real servers.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("pharos demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "demo-data", "directory for the servers' data, logs and demo.env (wiped at start)")
	nodes := fs.Int("nodes", 3, "PostgreSQL servers: one primary and nodes-1 replicas")
	basePort := fs.Int("base-port", 6432, "rw endpoint port; ro is base+1, metrics base+2")
	logLevel := fs.String("log-level", "info", "proxy log level")
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
	pgDir := filepath.Join(absDir, "pg")
	if err := os.RemoveAll(pgDir); err != nil {
		fmt.Fprintf(stderr, "pharos demo: clean %s: %v\n", pgDir, err)
		return exitFailure
	}
	if err := os.MkdirAll(absDir, 0o755); err != nil {
		fmt.Fprintf(stderr, "pharos demo: %v\n", err)
		return exitFailure
	}

	fmt.Fprintf(stdout, "starting a primary and %d replica(s) in %s ...\n", *nodes-1, pgDir)
	started := time.Now()
	cluster, err := pglocal.NewCluster(ctx, pglocal.Options{BaseDir: pgDir, Replicas: *nodes - 1, Logger: log})
	if err != nil {
		fmt.Fprintf(stderr, "pharos demo: %v\n", err)
		return exitFailure
	}
	defer func() {
		fmt.Fprintln(stdout, "stopping PostgreSQL servers ...")
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := cluster.Close(sctx); err != nil {
			fmt.Fprintf(stderr, "pharos demo: stop servers: %v\n", err)
		}
	}()
	fmt.Fprintf(stdout, "servers up in %s\n", time.Since(started).Round(time.Millisecond))

	var backends []string
	for _, in := range cluster.Instances() {
		backends = append(backends, in.Addr())
	}
	settings := defaultProxySettings()
	settings.LogLevel = *logLevel
	settings.RWListen = "127.0.0.1:" + strconv.Itoa(*basePort)
	settings.ROListen = "127.0.0.1:" + strconv.Itoa(*basePort+1)
	settings.MetricsListen = "127.0.0.1:" + strconv.Itoa(*basePort+2)
	settings.Backends = backends
	settings.HealthUser = pglocal.UserHealth
	settings.HealthPassword = pglocal.PasswordHealth
	settings.ROFallbackToPrimary = true
	settings.DrainTimeout = duration(2 * time.Second)
	stack, err := newProxyStack(settings, log)
	if err != nil {
		fmt.Fprintf(stderr, "pharos demo: %v\n", err)
		return exitFailure
	}

	rwDSN := fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", pglocal.UserSCRAM, pglocal.PasswordSCRAM, stack.server.Addr(router.RW), pglocal.AppDB)
	roDSN := fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", pglocal.UserSCRAM, pglocal.PasswordSCRAM, stack.server.Addr(router.RO), pglocal.AppDB)
	metricsURL := "http://" + settings.MetricsListen + "/metrics"
	env := strings.Join([]string{
		"PHAROS_RW_DSN=" + rwDSN,
		"PHAROS_RO_DSN=" + roDSN,
		"PHAROS_METRICS_URL=" + metricsURL,
		"PHAROS_BACKENDS=" + strings.Join(backends, ","),
		// No etcd yet: the demo's proxy uses the static source.
		"PHAROS_ETCD=",
		"PHAROS_CLUSTER=demo",
		"",
	}, "\n")
	envPath := filepath.Join(absDir, "demo.env")
	if err := os.WriteFile(envPath, []byte(env), 0o600); err != nil {
		fmt.Fprintf(stderr, "pharos demo: %v\n", err)
		return exitFailure
	}

	fmt.Fprintf(stdout, "\npharos demo is running (Ctrl-C stops it)\n\n")
	fmt.Fprintf(stdout, "  read-write:  psql '%s'\n", rwDSN)
	fmt.Fprintf(stdout, "  read-only:   psql '%s'\n", roDSN)
	fmt.Fprintf(stdout, "  metrics:     %s\n", metricsURL)
	fmt.Fprintf(stdout, "  settings:    %s\n\n", envPath)
	fmt.Fprintf(stdout, "  %-8s %-17s %-8s %s\n", "MEMBER", "ADDRESS", "ROLE", "LOG")
	for i, in := range cluster.Instances() {
		role := "replica"
		if i == 0 {
			role = "primary"
		}
		fmt.Fprintf(stdout, "  %-8s %-17s %-8s %s\n", in.Name, in.Addr(), role, in.LogPath())
	}
	fmt.Fprintln(stdout)

	if err := stack.run(ctx, nil); err != nil {
		fmt.Fprintf(stderr, "pharos demo: proxy: %v\n", err)
		return exitFailure
	}
	return exitOK
}
