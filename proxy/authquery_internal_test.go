package proxy

import (
	"strconv"
	"testing"
	"time"
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
