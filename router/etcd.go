package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pharos-ha/pharos/metrics"
)

// KeyValue is one key of the watched prefix as a format sees it.
type KeyValue struct {
	Value          []byte
	CreateRevision int64
	ModRevision    int64
	// Lease is the ID of the lease the key is attached to, 0 for none.
	// Agents (pharos's and Patroni's) write leader and member records on
	// their lease, so that a dead agent's records expire; one without a
	// lease was written by someone else and would never go.
	Lease int64
}

func keyValue(kv *mvccpb.KeyValue) KeyValue {
	return KeyValue{Value: kv.Value, CreateRevision: kv.CreateRevision, ModRevision: kv.ModRevision, Lease: kv.Lease}
}

// Format turns the keys under a prefix into a topology. Implementations
// must treat every value as untrusted: a record that does not parse is
// skipped (and logged by the format), never routed to.
type Format interface {
	// Prefix is the key prefix to watch.
	Prefix() string
	// Snapshot builds the topology from all keys under Prefix. epoch is
	// the leadership epoch (0 when there is no leader).
	Snapshot(keys map[string]KeyValue) (snap Snapshot, epoch int64)
}

// Etcd is a topology source that follows a Format's keys with one watch:
// an initial Get, then a Watch from the next revision so no change falls in
// between. A compacted or cancelled watch, and every recovery after etcd
// was unreachable, start over with a fresh Get. While etcd is unreachable
// the last topology keeps serving; etcd_up says so.
type Etcd struct {
	// Static after construction.
	client  *clientv3.Client
	format  Format
	probe   time.Duration
	log     *slog.Logger
	metrics *metrics.Proxy

	// Health, when set, excludes members that fail its checks.
	health *HealthChecker

	// Owned by Run.
	keys      map[string]KeyValue
	now       func() time.Time
	unhealthy map[string]bool // addresses the last health round failed

	// Shared between Run and its health goroutine.
	healthMu      sync.Mutex
	healthTargets []HealthTarget  // guarded by healthMu: what to check next
	healthResult  map[string]bool // guarded by healthMu: the last round's failures
	healthReady   chan struct{}   // a new round finished (capacity 1)
}

// WithHealthChecks makes the source exclude members that fail h's checks;
// etcd still decides everything else. Call before Run.
func (e *Etcd) WithHealthChecks(h *HealthChecker) *Etcd {
	e.health = h
	e.healthReady = make(chan struct{}, 1)
	return e
}

