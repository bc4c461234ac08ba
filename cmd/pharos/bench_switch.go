package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/pharos-ha/pharos/bench"
	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/etcdclient"
)

// runBenchSwitch is `pharos bench switch`: it writes the keys an agent
// would, so point it at a test cluster whose members are not managed by
// running agents.
func runBenchSwitch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("pharos bench switch", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	etcd := fs.String("etcd", "", "comma-separated etcd endpoints")
	clusterName := fs.String("cluster", "", "cluster name (keys under /pharos/<cluster>/)")
	rw := fs.String("rw", "", "DSN of the proxy's rw endpoint")
	var members rawList
	fs.Var(&members, "member", "`name=host:port` of a real PostgreSQL server to name as primary in turn; repeat (at least 2)")
	flips := fs.Int("flips", 20, "leader changes to measure")
	timeout := fs.Duration("timeout", 5*time.Second, "bound on one flip")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fs.PrintDefaults()
			return exitOK
		}
		fmt.Fprintf(stderr, "pharos bench switch: %v\n", err)
		return exitUsage
	}
	cfg, err := switchConfig(*etcd, *clusterName, *rw, members, *flips, *timeout)
	if err != nil {
		fmt.Fprintf(stderr, "pharos bench switch: %v\n", err)
		return exitUsage
	}
	client, err := etcdclient.New(etcdclient.Config{Endpoints: parseListOrEmpty(*etcd)})
	if err != nil {
		fmt.Fprintf(stderr, "pharos bench switch: etcd: %v\n", err)
		return exitFailure
	}
	defer client.Close()
	cfg.Etcd = client
	cfg.Progress = stderr
	res, err := bench.RunSwitch(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "pharos bench switch: %v\n", err)
		return exitFailure
	}
	ms := func(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 1, 64) }
	fmt.Fprintf(stdout, "route switch (etcd write -> first rw session on the new leader), %d flips\n", len(res.Latencies))
	fmt.Fprintf(stdout, "p50 %s ms  p99 %s ms  max %s ms  sessions tried %d\n",
		ms(res.Percentile(50)), ms(res.Percentile(99)), ms(res.Percentile(100)), res.Attempts)
	return exitOK
}

func parseListOrEmpty(v string) []string {
	l, _ := parseList(v)
	return l
}

func switchConfig(etcd, clusterName, rw string, members []string, flips int, timeout time.Duration) (bench.SwitchConfig, error) {
	if len(parseListOrEmpty(etcd)) == 0 {
		return bench.SwitchConfig{}, errors.New("--etcd: at least one endpoint is required")
	}
	keys, err := cluster.NewKeys(clusterName)
	if err != nil {
		return bench.SwitchConfig{}, fmt.Errorf("--cluster: %w", err)
	}
	if rw == "" {
		return bench.SwitchConfig{}, errors.New("--rw: the proxy's rw DSN is required")
	}
	if len(members) < 2 {
		return bench.SwitchConfig{}, errors.New("--member: at least two are required")
	}
	cfg := bench.SwitchConfig{Keys: keys, RWDSN: rw, Flips: flips, Timeout: timeout}
	for _, m := range members {
		name, addr, ok := strings.Cut(m, "=")
		host, port, err := net.SplitHostPort(addr)
		p, perr := strconv.Atoi(port)
		if !ok || !cluster.ValidName(name) || err != nil || perr != nil || p < 1 || p > 65535 {
			return bench.SwitchConfig{}, fmt.Errorf("--member %q: want name=host:port", m)
		}
		cfg.Members = append(cfg.Members, bench.SwitchMember{Name: name, Host: host, Port: p})
	}
	if flips < 1 {
		return bench.SwitchConfig{}, errors.New("--flips: must be at least 1")
	}
	return cfg, nil
}
