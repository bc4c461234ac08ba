package router_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pharos-ha/pharos/internal/pglocal"
)

// shared is one primary and one streaming replica, started on first use so
// the pure router tests pay nothing for it, and stopped by TestMain. Tests
// that use it must leave it as they found it (both servers up, roles
// unchanged); tests that break a server irreversibly start their own with
// newCluster.
var shared struct {
	once sync.Once
	c    *pglocal.Cluster
	err  error
}

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	code := m.Run()
	if shared.c != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := shared.c.Close(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "stop PostgreSQL:", err)
			code = 1
		}
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			return 1
		}
	}
	return code
}

// sharedCluster returns the package's shared cluster, starting it once.
func sharedCluster(t *testing.T) *pglocal.Cluster {
	t.Helper()
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
		defer cancel()
		shared.c, shared.err = pglocal.NewCluster(ctx, pglocal.Options{Replicas: 1, Fast: true})
	})
	if shared.err != nil {
		t.Fatalf("start shared PostgreSQL cluster: %v", shared.err)
	}
	return shared.c
}

// newCluster starts a private cluster with one replica, closed when the
// test ends.
func newCluster(t *testing.T) *pglocal.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
	defer cancel()
	c, err := pglocal.NewCluster(ctx, pglocal.Options{Replicas: 1, Fast: true})
	if err != nil {
		t.Fatalf("start PostgreSQL cluster: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.Close(ctx); err != nil {
			t.Errorf("stop PostgreSQL cluster: %v", err)
		}
	})
	return c
}
