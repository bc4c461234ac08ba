// Package proxyreg owns a proxy's presence in etcd (DESIGN §3): its record
// at proxies/<name> and its cancel ID claim at proxy-cancel-ids/<id>, both
// on a lease of its own that it keeps alive, re-establishes after the
// lease is lost or etcd comes back, and revokes on a clean stop
// (Registrar); and the cache of the other live proxies' records that
// cross-proxy cancel forwarding reads without an etcd round trip
// (Directory).
//
// It must not know the proxy package: the proxy's cancel ID comes and goes
// through two functions, and what the records mean is internal/cluster's.
package proxyreg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/metrics"
)

// Defaults of Config's durations.
const (
	DefaultTTL       = 10 * time.Second
	DefaultOpTimeout = 3 * time.Second
	retryMin         = 200 * time.Millisecond
	retryMax         = 5 * time.Second
)

// Config says what a Registrar registers, and where.
type Config struct {
	Client *clientv3.Client
	Keys   cluster.Keys
	// Record is the proxy's record; its CancelID is filled in by the
	// Registrar with the ID it holds.
	Record cluster.Proxy
	// TTL is the lease's; a proxy that dies is gone from the registry
	// within it. 0 means DefaultTTL; at least 2s.
	TTL time.Duration
	// OpTimeout bounds each etcd call. 0 means DefaultOpTimeout.
	OpTimeout time.Duration
	// CancelID returns the ID the proxy's keys carry now; SetCancelID makes
	// the proxy issue keys with another. The first registration takes the
	// lowest free ID (the proxy has issued no key yet if the caller waited
	// for Ready); later ones keep the current ID when it is free, so that
	// keys already issued stay reachable from other proxies.
	CancelID    func() uint16
	SetCancelID func(uint16) error
	Log         *slog.Logger
	Metrics     *metrics.Proxy // Registered and CancelID; nil for none
}

// Registrar keeps a proxy registered until its Run's context ends.
type Registrar struct {
	cfg        Config
	log        *slog.Logger
	ready      chan struct{} // closed after the first attempt, success or not
	registered atomic.Bool
	// Owned by Run.
	first     bool
	lastLease clientv3.LeaseID
}

