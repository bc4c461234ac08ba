package router

import (
	"log/slog"

	"github.com/pharos-ha/pharos/internal/cluster"
)

// PatroniFormat reads an existing Patroni cluster's etcd v3 keys
// (/<namespace>/<scope>/), so the proxy can stand where HAProxy stood.
// The member named by the leader key is the rw target only once its own
// record says it runs as primary: a member Patroni still reports as
// "promoted" is read-only and gets no writes.
type PatroniFormat struct {
	keys    cluster.PatroniKeys
	rejects rejectLog
}

// NewPatroniFormat follows the Patroni cluster at keys.
func NewPatroniFormat(keys cluster.PatroniKeys, log *slog.Logger) *PatroniFormat {
	return &PatroniFormat{keys: keys, rejects: newRejectLog(log, "ignoring Patroni key")}
}

func (f *PatroniFormat) Prefix() string { return f.keys.Prefix() }

func (f *PatroniFormat) Snapshot(kvs map[string]KeyValue) (Snapshot, int64) {
	var leader string
	var epoch int64
	var optime, legacyOptime cluster.LSN
	members := make(map[string]cluster.Member)
	f.rejects.begin()
	for _, key := range sortedNames(kvs) {
		kv := kvs[key]
		kind, name := f.keys.Classify(key)
		// Patroni writes both on its lease too (patroni/dcs/etcd3.py:
		// touch_member, _do_attempt_to_acquire_leader).
		if (kind == cluster.KeyLeader || kind == cluster.KeyMember) && kv.Lease == 0 {
			f.rejects.unleased(key, kv)
			continue
		}
		switch kind {
		case cluster.KeyLeader:
			n, err := cluster.ParsePatroniLeader(kv.Value)
			if err != nil {
				f.rejects.reject(key, kv, err.Error())
				continue
			}
			leader, epoch = n, kv.CreateRevision
		case cluster.KeyMember:
			m, err := cluster.ParsePatroniMember(name, kv.Value)
			if err != nil {
				f.rejects.reject(key, kv, err.Error())
				continue
			}
			members[name] = m
		case cluster.KeyStatus, cluster.KeyLegacyOptime:
			lsn, err := cluster.ParsePatroniStatus(kv.Value)
			if err != nil {
				f.rejects.reject(key, kv, err.Error())
				continue
			}
			if kind == cluster.KeyStatus {
				optime = lsn
			} else {
				legacyOptime = lsn
			}
		}
	}
	ignored := f.rejects.end(kvs)
	if optime == 0 {
		optime = legacyOptime
	}
	if m, ok := members[leader]; ok && m.Role == cluster.RolePrimary && m.LSN > optime {
		// The leader's own record can be fresher than the status key.
		optime = m.LSN
	}
	snap := Snapshot{Ignored: ignored}
	for _, name := range sortedNames(members) {
		m := members[name]
		snap.Members = append(snap.Members, routeMember(m, cluster.PatroniLag(optime, m)))
	}
	if m, ok := members[leader]; ok && m.Role == cluster.RolePrimary {
		snap.Primary = leader
	}
	return snap, epoch
}
