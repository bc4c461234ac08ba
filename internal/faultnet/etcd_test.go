package faultnet_test

import (
	"context"
	"errors"
	"log/slog"
	"net/url"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/pharos-ha/pharos/internal/etcdlocal"
)

// TestEtcdThroughRelay cuts a real etcd client off its server, the way a
// chaos test cuts one agent off etcd.
func TestEtcdThroughRelay(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	cluster, err := etcdlocal.Start(ctx, etcdlocal.Options{
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
	})
	if err != nil {
		t.Fatalf("etcdlocal.Start: %v", err)
	}
	t.Cleanup(func() {
		if err := cluster.Close(); err != nil {
			t.Errorf("etcd Close: %v", err)
		}
	})
	ep, err := url.Parse(cluster.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	r := startRelay(t, ep.Host)
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{"http://" + r.Addr()},
		DialTimeout: 2 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("clientv3.New: %v", err)
	}
	t.Cleanup(func() { cli.Close() })

	get := func(timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(t.Context(), timeout)
		defer cancel()
		_, err := cli.Get(ctx, "faultnet/probe")
		return err
	}
	if _, err := cli.Put(ctx, "faultnet/probe", "1"); err != nil {
		t.Fatalf("Put through the relay: %v", err)
	}
	if err := get(time.Second); err != nil {
		t.Fatalf("Get through the relay: %v", err)
	}

	r.Cut()
	if err := get(time.Second); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get during the cut: %v, want deadline exceeded", err)
	}

	r.Restore()
	start := time.Now()
	for {
		err := get(time.Second)
		if err == nil {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("Get after Restore still failing after %v: %v", time.Since(start), err)
		}
		t.Logf("Get after Restore: %v", err)
	}
	t.Logf("Get answered %v after Restore", time.Since(start).Round(time.Millisecond))
}
