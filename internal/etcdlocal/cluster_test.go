package etcdlocal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// startCluster starts a cluster closed at the end of the test.
func startCluster(t *testing.T, members int) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	c, err := Start(ctx, Options{Members: members, Logger: log})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

// client returns a client closed at the end of the test.
func client(t *testing.T, c *Cluster) *clientv3.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	cli, err := c.Client(ctx)
	if err != nil {
		t.Fatalf("Client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// putWithin retries a Put, each attempt bounded by a second, until it
// succeeds or d has passed. A Put in flight while a member stops may fail
// once with Unavailable, and clientv3 does not retry mutations on its own.
func putWithin(ctx context.Context, cli *clientv3.Client, d time.Duration, key, val string) error {
	deadline := time.Now().Add(d)
	for {
		actx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := cli.Put(actx, key, val)
		cancel()
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
	}
}

func get(t *testing.T, cli *clientv3.Client, key string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, key)
	if err != nil {
		t.Fatalf("Get %s: %v", key, err)
	}
	if len(resp.Kvs) != 1 {
		t.Fatalf("Get %s: %d keys, want 1", key, len(resp.Kvs))
	}
	return string(resp.Kvs[0].Value)
}

func TestSingleMemberPutGet(t *testing.T) {
	c := startCluster(t, 1)
	if got := len(c.Endpoints()); got != 1 {
		t.Fatalf("Endpoints: %d, want 1", got)
	}
	if c.Leader() != 0 {
		t.Errorf("Leader = %d, want 0", c.Leader())
	}
	cli := client(t, c)
	if err := putWithin(t.Context(), cli, 5*time.Second, "k", "v"); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if got := get(t, cli, "k"); got != "v" {
		t.Errorf("Get k = %q, want v", got)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := os.Stat(c.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary dir after Close: %v, want it removed", err)
	}
}

func TestStopAndRestartKeepsDataAndPorts(t *testing.T) {
	c := startCluster(t, 1)
	cli := client(t, c) // created before the stop, used after the restart
	if err := putWithin(t.Context(), cli, 5*time.Second, "k", "before-stop"); err != nil {
		t.Fatalf("Put: %v", err)
	}
	endpoints := c.Endpoints()

	if err := c.StopMember(0); err != nil {
		t.Fatalf("StopMember: %v", err)
	}
	if c.Running(0) {
		t.Fatal("Running(0) after StopMember")
	}
	if err := c.StopMember(0); err == nil {
		t.Error("StopMember of a stopped member: no error")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	_, err := cli.Get(ctx, "k")
	cancel()
	if err == nil {
		t.Fatal("Get while stopped succeeded")
	}

	ctx, cancel = context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := c.StartMember(ctx, 0); err != nil {
		t.Fatalf("StartMember: %v", err)
	}
	if err := c.StartMember(ctx, 0); err == nil {
		t.Error("StartMember of a running member: no error")
	}
	if !slices.Equal(c.Endpoints(), endpoints) {
		t.Errorf("Endpoints changed: %v, was %v", c.Endpoints(), endpoints)
	}
	if got := get(t, cli, "k"); got != "before-stop" {
		t.Errorf("Get k after restart = %q, want before-stop", got)
	}
	if err := putWithin(t.Context(), cli, 5*time.Second, "k", "after-restart"); err != nil {
		t.Fatalf("Put after restart: %v", err)
	}
}

func TestCompactionMakesOldRevisionsUnwatchable(t *testing.T) {
	c := startCluster(t, 1)
	cli := client(t, c)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()

	var first int64
	for i := range 5 {
		resp, err := cli.Put(ctx, fmt.Sprintf("k%d", i), "v")
		if err != nil {
			t.Fatalf("Put: %v", err)
		}
		if i == 0 {
			first = resp.Header.Revision
		}
	}
	rev, err := c.CurrentRevision(ctx)
	if err != nil {
		t.Fatalf("CurrentRevision: %v", err)
	}
	if rev < first+4 {
		t.Fatalf("CurrentRevision = %d, want >= %d", rev, first+4)
	}
	if err := c.Compact(ctx, rev); err != nil {
		t.Fatalf("Compact: %v", err)
	}

	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	wresp, ok := <-cli.Watch(wctx, "k", clientv3.WithPrefix(), clientv3.WithRev(first))
	if !ok {
		t.Fatal("watch channel closed without a response")
	}
	if !errors.Is(wresp.Err(), rpctypes.ErrCompacted) {
		t.Fatalf("Watch at compacted revision %d: err %v, want ErrCompacted", first, wresp.Err())
	}
	if wresp.CompactRevision != rev {
		t.Errorf("CompactRevision = %d, want %d", wresp.CompactRevision, rev)
	}
	if _, err := cli.Get(ctx, "k0", clientv3.WithRev(first)); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Errorf("Get at compacted revision: err %v, want ErrCompacted", err)
	}
}

func TestThreeMembersSurviveOneLossNotTwo(t *testing.T) {
	c := startCluster(t, 3)
	cli := client(t, c)
	if err := putWithin(t.Context(), cli, 5*time.Second, "k", "three"); err != nil {
		t.Fatalf("Put with three members: %v", err)
	}

	// Stop the leader first: the other two elect a new one.
	first := c.Leader()
	if first < 0 {
		t.Fatal("no leader")
	}
	if err := c.StopMember(first); err != nil {
		t.Fatalf("StopMember %d: %v", first, err)
	}
	if err := putWithin(t.Context(), cli, 10*time.Second, "k", "two"); err != nil {
		t.Fatalf("Put with two members: %v", err)
	}

	second := (first + 1) % 3
	if err := c.StopMember(second); err != nil {
		t.Fatalf("StopMember %d: %v", second, err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	_, err := cli.Put(ctx, "k", "one")
	cancel()
	if err == nil {
		t.Fatal("Put with one member of three succeeded")
	}

	// Either restarted member restores the quorum; start both at once so
	// neither start depends on the other's order.
	ctx, cancel = context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	errs := make(chan error, 2)
	for _, i := range []int{first, second} {
		go func() { errs <- c.StartMember(ctx, i) }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("StartMember: %v", err)
		}
	}
	if err := putWithin(t.Context(), cli, 10*time.Second, "k", "three-again"); err != nil {
		t.Fatalf("Put after restarts: %v", err)
	}
	if got := get(t, cli, "k"); got != "three-again" {
		t.Errorf("Get k = %q, want three-again", got)
	}
}

func TestGivenDirIsKept(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	c, err := Start(ctx, Options{Dir: dir})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := os.Stat(c.Dir() + "/m0"); err != nil {
		t.Fatalf("member dir after Close: %v", err)
	}
	if _, err := Start(ctx, Options{Dir: dir}); err == nil {
		t.Fatal("Start on a dir with member data: no error")
	}
}

func TestStopCutsOpenStreamsAtOnce(t *testing.T) {
	c := startCluster(t, 1)
	cli := client(t, c)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()

	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatalf("Grant: %v", err)
	}
	kctx, kcancel := context.WithCancel(ctx)
	defer kcancel()
	if _, err := cli.KeepAlive(kctx, lease.ID); err != nil {
		t.Fatalf("KeepAlive: %v", err)
	}
	wch := cli.Watch(kctx, "k")
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if resp := <-wch; len(resp.Events) != 1 {
		t.Fatalf("watch: %+v, want one event", resp)
	}

	// etcd's own graceful stop would wait about 7 s for these streams.
	start := time.Now()
	if err := c.StopMember(0); err != nil {
		t.Fatalf("StopMember: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("StopMember with open streams took %v, want < 3s", d)
	}
}