// NewRegistrar checks cfg and returns a Registrar; Run starts it.
func NewRegistrar(cfg Config) (*Registrar, error) {
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.OpTimeout == 0 {
		cfg.OpTimeout = DefaultOpTimeout
	}
	switch {
	case cfg.Client == nil:
		return nil, errors.New("proxy registry: no etcd client")
	case cfg.TTL < 2*time.Second:
		return nil, fmt.Errorf("proxy registry: lease TTL %s is below 2s", cfg.TTL)
	case cfg.CancelID == nil || cfg.SetCancelID == nil:
		return nil, errors.New("proxy registry: CancelID and SetCancelID are required")
	}
	if err := cfg.Record.Validate(); err != nil {
		return nil, fmt.Errorf("proxy registry: %w", err)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Registrar{cfg: cfg, log: cfg.Log.With("proxy", cfg.Record.Name), ready: make(chan struct{}), first: true}, nil
}

// Ready is closed once the first registration attempt has ended, whether
// it succeeded or not (etcd unreachable: Run keeps trying).
func (r *Registrar) Ready() <-chan struct{} { return r.ready }

// Registered reports whether the proxy's record is in etcd as far as the
// Registrar knows (its last renewal succeeded within the TTL).
func (r *Registrar) Registered() bool { return r.registered.Load() }

// Run registers the proxy and keeps it registered until ctx ends; then it
// revokes the lease, which deletes the record and the claim. It returns
// nil: every failure is retried, logged and shown by
// pharos_proxy_registered 0.
func (r *Registrar) Run(ctx context.Context) error {
	backoff := retryMin
	readyDone := false
	for {
		err := r.session(ctx, func() {
			backoff = retryMin
			if !readyDone {
				close(r.ready)
				readyDone = true
			}
		})
		r.setRegistered(false)
		if !readyDone {
			close(r.ready)
			readyDone = true
		}
		if ctx.Err() != nil {
			r.revokeLast()
			return nil
		}
		r.log.Error("proxy not registered in etcd, retrying; other proxies cannot pass cancel requests on to it meanwhile",
			"err", err, "retry_in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			r.revokeLast()
			return nil
		}
		backoff = min(backoff*2, retryMax)
	}
}

var errLeaseGone = errors.New("lease expired")

// session grants a lease, claims an ID, writes the record and renews the
// lease until it is lost, the record is deleted by someone else, or ctx
// ends. registered is called once the record is written.
func (r *Registrar) session(ctx context.Context, registered func()) error {
	cli := r.cfg.Client
	if r.lastLease != 0 {
		// A lease we could not renew may still live: revoke it so that its
		// claim frees our ID for us.
		r.revokeLast()
	}
	octx, cancel := context.WithTimeout(ctx, r.cfg.OpTimeout)
	lease, err := cli.Grant(octx, int64(r.cfg.TTL/time.Second))
	cancel()
	if err != nil {
		return fmt.Errorf("grant lease: %w", err)
	}
	r.lastLease = lease.ID
	lastRenew := time.Now()
	id, rev, err := r.claim(ctx, lease.ID)
	if err != nil {
		return err
	}
	r.first = false
	if cur := r.cfg.CancelID(); id != 0 && id != cur {
		if err := r.cfg.SetCancelID(id); err != nil {
			return fmt.Errorf("set cancel id: %w", err)
		}
	}
	if m := r.cfg.Metrics; m != nil {
		m.CancelID.Set(float64(r.cfg.CancelID()))
	}
	r.setRegistered(true)
	r.log.Info("proxy registered in etcd", "key", r.cfg.Keys.Proxy(r.cfg.Record.Name), "cancel_id", id,
		"lease", fmt.Sprintf("%x", lease.ID), "ttl", r.cfg.TTL)
	registered()

	// Someone deleting the record (an operator's etcdctl del) must not
	// leave the proxy unlisted until its lease ends: the watch sees it.
	wctx, stopWatch := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer stopWatch()
	watch := cli.Watch(wctx, r.cfg.Keys.Proxy(r.cfg.Record.Name), clientv3.WithRev(rev+1), clientv3.WithFilterPut())
	tick := time.NewTicker(r.cfg.TTL / 3)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case wr, ok := <-watch:
			if !ok || wr.Err() != nil {
				// The watch failed (etcd away, compaction): renewals still
				// tell whether the lease lives; stop looking at deletes.
				watch = nil
				continue
			}
			if len(wr.Events) > 0 {
				return errors.New("the proxy's record was deleted")
			}
		case <-tick.C:
			octx, cancel := context.WithTimeout(ctx, r.cfg.OpTimeout)
			resp, err := cli.KeepAliveOnce(octx, lease.ID)
			cancel()
			switch {
			case errors.Is(err, rpctypes.ErrLeaseNotFound) || (err == nil && resp.TTL <= 0):
				r.lastLease = 0
				return errLeaseGone
			case err == nil:
				lastRenew = time.Now()
				if !r.registered.Load() {
					r.setRegistered(true)
					r.log.Info("proxy registration renewed after an etcd outage", "cancel_id", r.cfg.CancelID())
				}
			case time.Since(lastRenew) >= r.cfg.TTL:
				return fmt.Errorf("no lease renewal for %s, the lease has expired: %w", r.cfg.TTL, err)
			default:
				if r.registered.Load() {
					r.log.Warn("proxy lease renewal failed", "err", err)
				}
				r.setRegistered(false)
			}
		}
	}
}

