package router

import (
	"log/slog"

	"github.com/pharos-ha/pharos/internal/cluster"
)

// PharosFormat reads a pharos cluster's own keys (DESIGN §3): the leader
// key names the member whose record must also say primary before rw goes
// there; replicas come from their records.
type PharosFormat struct {
	keys cluster.Keys
	log  *slog.Logger

	// Owned by the source's Run: which bad records were already reported,
	// by key, at which mod revision, so each is logged once.
	reported map[string]int64
}

// NewPharosFormat follows the cluster's keys under /pharos/<cluster>/.
func NewPharosFormat(keys cluster.Keys, log *slog.Logger) *PharosFormat {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &PharosFormat{keys: keys, log: log, reported: make(map[string]int64)}
}

func (f *PharosFormat) Prefix() string { return f.keys.Prefix() }

func (f *PharosFormat) Snapshot(kvs map[string]KeyValue) (Snapshot, int64) {
	var leader string
	var epoch int64
	members := make(map[string]cluster.Member)
	for _, key := range sortedNames(kvs) {
		kv := kvs[key]
		kind, name := f.keys.Classify(key)
		switch kind {
		case cluster.KeyLeader:
			if v := string(kv.Value); cluster.ValidName(v) {
				leader, epoch = v, kv.CreateRevision
			} else {
				f.reject(key, kv, "leader key does not hold a member name")
			}
		case cluster.KeyMember:
			m, err := cluster.ParseMember(kv.Value)
			switch {
			case err != nil:
				f.reject(key, kv, err.Error())
			case m.Name != name:
				f.reject(key, kv, "record names member "+m.Name)
			default:
				members[name] = m
			}
		}
	}
	for key := range f.reported {
		if _, ok := kvs[key]; !ok {
			delete(f.reported, key)
		}
	}
	snap := Snapshot{}
	for _, name := range sortedNames(members) {
		m := members[name]
		rm := Member{Name: name, Addr: m.Addr(), Role: RoleUnknown, LagBytes: m.Lag(), NoLoadBalance: m.Tags.NoLoadBalance}
		switch m.Role {
		case cluster.RolePrimary:
			rm.Role, rm.Healthy = RolePrimary, true
		case cluster.RoleReplica:
			rm.Role, rm.Healthy = RoleReplica, true
		}
		snap.Members = append(snap.Members, rm)
	}
	// rw only to the leader whose own record says primary: holding the key
	// while still promoting is not enough.
	if m, ok := members[leader]; ok && m.Role == cluster.RolePrimary {
		snap.Primary = leader
	}
	return snap, epoch
}

func (f *PharosFormat) reject(key string, kv KeyValue, why string) {
	if f.reported[key] == kv.ModRevision {
		return
	}
	f.reported[key] = kv.ModRevision
	f.log.Warn("ignoring etcd key", "key", key, "mod_revision", kv.ModRevision, "reason", why)
}
