package haagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pharos-ha/pharos/haagent/core"
	"github.com/pharos-ha/pharos/internal/cluster"
)

// dcs is the agent's side of etcd: one lease, the leader key, this member's
// record, and the cluster keys. Every leader-only write is one transaction
// that compares the leader key's create revision with the epoch, so
// leadership is never checked in one call and acted on in another.
type dcs struct {
	cli  *clientv3.Client
	keys cluster.Keys
	name string
	ttl  time.Duration
}

// snapshot is one consistent read of the cluster prefix.
type snapshot struct {
	Revision    int64
	Initialized bool
	Initialize  cluster.Initialize
	Leader      string
	LeaderEpoch int64
	LeaderLease clientv3.LeaseID
	Members     map[string]cluster.Member
	MemberRev   map[string]int64
	History     cluster.History
	Paused      bool
	MaxLag      *int64
	Params      map[string]string
	ConfigRev   int64
	SyncMode    core.SyncMode
	Sync        *cluster.SyncState
	Switchover  *cluster.Switchover
	SwitchRev   int64
}

func (d *dcs) read(ctx context.Context) (snapshot, error) {
	resp, err := d.cli.Get(ctx, d.keys.Prefix(), clientv3.WithPrefix())
	if err != nil {
		return snapshot{}, err
	}
	s := snapshot{Revision: resp.Header.Revision, Members: map[string]cluster.Member{}, MemberRev: map[string]int64{}}
	for _, kv := range resp.Kvs {
		kind, name := d.keys.Classify(string(kv.Key))
		switch kind {
		case cluster.KeyLeader:
			s.Leader, s.LeaderEpoch, s.LeaderLease = string(kv.Value), kv.CreateRevision, clientv3.LeaseID(kv.Lease)
		case cluster.KeyMember:
			m, err := cluster.ParseMember(kv.Value)
			if err != nil || m.Name != name {
				continue
			}
			s.Members[name], s.MemberRev[name] = m, kv.ModRevision
		case cluster.KeyInitialize:
			s.Initialized = true
			if in, err := cluster.ParseInitialize(kv.Value); err == nil {
				s.Initialize = in
			}
		case cluster.KeyHistory:
			if h, err := cluster.ParseHistory(kv.Value); err == nil {
				s.History = h
			}
		case cluster.KeySync:
			if st, err := cluster.ParseSyncState(kv.Value); err == nil {
				s.Sync = &st
			}
		case cluster.KeySwitchover:
			if sw, err := cluster.ParseSwitchover(kv.Value); err == nil {
				s.Switchover, s.SwitchRev = &sw, kv.ModRevision
			}
		case cluster.KeyConfig:
			c, err := cluster.ParseConfig(kv.Value)
			if err != nil {
				continue // ignored whole, as ctl reports it
			}
			s.Paused, s.MaxLag, s.ConfigRev = c.Pause, c.MaxLag, kv.ModRevision
			s.SyncMode = core.SyncMode{Enabled: c.SyncMode, Strict: c.SyncStrict, Count: max(c.SyncCount, 1)}
			s.Params = c.Parameters
		}
	}
	return s, nil
}

func (d *dcs) grant(ctx context.Context) (clientv3.LeaseID, error) {
	resp, err := d.cli.Grant(ctx, int64(d.ttl/time.Second))
	if err != nil {
		return 0, fmt.Errorf("grant lease: %w", err)
	}
	return resp.ID, nil
}

// errLeaseGone: etcd no longer knows the lease (it expired or was revoked).
var errLeaseGone = errors.New("lease expired")

// renew sends one keep-alive. The caller records the send time on success.
func (d *dcs) renew(ctx context.Context, id clientv3.LeaseID) error {
	resp, err := d.cli.KeepAliveOnce(ctx, id)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return errLeaseGone
	}
	if err != nil {
		return err
	}
	if resp.TTL <= 0 {
		return errLeaseGone
	}
	return nil
}

func (d *dcs) revoke(ctx context.Context, id clientv3.LeaseID) error {
	_, err := d.cli.Revoke(ctx, id)
	return err
}

func (d *dcs) publish(ctx context.Context, id clientv3.LeaseID, m cluster.Member) error {
	b, err := cluster.MarshalMember(m)
	if err != nil {
		return err
	}
	_, err = d.cli.Put(ctx, d.keys.Member(d.name), string(b), clientv3.WithLease(id))
	return err
}

// acquire creates the leader key on the lease if nobody holds it and
// returns the new epoch, or 0 when another member won. handoverRev, when
// not 0, is the switchover key's revision of a hand-over to this member:
// the key is deleted in the same transaction, on the condition that it did
// not change.
func (d *dcs) acquire(ctx context.Context, id clientv3.LeaseID, handoverRev int64) (int64, error) {
	k := d.keys.Leader()
	conds := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(k), "=", 0)}
	ops := []clientv3.Op{clientv3.OpPut(k, d.name, clientv3.WithLease(id))}
	if handoverRev != 0 {
		conds = append(conds, clientv3.Compare(clientv3.ModRevision(d.keys.Switchover()), "=", handoverRev))
		ops = append(ops, clientv3.OpDelete(d.keys.Switchover()))
	}
	resp, err := d.cli.Txn(ctx).If(conds...).Then(ops...).Commit()
	if err != nil {
		return 0, err
	}
	if !resp.Succeeded {
		return 0, nil
	}
	return resp.Header.Revision, nil
}

