package etcdlocal

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TB is the part of testing.TB that StartForTest uses. The package does
// not import testing: the demo command runs it too.
type TB interface {
	Helper()
	Fatal(args ...any)
	Error(args ...any)
	Cleanup(func())
	Context() context.Context
}

// StartForTest starts a one-member etcd for one test and returns it with a
// client; both are closed when the test ends (a failed Close fails it).
func StartForTest(tb TB) (*Cluster, *clientv3.Client) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), time.Minute)
	defer cancel()
	c, err := Start(ctx, Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := c.Close(); err != nil {
			tb.Error(err)
		}
	})
	cli, err := c.Client(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cli.Close() })
	return c, cli
}
