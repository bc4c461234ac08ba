package proxy

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/pharos-ha/pharos/internal/pgauth"
)

// TestAuthCacheBounded: the auth_query cache never holds more than
// authCacheMax users; when full, expired entries make room first, and the
// newest answer is always kept.
func TestAuthCacheBounded(t *testing.T) {
	q := &queryUsers{ttl: time.Minute, cache: make(map[string]cachedUser)}
	t0 := time.Unix(1000, 0)
	for i := range authCacheMax {
		at := t0
		if i%2 == 0 {
			at = t0.Add(-time.Hour) // expired by the time the cache is full
		}
		q.store("u"+strconv.Itoa(i), cachedUser{fetched: at})
	}
	q.store("new", cachedUser{fetched: t0})
	if _, ok := q.cache["new"]; !ok || len(q.cache) != authCacheMax/2+1 {
		t.Fatalf("after one more user: %d entries, new kept %v; want the expired half gone", len(q.cache), ok)
	}
	for i := range 2 * authCacheMax {
		q.store("x"+strconv.Itoa(i), cachedUser{fetched: t0})
		if len(q.cache) > authCacheMax {
			t.Fatalf("%d entries, bound %d", len(q.cache), authCacheMax)
		}
	}
	if _, ok := q.cache["x"+strconv.Itoa(2*authCacheMax-1)]; !ok {
		t.Fatal("the newest answer was evicted")
	}
}

// TestAuthQueryMergesLookups: logins of one user at the same time run one
// auth_query; another user's lookup is not held up by it.
func TestAuthQueryMergesLookups(t *testing.T) {
	q := &queryUsers{ttl: time.Minute, now: time.Now, cache: make(map[string]cachedUser), limit: rate.NewLimiter(authQueryRate, authQueryBurst)}
	var calls atomic.Int32
	release := make(chan struct{})
	q.fetch = func(ctx context.Context, user string) (pgauth.Verifier, bool, error) {
		calls.Add(1)
		if user == "alice" {
			<-release
		}
		return pgauth.Verifier{Kind: pgauth.KindMD5, MD5: user}, true, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			v, known, _, err := q.lookup(ctx, "alice", false)
			if err != nil || !known || v.MD5 != "alice" {
				t.Errorf("lookup: %v %v %v", v, known, err)
			}
		})
	}
	// Wait until the first lookup is in its query, then another user.
	for calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	if _, _, _, err := q.lookup(ctx, "bob", false); err != nil {
		t.Fatalf("bob: %v", err)
	}
	time.Sleep(50 * time.Millisecond) // let the other alice lookups join
	close(release)
	wg.Wait()
	if n := calls.Load(); n != 2 {
		t.Fatalf("%d queries for 20 logins of alice and one of bob, want 2", n)
	}
	// Answers are cached: no query at all now.
	if _, _, fetched, _ := q.lookup(ctx, "alice", false); fetched || calls.Load() != 2 {
		t.Fatalf("cached answer asked again")
	}
}

// TestAuthQueryRateBound: lookups beyond the rate wait their turn within
// the login's deadline, then fail with errAuthQueryBusy; a refresh after
// a failed login does not wait at all.
func TestAuthQueryRateBound(t *testing.T) {
	q := &queryUsers{ttl: time.Minute, now: time.Now, cache: make(map[string]cachedUser), limit: rate.NewLimiter(authQueryRate, authQueryBurst)}
	var calls atomic.Int32
	q.fetch = func(context.Context, string) (pgauth.Verifier, bool, error) {
		calls.Add(1)
		return pgauth.Verifier{}, false, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	var busy int
	for i := range 2 * authQueryBurst {
		_, _, _, err := q.lookup(ctx, "random-"+strconv.Itoa(i), false)
		switch {
		case errors.Is(err, errAuthQueryBusy):
			busy++
		case err != nil:
			t.Fatalf("lookup %d: %v", i, err)
		}
	}
	elapsed := time.Since(start)
	// The burst at once, then 50/s for 100 ms: about 5 more.
	if n := int(calls.Load()); n < authQueryBurst || n > authQueryBurst+authQueryRate*int(elapsed/time.Second+1) || busy == 0 {
		t.Fatalf("%d queries and %d refused in %v for %d random names; want the burst of %d and a few at %d/s", n, busy, elapsed, 2*authQueryBurst, authQueryBurst, authQueryRate)
	}
	if elapsed > time.Second {
		t.Fatalf("lookups beyond the deadline waited %v", elapsed)
	}
	before := time.Now()
	if _, _, _, err := q.lookup(context.Background(), "random-0", true); !errors.Is(err, errAuthQueryBusy) || time.Since(before) > 50*time.Millisecond {
		t.Fatalf("refresh with no token left: %v after %v, want errAuthQueryBusy at once", err, time.Since(before))
	}
}
