package router

import (
	"log/slog"

	"github.com/pharos-ha/pharos/internal/cluster"
)

// PharosFormat reads a pharos cluster's own keys (DESIGN §3): the leader
// key names the member whose record must also say primary before rw goes
// there; replicas come from their records.
type PharosFormat struct {
	keys    cluster.Keys
	rejects rejectLog
}

// NewPharosFormat follows the cluster's keys under /pharos/<cluster>/.
func NewPharosFormat(keys cluster.Keys, log *slog.Logger) *PharosFormat {
	return &PharosFormat{keys: keys, rejects: newRejectLog(log, "ignoring etcd key")}
}

func (f *PharosFormat) Prefix() string { return f.keys.Prefix() }

func (f *PharosFormat) Snapshot(kvs map[string]KeyValue) (Snapshot, int64) {
	var leader string
	var epoch int64
	members := make(map[string]cluster.Member)
	f.rejects.begin()
	for _, key := range sortedNames(kvs) {
		kv := kvs[key]
		kind, name := f.keys.Classify(key)
		if (kind == cluster.KeyLeader || kind == cluster.KeyMember) && kv.Lease == 0 {
			f.rejects.unleased(key, kv)
			continue
		}
		switch kind {
		case cluster.KeyLeader:
			if v := string(kv.Value); cluster.ValidName(v) {
				leader, epoch = v, kv.CreateRevision
			} else {
				f.rejects.reject(key, kv, "leader key does not hold a member name")
			}
		case cluster.KeyMember:
			m, err := cluster.ParseMember(kv.Value)
			switch {
			case err != nil:
				f.rejects.reject(key, kv, err.Error())
			case m.Name != name:
				f.rejects.reject(key, kv, "record names member "+m.Name)
			default:
				members[name] = m
			}
		}
	}
	snap := Snapshot{Ignored: f.rejects.end(kvs)}
	for _, name := range sortedNames(members) {
		m := members[name]
		snap.Members = append(snap.Members, routeMember(m, m.Lag()))
	}
	// rw only to the leader whose own record says primary: holding the key
	// while still promoting is not enough.
	if m, ok := members[leader]; ok && m.Role == cluster.RolePrimary {
		snap.Primary = leader
	}
	return snap, epoch
}

// routeMember is the router's view of a member record: only primary and
// replica records are routable, the rest are listed but unhealthy.
func routeMember(m cluster.Member, lag int64) Member {
	rm := Member{Name: m.Name, Addr: m.Addr(), Role: RoleUnknown, LagBytes: -1, NoLoadBalance: m.Tags.NoLoadBalance}
	switch m.Role {
	case cluster.RolePrimary:
		rm.Role, rm.Healthy = RolePrimary, true
	case cluster.RoleReplica:
		rm.Role, rm.Healthy, rm.LagBytes = RoleReplica, true, lag
	}
	return rm
}

// rejectLog logs each unusable key once per mod revision, so a bad record
// is reported when it appears or changes, not on every snapshot, and counts
// the unusable keys of the snapshot being built. Owned by the source's Run.
type rejectLog struct {
	log      *slog.Logger
	msg      string
	reported map[string]int64 // key → mod revision already logged
	counts   Ignored          // of the snapshot being built
}

func newRejectLog(log *slog.Logger, msg string) rejectLog {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return rejectLog{log: log, msg: msg, reported: make(map[string]int64)}
}

// begin starts counting for a new snapshot.
func (r *rejectLog) begin() { r.counts = Ignored{} }

func (r *rejectLog) reject(key string, kv KeyValue, why string) {
	r.counts.Invalid++
	if r.firstReport(key, kv) {
		r.log.Warn(r.msg, "key", key, "mod_revision", kv.ModRevision, "reason", why)
	}
}

// unleased reports a leader or member record that no agent wrote: it is
// not attached to a lease, so it would outlive any agent and keep routing
// to whatever it names. Someone with write access to the prefix forged it
// or restored it from a backup; either way it is an operator's problem,
// and an error.
func (r *rejectLog) unleased(key string, kv KeyValue) {
	r.counts.Unleased++
	if r.firstReport(key, kv) {
		r.log.Error(r.msg+": not attached to a lease, so not written by an agent; it is never routed to",
			"key", key, "mod_revision", kv.ModRevision)
	}
}

func (r *rejectLog) firstReport(key string, kv KeyValue) bool {
	if r.reported[key] == kv.ModRevision {
		return false
	}
	r.reported[key] = kv.ModRevision
	return true
}

// end drops what was reported about keys that are gone and returns the
// snapshot's counts.
func (r *rejectLog) end(kvs map[string]KeyValue) Ignored {
	for key := range r.reported {
		if _, ok := kvs[key]; !ok {
			delete(r.reported, key)
		}
	}
	return r.counts
}
