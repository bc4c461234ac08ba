package proxy_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pharos-ha/pharos/bench"
	clusterkeys "github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/etcdclient"
	"github.com/pharos-ha/pharos/internal/etcdlocal"
	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/metrics"
	"github.com/pharos-ha/pharos/proxy"
	"github.com/pharos-ha/pharos/router"
)

// BenchmarkRouteSwitch measures what issue 3 targets: from the etcd write
// that names a new leader to the first new rw session through the proxy
// that lands on it. Each iteration is one leader change between the shared
// cluster's two real servers (routing trusts etcd alone, so the replica
// serves as "new primary" for the measurement).
//
//	go test -run '^$' -bench RouteSwitch -benchtime 50x ./proxy
func BenchmarkRouteSwitch(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	etcd, err := etcdlocal.Start(ctx, etcdlocal.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer etcd.Close()
	srcClient, err := etcdclient.New(etcdclient.Config{Endpoints: etcd.Endpoints()})
	if err != nil {
		b.Fatal(err)
	}
	defer srcClient.Close()
	writer, err := etcd.Client(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer writer.Close()

	keys, _ := clusterkeys.NewKeys("bench")
	m := metrics.NewProxy(prometheus.NewRegistry())
	r := router.New(router.Config{}, nil, m)
	src := router.NewEtcd(srcClient, router.NewPharosFormat(keys, nil), 200*time.Millisecond, nil, m)
	srv, err := proxy.New(proxy.Config{RWListen: "127.0.0.1:0", RouteWait: 2 * time.Second}, r, nil, m)
	if err != nil {
		b.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		b.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	srcDone, srvDone := make(chan struct{}), make(chan struct{})
	go func() { defer close(srcDone); _ = src.Run(runCtx, r) }()
	go func() { defer close(srvDone); _ = srv.Serve(runCtx) }()
	defer func() { stop(); <-srvDone; <-srcDone }()

	var members []bench.SwitchMember
	for _, in := range cluster.Instances() {
		members = append(members, bench.SwitchMember{Name: in.Name, Host: "127.0.0.1", Port: in.Port})
	}
	cfg := bench.SwitchConfig{
		Etcd:    writer,
		Keys:    keys,
		RWDSN:   fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s sslmode=disable", srv.Addr(router.RW).(*net.TCPAddr).Port, pglocal.UserTrust, pglocal.AppDB),
		Members: members,
		Flips:   1,
		Timeout: 5 * time.Second,
	}
	// One flip before timing, so the first measured one has a route to leave.
	if _, err := bench.RunSwitch(ctx, cfg); err != nil {
		b.Fatal(err)
	}
	cfg.Flips = b.N
	b.ResetTimer()
	res, err := bench.RunSwitch(ctx, cfg)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(res.Percentile(50))/1e6, "p50-ms")
	b.ReportMetric(float64(res.Percentile(99))/1e6, "p99-ms")
	b.ReportMetric(float64(res.Percentile(100))/1e6, "max-ms")
}
