package proxyreg

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pharos-ha/pharos/internal/cluster"
)

// Directory is a cache of the cluster's live proxy records, kept by one
// Get and a Watch from the next revision (started over after a failure),
// so that a lookup never waits on etcd. A record that does not parse, is
// on no lease or names another proxy than its key is ignored with a log
// line; two records with one cancel ID (which the claims rule out) make
// that ID unknown. While etcd is unreachable the last view stays.
type Directory struct {
	cli  *clientv3.Client
	keys cluster.Keys
	self string
	log  *slog.Logger

	mu sync.RWMutex
	// Guarded by mu.
	records map[string]cluster.Proxy // valid records by name, self excluded
	byID    map[uint16]string        // cancel ID → address for CancelRequests
	// Owned by Run.
	logged map[string]int64 // key → mod revision of a bad value already logged
}

// NewDirectory returns a Directory of the proxies of keys' cluster other
// than self; Run fills it.
func NewDirectory(cli *clientv3.Client, keys cluster.Keys, self string, log *slog.Logger) *Directory {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Directory{cli: cli, keys: keys, self: self, log: log,
		records: make(map[string]cluster.Proxy), byID: make(map[uint16]string), logged: make(map[string]int64)}
}

// CancelAddr returns where to send a CancelRequest whose key carries
// owner: the listener of the live proxy holding that cancel ID. It never
// returns the Directory's own proxy.
func (d *Directory) CancelAddr(owner uint16) (string, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	a, ok := d.byID[owner]
	return a, ok
}

// Proxies returns the other live proxies' records, by name.
func (d *Directory) Proxies() []cluster.Proxy {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make([]cluster.Proxy, 0, len(d.records))
	for _, n := range slices.Sorted(maps.Keys(d.records)) {
		out = append(out, d.records[n])
	}
	return out
}

// Run follows the proxies' records until ctx ends; it returns nil.
func (d *Directory) Run(ctx context.Context) error {
	backoff := retryMin
	for {
		rev, err := d.load(ctx)
		if err == nil {
			backoff = retryMin
			err = d.follow(ctx, rev)
		}
		if ctx.Err() != nil {
			return nil
		}
		d.log.Warn("proxy directory: etcd read failed, keeping the last view", "err", err, "retry_in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil
		}
		backoff = min(backoff*2, retryMax)
	}
}

func (d *Directory) load(ctx context.Context) (int64, error) {
	octx, cancel := context.WithTimeout(ctx, DefaultOpTimeout)
	defer cancel()
	resp, err := d.cli.Get(octx, d.keys.ProxiesPrefix(), clientv3.WithPrefix())
	if err != nil {
		return 0, err
	}
	records := make(map[string]cluster.Proxy)
	for _, kv := range resp.Kvs {
		if name, p, ok := d.parse(kv); ok {
			records[name] = p
		}
	}
	d.install(records)
	return resp.Header.Revision, nil
}

func (d *Directory) follow(ctx context.Context, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for wr := range d.cli.Watch(wctx, d.keys.ProxiesPrefix(), clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if err := wr.Err(); err != nil {
			return err
		}
		d.mu.RLock()
		records := maps.Clone(d.records)
		d.mu.RUnlock()
		for _, ev := range wr.Events {
			name := strings.TrimPrefix(string(ev.Kv.Key), d.keys.ProxiesPrefix())
			delete(records, name)
			delete(d.logged, string(ev.Kv.Key))
			if ev.Type == mvccpb.PUT {
				if n, p, ok := d.parse(ev.Kv); ok {
					records[n] = p
				}
			}
		}
		d.install(records)
	}
	return ctx.Err()
}

// parse returns a key's record if it is usable, logging why once per
// value when it is not.
func (d *Directory) parse(kv *mvccpb.KeyValue) (string, cluster.Proxy, bool) {
	key := string(kv.Key)
	kind, name := d.keys.Classify(key)
	if kind != cluster.KeyProxy || name == d.self {
		return "", cluster.Proxy{}, false
	}
	bad := func(why string) (string, cluster.Proxy, bool) {
		if d.logged[key] != kv.ModRevision {
			d.logged[key] = kv.ModRevision
			d.log.Warn("ignoring a proxy record", "key", key, "mod_revision", kv.ModRevision, "reason", why)
		}
		return "", cluster.Proxy{}, false
	}
	if kv.Lease == 0 {
		return bad("not on a lease, so not a live proxy's")
	}
	p, err := cluster.ParseProxy(kv.Value)
	if err != nil {
		return bad(err.Error())
	}
	if p.Name != name {
		return bad("record names proxy " + p.Name)
	}
	return name, p, true
}

// install makes records the view.
func (d *Directory) install(records map[string]cluster.Proxy) {
	byID := make(map[uint16]string)
	holders := make(map[uint16][]string)
	for _, n := range slices.Sorted(maps.Keys(records)) {
		p := records[n]
		if p.CancelID == 0 {
			continue
		}
		holders[p.CancelID] = append(holders[p.CancelID], n)
		byID[p.CancelID] = p.Listeners.CancelAddr()
	}
	for id, hs := range holders {
		if len(hs) > 1 {
			delete(byID, id)
			d.log.Warn("proxies share a cancel ID; cancel requests for it are dropped", "cancel_id", id, "proxies", hs)
		}
	}
	d.mu.Lock()
	d.records, d.byID = records, byID
	d.mu.Unlock()
}