// claim takes a cancel ID and writes the record, both on lease in one
// transaction, and returns the ID (0 when none was free) and the
// transaction's revision.
func (r *Registrar) claim(ctx context.Context, lease clientv3.LeaseID) (uint16, int64, error) {
	cli, keys, name := r.cfg.Client, r.cfg.Keys, r.cfg.Record.Name
	r.checkNameTaken(ctx)
	// Each lost race means another proxy took an ID, so this ends.
	for attempt := 0; attempt <= cluster.MaxCancelID; attempt++ {
		octx, cancel := context.WithTimeout(ctx, r.cfg.OpTimeout)
		resp, err := cli.Get(octx, keys.CancelIDsPrefix(), clientv3.WithPrefix())
		cancel()
		if err != nil {
			return 0, 0, fmt.Errorf("read cancel ID claims: %w", err)
		}
		held := make(map[uint16]claimKV)
		for _, kv := range resp.Kvs {
			seg := strings.TrimPrefix(string(kv.Key), keys.CancelIDsPrefix())
			if id, ok := cluster.ParseCancelIDKey(seg); ok {
				held[id] = claimKV{holder: string(kv.Value), modRev: kv.ModRevision}
			}
		}
		id, cmp := r.pick(held)
		rec := r.cfg.Record
		rec.CancelID = id
		data, err := cluster.MarshalProxy(rec)
		if err != nil {
			return 0, 0, err
		}
		ops := []clientv3.Op{clientv3.OpPut(keys.Proxy(name), string(data), clientv3.WithLease(lease))}
		if id != 0 {
			ops = append(ops, clientv3.OpPut(keys.CancelID(id), name, clientv3.WithLease(lease)))
		} else {
			r.log.Error("every cancel ID is held by a live proxy: registered without one; cancel requests for this proxy's sessions work only when sent to it",
				"max", cluster.MaxCancelID)
		}
		octx, cancel = context.WithTimeout(ctx, r.cfg.OpTimeout)
		tr, err := cli.Txn(octx).If(cmp...).Then(ops...).Commit()
		cancel()
		if err != nil {
			return 0, 0, fmt.Errorf("write proxy record: %w", err)
		}
		if tr.Succeeded {
			return id, tr.Header.Revision, nil
		}
		// Another proxy took the ID between the read and the write.
	}
	return 0, 0, errors.New("lost every race for a cancel ID")
}

// checkNameTaken logs an error when a record under the proxy's name is on
// a live lease and is not this proxy's own (another start time or
// listeners): two proxies with one name overwrite each other's record, and
// only the last writer's cancel ID is reachable from other proxies.
func (r *Registrar) checkNameTaken(ctx context.Context) {
	octx, cancel := context.WithTimeout(ctx, r.cfg.OpTimeout)
	defer cancel()
	resp, err := r.cfg.Client.Get(octx, r.cfg.Keys.Proxy(r.cfg.Record.Name))
	if err != nil || len(resp.Kvs) == 0 || resp.Kvs[0].Lease == 0 {
		return
	}
	p, err := cluster.ParseProxy(resp.Kvs[0].Value)
	mine := r.cfg.Record
	if err == nil && p.StartedAt.Equal(mine.StartedAt) && p.Listeners == mine.Listeners {
		return
	}
	r.log.Error("another live proxy is registered under this name; proxy names must be unique in a cluster (set name)",
		"key", r.cfg.Keys.Proxy(mine.Name), "other_listeners", p.Listeners, "other_started_at", p.StartedAt)
}

type claimKV struct {
	holder string
	modRev int64
}

// pick chooses the ID to claim and the comparison that makes the claim
// safe: the key absent, or still the one our own name held (a lease of
// ours that was not revoked).
func (r *Registrar) pick(held map[uint16]claimKV) (uint16, []clientv3.Cmp) {
	keys, name := r.cfg.Keys, r.cfg.Record.Name
	free := func(id uint16) ([]clientv3.Cmp, bool) {
		c, taken := held[id]
		switch {
		case !taken:
			return []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(keys.CancelID(id)), "=", 0)}, true
		case c.holder == name:
			return []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(keys.CancelID(id)), "=", c.modRev)}, true
		}
		return nil, false
	}
	if cur := r.cfg.CancelID(); !r.first && cur >= 1 && cur <= cluster.MaxCancelID {
		if cmp, ok := free(cur); ok {
			return cur, cmp
		}
	}
	for id := uint16(1); id <= cluster.MaxCancelID; id++ {
		if cmp, ok := free(id); ok {
			return id, cmp
		}
	}
	return 0, nil
}

func (r *Registrar) setRegistered(v bool) {
	r.registered.Store(v)
	if m := r.cfg.Metrics; m != nil {
		if v {
			m.Registered.Set(1)
		} else {
			m.Registered.Set(0)
		}
	}
}

// revokeLast revokes the last lease granted, which deletes the record and
// the claim; best effort, bounded by OpTimeout.
func (r *Registrar) revokeLast() {
	if r.lastLease == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.OpTimeout)
	defer cancel()
	if _, err := r.cfg.Client.Revoke(ctx, r.lastLease); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		r.log.Warn("could not revoke the proxy's lease; its record stays until the lease expires", "err", err, "ttl", r.cfg.TTL)
	} else {
		r.log.Info("proxy unregistered from etcd")
	}
	r.lastLease = 0
}
