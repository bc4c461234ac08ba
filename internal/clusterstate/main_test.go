package clusterstate_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/clusterstate"
	"github.com/pharos-ha/pharos/internal/etcdlocal"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// etcd starts an embedded etcd for one test and returns a client of it.
func etcd(t *testing.T) *clientv3.Client {
	t.Helper()
	_, cli := etcdlocal.StartForTest(t)
	return cli
}

func keys(t *testing.T, name string) cluster.Keys {
	t.Helper()
	k, err := cluster.NewKeys(name)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func put(t *testing.T, cli *clientv3.Client, key, value string) int64 {
	t.Helper()
	resp, err := cli.Put(t.Context(), key, value)
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

func putMember(t *testing.T, cli *clientv3.Client, k cluster.Keys, m cluster.Member) {
	t.Helper()
	rec, err := cluster.MarshalMember(m)
	if err != nil {
		t.Fatal(err)
	}
	put(t, cli, k.Member(m.Name), string(rec))
}

func status(t *testing.T, cli *clientv3.Client, k cluster.Keys) clusterstate.ClusterStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	st, err := clusterstate.Status(ctx, cli, k)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func ptr[T any](v T) *T { return &v }
