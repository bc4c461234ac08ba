package haagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pharos-ha/pharos/haagent/core"
)

// join gets a lease. An agent restarted while its node leads adopts the
// lease the leader key is on, so a restart of the agent alone is not a
// failover. It refuses (NameConflictError) a name whose replication slot
// is another member's (see slots.go).
func (a *Agent) join(ctx context.Context) error {
	pause := 100 * time.Millisecond
	for {
		cctx, cancel := a.callCtx(ctx)
		snap, err := a.dcs.read(cctx)
		if err == nil {
			if other := core.SlotConflict(a.rules.Name, slices.Collect(maps.Keys(snap.Members))); other != "" {
				cancel()
				return &core.NameConflictError{Name: a.rules.Name, Other: other, Key: a.dcs.keys.Member(other), Slot: core.SlotName(other)}
			}
		}
		if err == nil && snap.Leader == a.rules.Name && snap.LeaderLease != 0 {
			if err = a.dcs.renew(cctx, snap.LeaderLease); err == nil {
				a.lease.set(snap.LeaderLease, a.now())
				a.epoch = snap.LeaderEpoch
				cancel()
				a.log.Info("adopted the lease of the leader key this member holds", "epoch", a.epoch)
				if err := a.armWatchdog(); err != nil {
					// Adopting the key is this member's acquire-leader.
					a.mem.Apply(core.Result{Action: core.Action{Kind: core.ActAcquireLeader}, At: a.now(), OK: true,
						WatchdogFailed: errors.Is(err, errWatchdogRequired)})
					a.log.Error("leading without the required watchdog until the next round fences", "err", err)
				}
				return nil
			}
		}
		if err == nil {
			var id clientv3.LeaseID
			if id, err = a.dcs.grant(cctx); err == nil {
				a.lease.set(id, a.now())
				cancel()
				return nil
			}
		}
		cancel()
		a.log.Warn("etcd unreachable, retrying", "err", err)
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(pause):
		}
		pause = min(pause*2, a.rules.Timing.LoopWait)
	}
}

// lease is this agent's etcd lease, session-like: it owns its keep-alive
// goroutine (keepAlive) and says when etcd last acknowledged a renewal,
// which is what fencing counts from. Unlike etcd's concurrency.Session it
// renews with explicit, bounded keep-alives, so that it knows the send time
// of the last one that succeeded. The loop replaces it once etcd says it
// is gone (replace).
type lease struct {
	// Static after construction.
	dcs    *dcs
	timing core.Timing
	now    func() time.Time
	log    *slog.Logger
	// wake is called when the lease is gone or a renewal failed, so that
	// the loop decides at once; renewed after each acknowledged renewal
	// with its round trip (the agent feeds the watchdog there).
	wake    func()
	renewed func(rtt time.Duration)

	mu        sync.Mutex // guards id
	id        clientv3.LeaseID
	lastRenew atomic.Int64 // unix nanos of the send time of the last acknowledged keep-alive
	gone      atomic.Bool  // etcd said the lease no longer exists
}

// ID is the current lease, 0 before the first grant.
func (l *lease) ID() clientv3.LeaseID {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.id
}

// Held: there is a lease etcd has not said is gone.
func (l *lease) Held() bool { return l.ID() != 0 && !l.gone.Load() }

// Gone: etcd said the lease no longer exists.
func (l *lease) Gone() bool { return l.gone.Load() }

// LastRenewed is the send time of the last keep-alive etcd acknowledged
// (or of the grant): etcd restarted the TTL no earlier than that.
func (l *lease) LastRenewed() time.Time { return time.Unix(0, l.lastRenew.Load()) }

// set takes id as the current lease, renewed at renewedAt.
func (l *lease) set(id clientv3.LeaseID, renewedAt time.Time) {
	l.mu.Lock()
	l.id = id
	l.mu.Unlock()
	l.lastRenew.Store(renewedAt.UnixNano())
	l.gone.Store(false)
}

// keepAlive sends one keep-alive per loop_wait, each bounded by
// retry_timeout, and records the send time of each that etcd acknowledged:
// the fencing deadline counts from there. It never decides anything; it
// wakes the loop when the lease is gone or a renewal failed.
func (l *lease) keepAlive(ctx context.Context) {
	t := time.NewTicker(l.timing.LoopWait)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		id := l.ID()
		if id == 0 || l.gone.Load() {
			continue
		}
		sent := l.now()
		cctx, cancel := context.WithTimeout(ctx, l.timing.RetryTimeout)
		err := l.dcs.renew(cctx, id)
		cancel()
		switch {
		case err == nil:
			l.lastRenew.Store(sent.UnixNano())
			l.renewed(l.now().Sub(sent))
		case errors.Is(err, errLeaseGone):
			l.gone.Store(true)
			l.log.Warn("lease expired", "lease", fmt.Sprintf("%x", id))
			l.wake()
		default:
			if ctx.Err() == nil {
				l.log.Warn("lease renewal failed", "err", err, "last_renewed_ago", l.now().Sub(l.LastRenewed()).Round(time.Millisecond))
			}
			l.wake()
		}
	}
}

// replace grants a new lease after the old one expired (the member record
// and, if this member led, the leader key went with it). It reports
// whether it got one.
func (l *lease) replace(ctx context.Context) bool {
	cctx, cancel := context.WithTimeout(ctx, l.timing.RetryTimeout)
	defer cancel()
	id, err := l.dcs.grant(cctx)
	if err != nil {
		return false
	}
	l.set(id, l.now())
	return true
}

// fed feeds the watchdog after an acknowledged renewal. Fed only after
// etcd confirmed the lease: a hung or cut-off agent stops feeding and its
// primary is killed before the lease can expire. The watchdog counts
// ttl − safety_margin from the feed, the lease ttl from no earlier than
// the send, so a renewal answered safety_margin or more after its send
// (possible when retry_timeout exceeds safety_margin) is not fed: feeding
// it would let the watchdog fire after the lease expired. Slower answers
// than that only happen with an etcd about to fail renewals anyway.
func (a *Agent) fed(rtt time.Duration) {
	if rtt < a.rules.Timing.SafetyMargin {
		if err := a.wd.feed(); err != nil {
			a.log.Error("watchdog feed failed", "err", err)
		}
	} else {
		a.log.Warn("lease renewed too slowly to feed the watchdog", "round_trip", rtt.Round(time.Millisecond), "limit", a.rules.Timing.SafetyMargin)
	}
}

// replaceLease gets a new lease after the old one expired; the epoch
// went with the old one.
func (a *Agent) replaceLease(ctx context.Context) {
	if a.lease.replace(ctx) {
		a.epoch = 0
	}
}