// release deletes the leader key if it is still ours (same epoch).
// released is false when the key was not deleted because it no longer is:
// it expired with the lease, or another member holds it now. Either way
// that epoch is over, but this member did not end it and must not say so.
func (d *dcs) release(ctx context.Context, epoch int64) (released bool, err error) {
	k := d.keys.Leader()
	resp, err := d.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(k), "=", epoch)).
		Then(clientv3.OpDelete(k)).
		Commit()
	if err != nil {
		return false, err
	}
	return resp.Succeeded, nil
}

// handover deletes the leader key and marks the switchover key as handed
// to candidate, in one transaction conditional on this member still
// leading with epoch and on the request being the one it acted on.
func (d *dcs) handover(ctx context.Context, epoch, switchRev int64, sw cluster.Switchover) error {
	b, err := json.Marshal(sw)
	if err != nil {
		return err
	}
	resp, err := d.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(d.keys.Leader()), "=", epoch),
			clientv3.Compare(clientv3.ModRevision(d.keys.Switchover()), "=", switchRev)).
		Then(clientv3.OpDelete(d.keys.Leader()), clientv3.OpPut(d.keys.Switchover(), string(b))).
		Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return errors.New("hand-over not written: leadership or the request changed meanwhile")
	}
	return nil
}

// writeSync writes the sync key (nil deletes it) if this member still leads
// with epoch.
func (d *dcs) writeSync(ctx context.Context, epoch int64, st *cluster.SyncState) error {
	op := clientv3.OpDelete(d.keys.Sync())
	if st != nil {
		b, err := json.Marshal(st)
		if err != nil {
			return err
		}
		op = clientv3.OpPut(d.keys.Sync(), string(b))
	}
	resp, err := d.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(d.keys.Leader()), "=", epoch)).
		Then(op).
		Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return errors.New("sync key not written: no longer the leader")
	}
	return nil
}

// cancelSwitchover deletes the request at revision rev.
func (d *dcs) cancelSwitchover(ctx context.Context, rev int64) error {
	_, err := d.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(d.keys.Switchover()), "=", rev)).
		Then(clientv3.OpDelete(d.keys.Switchover())).
		Commit()
	return err
}

// claimInitialize creates the initialize key on the lease (so that a
// bootstrapper that dies frees it); false when another member has it.
func (d *dcs) claimInitialize(ctx context.Context, id clientv3.LeaseID) (bool, error) {
	k := d.keys.Initialize()
	b, _ := json.Marshal(cluster.Initialize{By: d.name, Time: time.Now().UTC()})
	resp, err := d.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, string(b), clientv3.WithLease(id))).
		Commit()
	if err != nil {
		return false, err
	}
	return resp.Succeeded, nil
}

// dropInitialize deletes the initialize key after a failed bootstrap, on
// the condition that it is still attached to lease id, i.e. still this
// member's claim. A claim that expired while this member was stuck may
// have been taken by another member since, whose bootstrap, finished or
// not, is not this one's to undo: deleting its key would let a third
// member bootstrap a second system. dropped is false when the key was not
// this member's (or was already gone).
func (d *dcs) dropInitialize(ctx context.Context, id clientv3.LeaseID) (dropped bool, err error) {
	k := d.keys.Initialize()
	resp, err := d.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.LeaseValue(k), "=", id)).
		Then(clientv3.OpDelete(k)).
		Commit()
	if err != nil {
		return false, err
	}
	return resp.Succeeded, nil
}

// finishInitialize records the system identifier and detaches the key from
// the lease, on the condition that this member still leads.
func (d *dcs) finishInitialize(ctx context.Context, epoch int64, sysid string) error {
	b, _ := json.Marshal(cluster.Initialize{SystemID: sysid, By: d.name, Time: time.Now().UTC()})
	resp, err := d.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(d.keys.Leader()), "=", epoch)).
		Then(clientv3.OpPut(d.keys.Initialize(), string(b))).
		Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return errors.New("lost the leader key before initialize was recorded")
	}
	return nil
}

// recordHistory appends e to the history key if this member still leads
// and nobody changed the history since it was read.
func (d *dcs) recordHistory(ctx context.Context, epoch int64, e cluster.HistoryEntry) error {
	resp, err := d.cli.Get(ctx, d.keys.History())
	if err != nil {
		return err
	}
	var h cluster.History
	var rev int64
	if len(resp.Kvs) == 1 {
		rev = resp.Kvs[0].ModRevision
		if h, err = cluster.ParseHistory(resp.Kvs[0].Value); err != nil {
			return err
		}
	}
	b, err := cluster.MarshalHistory(h.Append(e))
	if err != nil {
		return err
	}
	txn, err := d.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(d.keys.Leader()), "=", epoch),
			clientv3.Compare(clientv3.ModRevision(d.keys.History()), "=", rev)).
		Then(clientv3.OpPut(d.keys.History(), string(b))).
		Commit()
	if err != nil {
		return err
	}
	if !txn.Succeeded {
		return errors.New("history not recorded: leadership or history changed meanwhile")
	}
	return nil
}