// runHealth checks the members of the topology in force every interval
// until ctx ends.
func (e *Etcd) runHealth(ctx context.Context) {
	defer e.health.Close()
	ticker := time.NewTicker(e.health.Interval())
	defer ticker.Stop()
	for {
		e.healthMu.Lock()
		targets := slices.Clone(e.healthTargets)
		e.healthMu.Unlock()
		failed := e.health.Round(ctx, targets)
		if ctx.Err() != nil {
			return
		}
		e.healthMu.Lock()
		changed := !maps.Equal(failed, e.healthResult)
		e.healthResult = failed
		e.healthMu.Unlock()
		if changed {
			select {
			case e.healthReady <- struct{}{}:
			default:
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// takeHealth adopts the health checker's latest result.
func (e *Etcd) takeHealth() {
	e.healthMu.Lock()
	e.unhealthy = e.healthResult
	e.healthMu.Unlock()
}

// NewEtcd returns a source reading format's keys through client.
func NewEtcd(client *clientv3.Client, format Format, probeInterval time.Duration, log *slog.Logger, m *metrics.Proxy) *Etcd {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if probeInterval <= 0 {
		probeInterval = time.Second
	}
	return &Etcd{client: client, format: format, probe: probeInterval, log: log, metrics: m, now: time.Now}
}

// errResync ends one watch so that Run starts over with a fresh Get.
var errResync = errors.New("resync")

// Run feeds r until ctx ends.
func (e *Etcd) Run(ctx context.Context, r *Router) error {
	if e.health != nil {
		var wg sync.WaitGroup
		hctx, stop := context.WithCancel(ctx)
		wg.Go(func() { e.runHealth(hctx) })
		defer wg.Wait()
		defer stop()
	}
	backoff := 100 * time.Millisecond
	up := true
	for ctx.Err() == nil {
		rev, err := e.resync(ctx, r)
		if err == nil {
			if !up {
				e.log.Warn("etcd reachable again; topology re-read", "revision", rev)
			}
			up = true
			e.metrics.EtcdUp.Set(1)
			backoff = 100 * time.Millisecond
			err = e.watch(ctx, r, rev)
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, errResync) {
				continue
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		if up {
			e.log.Error("etcd unreachable: serving the last known topology", "err", err)
		}
		up = false
		e.metrics.EtcdUp.Set(0)
		wait := time.NewTimer(backoff)
	waitLoop:
		for {
			select {
			case <-ctx.Done():
				wait.Stop()
				return nil
			case <-e.healthReady:
				// Health still applies to the last known topology.
				e.takeHealth()
				if e.keys != nil {
					e.apply(r, e.now())
				}
			case <-wait.C:
				break waitLoop
			}
		}
		backoff = min(backoff*2, 2*time.Second)
	}
	return nil
}

// resync reads the whole prefix and installs it; it returns the revision
// the watch must continue from.
func (e *Etcd) resync(ctx context.Context, r *Router) (int64, error) {
	gctx, cancel := context.WithTimeout(ctx, 2*e.probe+time.Second)
	defer cancel()
	resp, err := e.client.Get(gctx, e.format.Prefix(), clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", e.format.Prefix(), err)
	}
	e.keys = make(map[string]KeyValue, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		e.keys[string(kv.Key)] = keyValue(kv)
	}
	e.apply(r, e.now())
	return resp.Header.Revision, nil
}

// watch follows the prefix from rev+1 until the watch fails or etcd stops
// answering. The probe runs in its own goroutine from the start, because
// opening a watch blocks inside the client for as long as etcd is away.
func (e *Etcd) watch(ctx context.Context, r *Router, rev int64) error {
	wctx, cancel := context.WithCancelCause(clientv3.WithRequireLeader(ctx))
	var probes sync.WaitGroup
	defer probes.Wait()
	defer cancel(nil)
	probes.Go(func() { e.probeLoop(wctx, cancel) })
	wch := e.client.Watch(wctx, e.format.Prefix(), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for {
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// The probe failed. The watch may have missed nothing, or a
			// compaction may be waiting for it; either way, start over
			// once etcd answers again.
			return context.Cause(wctx)
		case <-e.healthReady:
			e.takeHealth()
			e.apply(r, e.now())
		case resp, ok := <-wch:
			if !ok {
				return fmt.Errorf("watch closed: %w", errResync)
			}
			if err := resp.Err(); err != nil {
				if errors.Is(err, rpctypes.ErrCompacted) {
					e.log.Warn("watch revision compacted; re-reading the topology", "compact_revision", resp.CompactRevision)
					return errResync
				}
				return fmt.Errorf("watch: %w", err)
			}
			if resp.Canceled {
				return fmt.Errorf("watch cancelled: %w", errResync)
			}
			if len(resp.Events) == 0 {
				continue
			}
			received := e.now()
			for _, ev := range resp.Events {
				key := string(ev.Kv.Key)
				if ev.Type == mvccpb.DELETE {
					delete(e.keys, key)
					continue
				}
				e.keys[key] = keyValue(ev.Kv)
			}
			e.apply(r, received)
		}
	}
}

// probeLoop checks every probe interval that etcd answers, and cancels
// the watch with the reason when it does not.
func (e *Etcd) probeLoop(ctx context.Context, fail context.CancelCauseFunc) {
	ticker := time.NewTicker(e.probe)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			if err := e.probeOnce(ctx); err != nil && ctx.Err() == nil {
				fail(err)
				return
			}
		}
	}
}

func (e *Etcd) probeOnce(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, e.probe)
	defer cancel()
	// A linearizable read needs a live etcd leader: exactly "reachable".
	_, err := e.client.Get(pctx, e.format.Prefix()+"leader", clientv3.WithCountOnly())
	if err != nil {
		return fmt.Errorf("etcd probe: %w", err)
	}
	return nil
}

// apply installs the topology of the current keys; received is when the
// change arrived, for the route-switch latency.
func (e *Etcd) apply(r *Router, received time.Time) {
	snap, epoch := e.format.Snapshot(e.keys)
	if e.health != nil {
		targets := make([]HealthTarget, 0, len(snap.Members))
		for i, m := range snap.Members {
			targets = append(targets, HealthTarget{Name: m.Name, Addr: m.Addr})
			if e.unhealthy[m.Addr] {
				snap.Members[i].Healthy = false
			}
		}
		e.healthMu.Lock()
		e.healthTargets = targets
		e.healthMu.Unlock()
	}
	before, _ := r.Current()
	r.Update(snap)
	after, _ := r.Current()
	e.metrics.LeaderEpoch.Set(float64(epoch))
	e.metrics.EtcdIgnored.WithLabelValues(metrics.IgnoredUnleased).Set(float64(snap.Ignored.Unleased))
	e.metrics.EtcdIgnored.WithLabelValues(metrics.IgnoredInvalid).Set(float64(snap.Ignored.Invalid))
	if before != after {
		e.metrics.RouteSwitch.Observe(e.now().Sub(received).Seconds())
		e.log.Info("rw route switched", "from", before, "to", after, "epoch", epoch)
	}
}

// sortedNames returns the keys of m in order, for deterministic snapshots.
func sortedNames[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
