package haagent

import (
	"context"
	"errors"
	"fmt"
	"github.com/pharos-ha/pharos/haagent/core"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/restapi"
	"github.com/pharos-ha/pharos/metrics"
)

// Config is one agent's configuration.
type Config struct {
	Rules    core.Rules
	Postgres PostgresConfig
	// Host is the address other members and the proxy reach PostgreSQL at.
	Host string
	// APIURL is published in the member record (the REST API).
	APIURL string
	// StartTimeout bounds one start of PostgreSQL (crash recovery
	// included).
	StartTimeout time.Duration
	// StopTimeout bounds a clean stop when the agent shuts down.
	StopTimeout time.Duration
	// Cluster is the cluster's name, passed to callbacks.
	Cluster   string
	Callbacks Callbacks
	// Metrics receives the agent's metrics; nil: a private registry.
	Metrics *metrics.Agent
	// WatchdogMode and Watchdog: the driver armed before this member
	// leads (nil with mode off).
	WatchdogMode core.WatchdogMode
	Watchdog     Watchdog
}

// Agent runs the HA loop of one node.
type Agent struct {
	// Static after construction.
	cfg   Config
	rules core.Rules
	dcs   *dcs
	pg    *postgres
	log   *slog.Logger
	now   func() time.Time
	wake  chan struct{}
	cb    *callbackRunner
	m     *metrics.Agent
	wd    *guard

	// status is what the REST API answers, replaced by the loop.
	status   atomic.Pointer[restapi.NodeStatus]
	requests chan apiRequest

	// Written by the renewal goroutine, read by the loop.
	lastRenew     atomic.Int64 // unix nanos of the send time of the last acknowledged keep-alive
	leaseGone     atomic.Bool
	leaderGoneRev atomic.Int64 // revision of the last leader deletion the watch saw

	// Owned by the loop (Run), not thread-safe.
	mu         sync.Mutex // guards lease for the renewal goroutine
	lease      clientv3.LeaseID
	epoch      int64 // leader key create revision while this member leads
	view       core.DCSView
	mem        core.Memory
	seen       map[string]seenRecord
	lastPlan   string
	lastLeader string
	switchRev  int64 // revision of the switchover key in the last view
	switchSeen time.Time
	maxLag     *int64 // maximum_lag_on_failover from the dynamic configuration
	lastRole   cluster.Role
	planSince  time.Time // when lastPlan was first decided
	waitLog    throttle  // reminders of a plan that waits with the server down
}

type seenRecord struct {
	rev int64
	at  time.Time
}

// New checks cfg and returns an agent that uses cli (owned by the caller).
func New(cfg Config, cli *clientv3.Client, keys cluster.Keys, log *slog.Logger) (*Agent, error) {
	if err := cfg.Rules.Validate(); err != nil {
		return nil, err
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = time.Minute
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 30 * time.Second
	}
	cfg.Postgres.Name = cfg.Rules.Name
	if cfg.Postgres.DataDir == "" || cfg.Postgres.Port == 0 || cfg.Postgres.BinDir == "" {
		return nil, errors.New("postgres: data_dir, pg_port and bin_dir are required")
	}
	if cfg.Postgres.SuperUser == "" || cfg.Postgres.ReplicationUser == "" {
		return nil, errors.New("postgres: superuser and replication user names are required")
	}
	if err := CheckRequireAuth(cfg.Postgres.RequireAuth); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("member", cfg.Rules.Name)
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewAgent(prometheus.NewRegistry())
	}
	// Every action's failure series exists from the start, so that the
	// first failure is an increase an alert can see, not a new series.
	for _, k := range core.ActionKinds() {
		cfg.Metrics.ActionFailures.WithLabelValues(k.String())
	}
	for _, r := range core.RecloneReasons {
		cfg.Metrics.Reclones.WithLabelValues(r)
	}
	if cfg.WatchdogMode == "" {
		cfg.WatchdogMode = core.WatchdogOff
	}
	if cfg.WatchdogMode != core.WatchdogOff && cfg.Watchdog == nil {
		return nil, fmt.Errorf("watchdog %s: no driver", cfg.WatchdogMode)
	}
	cfg.Rules.WatchdogRequired = cfg.WatchdogMode == core.WatchdogRequired
	return &Agent{
		m:        cfg.Metrics,
		cfg:      cfg,
		rules:    cfg.Rules,
		dcs:      &dcs{cli: cli, keys: keys, name: cfg.Rules.Name, ttl: cfg.Rules.Timing.TTL},
		pg:       newPostgres(cfg.Postgres, log),
		log:      log,
		now:      time.Now,
		wake:     make(chan struct{}, 1),
		requests: make(chan apiRequest),
		seen:     map[string]seenRecord{},
		waitLog:  throttle{every: waitLogEvery},
		cb:       newCallbackRunner(cfg.Callbacks, cfg.Rules.Name, cfg.Cluster, log),
		wd:       &guard{mode: cfg.WatchdogMode, wd: cfg.Watchdog, timeout: cfg.Rules.Timing.FenceAfter()},
	}, nil
}

func (a *Agent) poke() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

func (a *Agent) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, a.rules.Timing.RetryTimeout)
}

// Run runs the loop until ctx ends, then shuts down: a leader stops
// PostgreSQL cleanly first and releases the key after, so a replica with
// all the WAL takes over without waiting for the lease to expire.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.join(ctx); err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { a.renewLoop(gctx); return nil })
	g.Go(func() error { a.watchLoop(gctx); return nil })
	g.Go(func() error { a.postmasterLoop(gctx); return nil })
	g.Go(func() error { a.loop(gctx); return nil })
	g.Go(func() error { a.cb.run(gctx); return nil })
	err := g.Wait()
	a.shutdown()
	return err
}

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
				a.setLease(snap.LeaderLease)
				a.epoch = snap.LeaderEpoch
				a.lastRenew.Store(a.now().UnixNano())
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
				a.setLease(id)
				a.lastRenew.Store(a.now().UnixNano())
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

func (a *Agent) setLease(id clientv3.LeaseID) {
	a.mu.Lock()
	a.lease = id
	a.mu.Unlock()
	a.leaseGone.Store(false)
}

func (a *Agent) currentLease() clientv3.LeaseID {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lease
}

// renewLoop sends one keep-alive per loop_wait, each bounded by
// retry_timeout, and records the send time of each that etcd acknowledged:
// the fencing deadline counts from there. It never decides anything; it
// wakes the loop when the lease is gone or the deadline passed.
func (a *Agent) renewLoop(ctx context.Context) {
	t := time.NewTicker(a.rules.Timing.LoopWait)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		id := a.currentLease()
		if id == 0 || a.leaseGone.Load() {
			continue
		}
		sent := a.now()
		cctx, cancel := a.callCtx(ctx)
		err := a.dcs.renew(cctx, id)
		cancel()
		switch {
		case err == nil:
			a.lastRenew.Store(sent.UnixNano())
			// Fed only after etcd confirmed the lease: a hung or cut-off
			// agent stops feeding and its primary is killed before the
			// lease can expire. The watchdog counts ttl − safety_margin
			// from the feed, the lease ttl from no earlier than the send,
			// so a renewal answered safety_margin or more after its send
			// (possible when retry_timeout exceeds safety_margin) is not
			// fed: feeding it would let the watchdog fire after the
			// lease expired. Slower answers than that only happen with an
			// etcd about to fail renewals anyway.
			if rtt := a.now().Sub(sent); rtt < a.rules.Timing.SafetyMargin {
				if err := a.wd.feed(); err != nil {
					a.log.Error("watchdog feed failed", "err", err)
				}
			} else {
				a.log.Warn("lease renewed too slowly to feed the watchdog", "round_trip", rtt.Round(time.Millisecond), "limit", a.rules.Timing.SafetyMargin)
			}
		case errors.Is(err, errLeaseGone):
			a.leaseGone.Store(true)
			a.log.Warn("lease expired", "lease", fmt.Sprintf("%x", id))
			a.poke()
		default:
			if ctx.Err() == nil {
				a.log.Warn("lease renewal failed", "err", err, "last_renewed_ago", a.now().Sub(time.Unix(0, a.lastRenew.Load())).Round(time.Millisecond))
			}
			a.poke()
		}
	}
}

// watchLoop wakes the loop on every change under the cluster prefix, so a
// vanished leader key starts an election at once instead of at the next
// tick, and records the revision of leader deletions.
func (a *Agent) watchLoop(ctx context.Context) {
	leaderKey, ownKey := a.dcs.keys.Leader(), a.dcs.keys.Member(a.rules.Name)
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for resp := range a.dcs.cli.Watch(wctx, a.dcs.keys.Prefix(), clientv3.WithPrefix()) {
			if resp.Err() != nil {
				break
			}
			wake := false
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypeDelete && string(ev.Kv.Key) == leaderKey {
					a.leaderGoneRev.Store(ev.Kv.ModRevision)
				}
				// Its own record changes every round: waking for it
				// would make the loop feed itself.
				if string(ev.Kv.Key) != ownKey || ev.Type == clientv3.EventTypeDelete {
					wake = true
				}
			}
			if wake {
				a.poke()
			}
		}
		cancel()
		select {
		case <-ctx.Done():
		case <-time.After(a.rules.Timing.LoopWait / 4):
		}
	}
}

// postmasterLoop wakes the loop within 50 ms of the postmaster dying, so a
// crash under a live leader is restarted at once.
func (a *Agent) postmasterLoop(ctx context.Context) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	last := a.pg.postmasterPid()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pid := a.pg.postmasterPid()
		if last != 0 && pid != last {
			a.poke()
		}
		last = pid
	}
}

// fenceDeadline is when a leader without a newer renewal must fence.
func (a *Agent) fenceDeadline() time.Time {
	return time.Unix(0, a.lastRenew.Load()).Add(a.rules.Timing.FenceAfter())
}

func (a *Agent) loop(ctx context.Context) {
	tick := time.NewTicker(a.rules.Timing.LoopWait)
	defer tick.Stop()
	fence := time.NewTimer(time.Hour)
	defer fence.Stop()
	for {
		progressed := a.iterate(ctx)
		if progressed {
			continue
		}
		// A leader also wakes at its fencing deadline, whatever else is
		// going on.
		// Only a deadline still ahead: once it passed, the round that
		// just ran fenced, and waking again every millisecond would spin.
		if until := time.Until(a.fenceDeadline()); a.view.LeaderIsMine && until > 0 {
			fence.Reset(until + time.Millisecond)
		} else {
			fence.Stop()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-fence.C:
		case <-a.wake:
		case req := <-a.requests:
			req.reply <- a.serveRequest(ctx, req)
		}
	}
}

// waitLogEvery paces the reminders that a member whose server is down is
// still waiting (for the bootstrap elsewhere, for a leader to run): the
// plan is logged when it changes, and a wait can last minutes.
const waitLogEvery = 15 * time.Second

// iterate is one observe → decide → execute round. It reports whether the
// plan changed the state, so the next round should follow at once.
func (a *Agent) iterate(ctx context.Context) bool {
	obs := a.observe(ctx)
	// Decided before publishing: a member without data publishes what it
	// waits for or is about to do.
	p := core.Decide(obs, a.currentRules())
	a.publish(ctx, obs, p)
	if s := p.String(); s != a.lastPlan {
		a.log.Info("plan", "plan", s, "leader", obs.DCS.Leader, "epoch", obs.DCS.LeaderEpoch,
			"timeline", obs.PG.Timeline, "lsn", obs.PG.Position().String())
		a.lastPlan, a.planSince = s, obs.Now
		a.waitLog.reset(obs.Now)
	} else if len(p.Actions) == 0 && !obs.PG.Running && a.waitLog.due(obs.Now, 0) {
		a.log.Info("still waiting", "reason", p.Reason, "for", obs.Now.Sub(a.planSince).Round(time.Second))
	}
	changed, _ := a.executePlan(ctx, p, obs)
	return changed
}

// currentRules are the rules with the dynamic configuration's overrides.
func (a *Agent) currentRules() core.Rules {
	rules := a.rules
	if a.maxLag != nil {
		rules.MaximumLagOnFailover = *a.maxLag
	}
	return rules
}

// executePlan runs p's steps in order, stopping at the first that fails.
// changed reports whether a step changed the state (so the next round
// should follow at once).
func (a *Agent) executePlan(ctx context.Context, p core.Plan, obs core.Observation) (changed bool, err error) {
	for _, act := range p.Actions {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		t0 := a.now()
		if err := a.execute(ctx, act, obs); err != nil {
			a.m.ActionFailures.WithLabelValues(act.Kind.String()).Inc()
			a.log.Error("action failed", "action", act.String(), "err", err, "took", a.now().Sub(t0).Round(time.Millisecond))
			return false, err
		}
		if act.Kind != core.ActSyncSlots {
			changed = true
			a.log.Info("action done", "action", act.String(), "took", a.now().Sub(t0).Round(time.Millisecond), "epoch", a.epoch)
		}
	}
	return changed, nil
}

func (a *Agent) observe(ctx context.Context) core.Observation {
	now := a.now()
	if a.leaseGone.Load() {
		a.replaceLease(ctx)
	}
	// A leader's read must not outlast its fencing deadline: a hung etcd
	// would otherwise hold the decision to fence back by a whole
	// retry_timeout.
	cctx, cancel := a.callCtx(ctx)
	if a.view.LeaderIsMine {
		cancel()
		deadline := now.Add(a.rules.Timing.RetryTimeout)
		if fd := a.fenceDeadline(); fd.Before(deadline) {
			deadline = fd
		}
		cctx, cancel = context.WithDeadline(ctx, deadline)
	}
	snap, err := a.dcs.read(cctx)
	cancel()
	if err != nil {
		a.view.Reachable = false
		a.m.EtcdUp.Set(0)
	} else {
		a.view = a.viewOf(snap, now)
		a.m.EtcdUp.Set(1)
	}
	now = a.now()
	a.m.RenewalAge.Set(now.Sub(time.Unix(0, a.lastRenew.Load())).Seconds())
	o := core.Observation{
		Now:           now,
		WatchdogArmed: a.wd.armed(),
		DCS:           a.view,
		Lease: core.LeaseView{
			Held:        a.currentLease() != 0 && !a.leaseGone.Load(),
			LastRenewed: time.Unix(0, a.lastRenew.Load()),
		},
	}
	o.DCS.LeaderDeletedRev = a.leaderGoneRev.Load()
	o.PG = a.pg.observe(ctx)
	if o.PG.Running && !o.PG.InRecovery {
		a.pg.syncNames = o.PG.SyncNames // what the server has, after an agent restart too
	}
	if leader := a.view.Leader; leader != "" && leader != a.rules.Name {
		a.lastLeader = leader
	}
	a.mem.Apply(o)
	o.Memory = a.mem
	return o
}

// replaceLease gets a new lease after the old one expired: the member
// record and, if this member led, the leader key went with it.
func (a *Agent) replaceLease(ctx context.Context) {
	cctx, cancel := a.callCtx(ctx)
	defer cancel()
	id, err := a.dcs.grant(cctx)
	if err != nil {
		return
	}
	a.setLease(id)
	a.lastRenew.Store(a.now().UnixNano())
	a.epoch = 0
}

func (a *Agent) viewOf(s snapshot, now time.Time) core.DCSView {
	v := core.DCSView{
		Reachable:    true,
		Revision:     s.Revision,
		Initialized:  s.Initialized,
		SystemID:     s.Initialize.SystemID,
		Leader:       s.Leader,
		LeaderEpoch:  s.LeaderEpoch,
		Members:      s.Members,
		MemberRev:    s.MemberRev,
		MemberSeenAt: map[string]time.Time{},
		History:      s.History,
		Paused:       s.Paused,
		Switchover:   s.Switchover,
		ConfigRev:    s.ConfigRev,
		SyncMode:     s.SyncMode,
		Sync:         s.Sync,
	}
	a.pg.dynamic, a.maxLag = s.Params, s.MaxLag
	a.m.Paused.Set(b2f(s.Paused))
	if s.SwitchRev != a.switchRev {
		a.switchRev, a.switchSeen = s.SwitchRev, now
	}
	v.SwitchoverSeenAt, v.SwitchoverRev = a.switchSeen, s.SwitchRev
	lease := a.currentLease()
	v.LeaderIsMine = s.Leader == a.rules.Name && lease != 0 && s.LeaderLease == lease
	if v.LeaderIsMine {
		a.epoch = s.LeaderEpoch
	} else {
		a.epoch = 0
	}
	for name, rev := range s.MemberRev {
		r, ok := a.seen[name]
		if !ok || r.rev != rev {
			r = seenRecord{rev: rev, at: now}
			a.seen[name] = r
		}
		v.MemberSeenAt[name] = r.at
	}
	return v
}

// publish writes this member's record on its lease; p is the round's plan.
func (a *Agent) publish(ctx context.Context, o core.Observation, p core.Plan) {
	role, state := core.PublishedRole(o)
	if !o.PG.Running && o.PG.Data == core.DataMissing {
		role, state = cluster.RoleStarting, noDataState(p)
	}
	a.publishRecord(ctx, o, role, state)
}

// noDataState is what a member without a data directory publishes: what
// its plan waits for, or that a clone starts (its progress follows).
func noDataState(p core.Plan) string {
	for _, act := range p.Actions {
		if act.Kind == core.ActClone || act.Kind == core.ActReclone {
			return "creating replica from " + act.Target
		}
	}
	if len(p.Actions) == 0 && p.Reason != "" {
		return "waiting: " + p.Reason
	}
	// A bootstrap publishes its steps once it won the initialize key.
	return "no data directory yet"
}

// record is this member's record as o shows it, with role and state.
func (a *Agent) record(o core.Observation, role cluster.Role, state string) cluster.Member {
	m := cluster.Member{
		Name:       a.rules.Name,
		Role:       role,
		State:      state,
		Host:       a.cfg.Host,
		Port:       a.cfg.Postgres.Port,
		APIURL:     a.cfg.APIURL,
		Timeline:   o.PG.Timeline,
		LSN:        o.PG.LSN,
		ReceiveLSN: o.PG.ReceiveLSN,
		Epoch:      o.DCS.LeaderEpoch,
		Tags:       a.rules.Tags,
		UpdatedAt:  o.Now.UTC(),

		PendingRestart: o.PG.PendingRestart,
	}
	if role == cluster.RoleReplica && a.mem.LastLeaderLSN != 0 {
		lag := max(int64(a.mem.LastLeaderLSN)-int64(o.PG.LSN), 0)
		m.LagBytes = &lag
	}
	if role == cluster.RolePrimary {
		zero := int64(0)
		m.LagBytes = &zero
	}
	return m
}

func (a *Agent) publishRecord(ctx context.Context, o core.Observation, role cluster.Role, state string) {
	m := a.record(o, role, state)
	for _, r := range metrics.AgentRoles {
		a.m.Role.WithLabelValues(r).Set(b2f(r == string(m.Role)))
	}
	a.m.IsLeader.Set(b2f(o.DCS.LeaderIsMine))
	a.m.Timeline.Set(float64(o.PG.Timeline))
	a.m.PendingRestart.Set(b2f(o.PG.PendingRestart))
	if m.LagBytes != nil {
		a.m.LagBytes.Set(float64(*m.LagBytes))
	} else {
		a.m.LagBytes.Set(-1)
	}
	a.setStatus(o, m)
	if was := a.lastRole; was != role {
		if was != "" && (was == cluster.RolePrimary) != (role == cluster.RolePrimary) {
			// Like Patroni: the role it now has in the cluster.
			newRole := cluster.RoleReplica
			if role == cluster.RolePrimary {
				newRole = role
			}
			a.cb.fire("on_role_change", newRole)
		}
		a.lastRole = role
	}
	if o.DCS.Reachable && o.Lease.Held {
		a.putRecord(ctx, m)
	}
}

// putRecord writes m on the lease, if there is one etcd still knows.
func (a *Agent) putRecord(ctx context.Context, m cluster.Member) {
	lease := a.currentLease()
	if lease == 0 || a.leaseGone.Load() {
		return
	}
	cctx, cancel := a.callCtx(ctx)
	defer cancel()
	if err := a.dcs.publish(cctx, lease, m); err != nil && ctx.Err() == nil {
		a.log.Debug("publish member record", "state", m.State, "err", err)
	}
}

// publishNow re-reads PostgreSQL and publishes, for the end of a promotion:
// the proxy routes rw once the record says primary.
func (a *Agent) publishNow(ctx context.Context) {
	o := a.observe(ctx)
	a.publish(ctx, o, core.Plan{})
}

func (a *Agent) member(o core.Observation, name string) (cluster.Member, error) {
	m, ok := o.DCS.Members[name]
	if !ok {
		return cluster.Member{}, fmt.Errorf("member %s has no record", name)
	}
	return m, nil
}

// execute runs one action and lets Memory learn what it did.
func (a *Agent) execute(ctx context.Context, act core.Action, o core.Observation) error {
	err := a.run(ctx, act, o)
	res := core.Result{Action: act, At: a.now(), OK: err == nil, ConfigRev: o.DCS.ConfigRev,
		WatchdogFailed: errors.Is(err, errWatchdogRequired)}
	if rf := (*rewindError)(nil); errors.As(err, &rf) {
		res.Rewind = rf.class
	}
	a.mem.Apply(res)
	return err
}

// run runs one action with its own deadline.
func (a *Agent) run(ctx context.Context, act core.Action, o core.Observation) error {
	t := a.rules.Timing
	switch act.Kind {
	case core.ActBootstrap:
		return a.bootstrap(ctx, o)
	case core.ActClone, core.ActReclone:
		up, err := a.member(o, act.Target)
		if err != nil {
			return err
		}
		return a.cloneFrom(ctx, o, up, act)
	case core.ActRewind:
		up, err := a.member(o, act.Target)
		if err != nil {
			return err
		}
		return a.rewind(ctx, o, up)
	case core.ActStartPrimary:
		if err := a.pg.writeConf(false, nil); err != nil {
			return err
		}
		action := "on_start"
		if !o.Memory.CrashedAt.IsZero() {
			action = "on_restart" // in place, after a crash
		}
		return a.started(a.pg.start(ctx, a.cfg.StartTimeout), action, cluster.RolePrimary)
	case core.ActStartReplica:
		var up *cluster.Member
		if act.Target != "" {
			m, err := a.member(o, act.Target)
			if err != nil {
				return err
			}
			up = &m
		}
		if err := a.pg.writeConf(true, up); err != nil {
			return err
		}
		return a.started(a.pg.start(ctx, a.cfg.StartTimeout), "on_start", cluster.RoleReplica)
	case core.ActRepoint:
		up, err := a.member(o, act.Target)
		if err != nil {
			return err
		}
		if err := a.pg.writeConf(true, &up); err != nil {
			return err
		}
		return a.pg.reload(ctx)
	case core.ActAcquireLeader:
		cctx, cancel := a.callCtx(ctx)
		defer cancel()
		// Armed before the key is ours: from the moment others can see
		// this member lead, a hang kills its server in time.
		if err := a.armWatchdog(); err != nil {
			return err
		}
		epoch, err := a.dcs.acquire(cctx, a.currentLease(), act.Rev)
		if err != nil || epoch == 0 {
			a.disarmWatchdog()
		}
		if err != nil {
			return err
		}
		if epoch == 0 {
			return errors.New("another member took the leader key first")
		}
		a.epoch = epoch
		a.view.LeaderIsMine, a.view.Leader, a.view.LeaderEpoch = true, a.rules.Name, epoch
		a.log.Info("leader key acquired", "epoch", epoch, "lsn", o.PG.Position().String())
		return nil
	case core.ActPromote:
		// In synchronous mode the new primary waits for any standby from
		// its first commit; the next round narrows it to named standbys.
		a.pg.syncNames = nil
		if o.DCS.SyncMode.Enabled {
			a.pg.syncNames = []string{"*"}
			var up *cluster.Member
			if m, ok := o.DCS.Members[o.PG.Upstream]; ok {
				up = &m
			}
			if err := a.pg.writeConf(true, up); err != nil {
				return err
			}
			if err := a.pg.reload(ctx); err != nil {
				return err
			}
		}
		if err := a.pg.promote(ctx); err != nil {
			return err
		}
		reason := act.Cause
		if reason == "" {
			reason = core.PromotionFailover
		}
		a.m.Promotions.WithLabelValues(reason).Inc()
		if err := a.pg.writeConf(false, nil); err != nil {
			return err
		}
		a.publishNow(ctx)
		// Writes are open; the checkpoint only updates the control file's
		// timeline, which pg_rewind on the former primary reads.
		if err := a.pg.checkpoint(ctx, nil); err != nil {
			a.log.Warn("checkpoint after promotion", "err", err)
		}
		return nil
	case core.ActRecordHistory:
		return a.recordHistory(ctx, act.Cause)
	case core.ActSyncSlots:
		return a.syncSlots(ctx, o)
	case core.ActStop:
		// Decide stops a running standby only when it cannot follow the
		// leader's timeline: Memory marks it for a rewind.
		return a.stopped(a.pg.stop(ctx, a.cfg.StopTimeout), cluster.RoleReplica)
	case core.ActDemote:
		a.log.Warn("demoting: stopping PostgreSQL", "grace", t.SafetyMargin/2)
		a.m.Demotions.Inc()
		err := a.stopped(a.pg.stop(ctx, t.SafetyMargin/2), cluster.RolePrimary)
		if err == nil {
			a.disarmWatchdog()
		}
		return err
	case core.ActSwitchover:
		return a.switchover(ctx, o, act)
	case core.ActSyncLeave, core.ActSyncNames, core.ActSyncJoin, core.ActSyncClear:
		return a.syncStep(ctx, o, act)
	case core.ActApplyConfig:
		var up *cluster.Member
		if m, ok := o.DCS.Members[o.PG.Upstream]; ok && o.PG.Standby {
			up = &m
		}
		if err := a.pg.writeConf(o.PG.Standby, up); err != nil {
			return err
		}
		if err := a.pg.reload(ctx); err != nil {
			return err
		}
		a.log.Info("dynamic configuration applied", "revision", o.DCS.ConfigRev)
		return nil
	case core.ActCancelSwitchover:
		cctx, cancel := a.callCtx(ctx)
		defer cancel()
		a.log.Warn("switchover request cancelled", "reason", act.Cause)
		return a.dcs.cancelSwitchover(cctx, act.Rev)
	case core.ActReleaseLeader:
		cctx, cancel := a.callCtx(ctx)
		defer cancel()
		if a.epoch == 0 {
			a.epoch = o.DCS.LeaderEpoch
		}
		released, err := a.dcs.release(cctx, a.epoch)
		if err != nil {
			return err
		}
		// Not released: the key with this epoch is gone (the lease
		// expired) or another member's. The epoch is over either way.
		if released {
			a.log.Info("leader key released", "epoch", a.epoch)
		} else {
			a.log.Warn("leader key not released: it is no longer this member's (lease expired or another member leads)", "epoch", a.epoch)
		}
		a.epoch = 0
		if !o.PG.Running || o.PG.InRecovery {
			a.disarmWatchdog()
		}
		return nil
	}
	return fmt.Errorf("unknown action %v", act)
}

// armWatchdog arms the watchdog before this member leads. A failure stops
// the step when the watchdog is required and is only logged otherwise.
func (a *Agent) armWatchdog() error {
	err := a.wd.arm()
	a.m.WatchdogArmed.Set(b2f(a.wd.armed()))
	if err == nil {
		return nil
	}
	if a.wd.mode == core.WatchdogRequired {
		return fmt.Errorf("%w: %w", errWatchdogRequired, err)
	}
	a.log.Warn("watchdog not armed; leading without it", "err", err)
	return nil
}

// disarmWatchdog disarms it once this member stopped leading cleanly.
func (a *Agent) disarmWatchdog() {
	if err := a.wd.disarm(); err != nil {
		a.log.Error("watchdog disarm failed", "err", err)
	}
	a.m.WatchdogArmed.Set(b2f(a.wd.armed()))
}

// syncStep carries out one step of the synchronous-standby protocol
// (Decide orders them so that the sync key stays true) and keeps the
// gauges: the key's standbys after each write, degraded as the step's
// reason says.
func (a *Agent) syncStep(ctx context.Context, o core.Observation, act core.Action) error {
	me, mode := a.rules.Name, o.DCS.SyncMode
	write := func(list []string) error {
		cctx, cancel := a.callCtx(ctx)
		defer cancel()
		if list == nil {
			list = []string{}
		}
		return a.dcs.writeSync(cctx, a.epoch, &cluster.SyncState{Leader: me, Standbys: list})
	}
	switch act.Kind {
	case core.ActSyncLeave:
		if err := write(act.Standbys); err != nil {
			return err
		}
		a.m.SyncStandbys.Set(float64(len(act.Standbys)))
	case core.ActSyncNames:
		names := act.Standbys
		a.pg.syncNames = names
		if err := a.pg.writeConf(false, nil); err != nil {
			return err
		}
		if err := a.pg.reload(ctx); err != nil {
			return err
		}
		a.log.Info("synchronous_standby_names changed", "to", formatSyncNames(names))
		if mode.Enabled && len(names) > 0 {
			a.m.SyncDegraded.Set(0)
		}
	case core.ActSyncJoin:
		want := act.Standbys
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		for {
			states, err := a.pg.syncStates(wctx)
			if err != nil {
				return err
			}
			ready := true
			for _, n := range want {
				if st := states[n]; st != "sync" && st != "quorum" {
					ready = false
				}
			}
			if ready {
				break
			}
			select {
			case <-wctx.Done():
				return fmt.Errorf("standbys %v not synchronous yet: %v", want, states)
			case <-time.After(50 * time.Millisecond):
			}
		}
		if err := write(want); err != nil {
			return err
		}
		a.log.Info("synchronous standbys", "standbys", want)
		a.m.SyncStandbys.Set(float64(len(want)))
		a.m.SyncDegraded.Set(0)
	case core.ActSyncClear:
		cctx, cancel := a.callCtx(ctx)
		defer cancel()
		if err := a.dcs.writeSync(cctx, a.epoch, nil); err != nil {
			return err
		}
		a.m.SyncStandbys.Set(0)
	}
	if act.Reason == core.SyncDegraded {
		a.log.Warn("synchronous mode degraded: no healthy standby, commits are not waiting for any")
		a.m.SyncDegraded.Set(1)
	}
	return nil
}

// started fires the start callback after a successful start (Memory
// records that the start applied the round's dynamic configuration).
func (a *Agent) started(err error, action string, role cluster.Role) error {
	if err == nil {
		a.cb.fire(action, role)
	}
	return err
}

// stopped fires on_stop after a successful stop.
func (a *Agent) stopped(err error, role cluster.Role) error {
	if err == nil {
		a.cb.fire("on_stop", role)
	}
	return err
}

// switchover hands the lead to target. Writes stop when the record says
// demoted (the proxy stops routing new sessions here and holds them for
// its route wait) and resume when target publishes primary.
func (a *Agent) switchover(ctx context.Context, o core.Observation, act core.Action) error {
	target := act.Target
	up, err := a.member(o, target)
	if err != nil {
		return err
	}
	sw := *o.DCS.Switchover
	epoch, rev := a.epoch, act.Rev
	a.log.Info("switchover: checkpoint before the stop", "to", target)
	if err := a.pg.checkpoint(ctx, nil); err != nil {
		return fmt.Errorf("switchover: checkpoint: %w", err)
	}
	// From here writes stop.
	demoted := o
	demoted.PG.Running = false
	a.publishRecord(ctx, demoted, cluster.RoleDemoted, "switchover to "+target)
	t0 := a.now()
	abort := func(cause error) error {
		a.log.Error("switchover aborted: restarting as primary", "err", cause)
		err := errors.Join(cause, a.pg.start(ctx, a.cfg.StartTimeout))
		cctx, cancel := a.callCtx(ctx)
		defer cancel()
		return errors.Join(err, a.dcs.cancelSwitchover(cctx, rev))
	}
	if err := a.pg.stop(ctx, a.cfg.StopTimeout); err != nil {
		return abort(fmt.Errorf("stop: %w", err))
	}
	a.cb.fire("on_stop", cluster.RolePrimary)
	a.m.Demotions.Inc()
	end, err := a.pg.shutdownCheckpoint(ctx)
	if err != nil {
		return abort(err)
	}
	if err := a.pg.waitReceived(ctx, up, end, 5*time.Second); err != nil {
		return abort(fmt.Errorf("%s did not receive all WAL: %w", target, err))
	}
	sw.Candidate, sw.Handover, sw.HandoverAt = target, true, a.now().UTC()
	cctx, cancel := a.callCtx(ctx)
	defer cancel()
	if err := a.dcs.handover(cctx, epoch, rev, sw); err != nil {
		return abort(err)
	}
	a.epoch = 0
	a.view.LeaderIsMine = false
	a.disarmWatchdog()
	a.log.Info("switchover: lead handed over", "to", target, "shutdown_checkpoint", end.String(), "stopped_in", a.now().Sub(t0).Round(time.Millisecond))
	return nil
}

func (a *Agent) recordHistory(ctx context.Context, reason string) error {
	var v core.PGView
	if err := a.pg.query(ctx, &v); err != nil {
		return err
	}
	if reason == "" {
		reason = core.PromotionFailover
	}
	e := cluster.HistoryEntry{Timeline: v.Timeline, Reason: reason, Time: a.now().UTC(), NewLeader: a.rules.Name, Epoch: a.epoch}
	if reason != core.PromotionBootstrap {
		e.OldLeader = a.lastLeader
	}
	if v.Timeline > 1 {
		sp, err := a.pg.switchPoint(v.Timeline)
		if err != nil {
			return err
		}
		e.LSN = sp
	}
	cctx, cancel := a.callCtx(ctx)
	defer cancel()
	return a.dcs.recordHistory(cctx, a.epoch, e)
}

// slotGrace is how long a member may be absent before its slot is dropped:
// a restarting agent's record disappears with its lease for a few seconds,
// and dropping its slot then would let the primary recycle WAL it needs.
func (a *Agent) slotGrace() time.Duration { return 10 * a.rules.Timing.TTL }

func (a *Agent) syncSlots(ctx context.Context, o core.Observation) error {
	var want, drop []string
	for name := range o.DCS.Members {
		if name != a.rules.Name {
			want = append(want, name)
		}
	}
	for name, r := range a.seen {
		if _, ok := o.DCS.Members[name]; !ok && name != a.rules.Name && o.Now.Sub(r.at) > a.slotGrace() {
			drop = append(drop, name)
			delete(a.seen, name)
		}
	}
	want, drop, shared := core.SlotPlan(want, drop)
	if err := a.pg.syncSlots(ctx, want, drop); err != nil {
		return err
	}
	return core.SharedSlotsError(shared)
}

// cloneFrom clones the data directory from up. A reclone first stops the
// server and wipes the data directory, once up answered as a primary and
// no process of the old server is left: never wipe for a source that
// would not give a copy back. A failed clone leaves an empty data
// directory, not a partial one.
func (a *Agent) cloneFrom(ctx context.Context, o core.Observation, up cluster.Member, act core.Action) error {
	if act.Kind == core.ActReclone {
		if err := a.pg.checkSource(ctx, up); err != nil {
			return err
		}
		if err := a.pg.stop(ctx, a.cfg.StopTimeout); err != nil {
			return err
		}
		if err := a.pg.wipe(); err != nil {
			return fmt.Errorf("wipe data directory: %w", err)
		}
		a.m.Reclones.WithLabelValues(act.Reason).Inc()
		a.log.Warn("data directory wiped for a fresh clone", "from", up.Name, "reason", act.Reason)
	}
	if err := a.clone(ctx, o, up); err != nil {
		_ = a.pg.wipe()
		return fmt.Errorf("clone from %s: %w", up.Name, err)
	}
	return nil
}

// clone copies the data directory from up with pg_basebackup, logging and
// publishing its progress: the member is "starting", with nothing of its
// own yet.
func (a *Agent) clone(ctx context.Context, o core.Observation, up cluster.Member) error {
	empty := o
	empty.PG = core.PGView{}
	live := a.startLive(ctx, a.record(empty, cluster.RoleStarting, "creating replica from "+up.Name))
	defer live.stop()
	log := a.log.With("from", up.Name)
	r := newCopyReporter(log, a.now, "pg_basebackup", "clone progress", "creating replica", live)
	// The steps without progress reports can be long on a big or busy
	// source: they are what an operator sees meanwhile.
	r.phases = []phase{
		{"waiting for checkpoint", "waiting for a checkpoint on " + up.Name},
		{"waiting for background process to finish streaming", "streaming the last WAL"},
		{"syncing data to disk", "syncing to disk"},
	}
	log.Info("cloning", "addr", up.Addr())
	return a.pg.basebackup(ctx, up, r.line)
}

// rewind runs pg_rewind from up, logging and publishing its progress, and
// decides from its failure whether a later round retries or only a fresh
// copy can help (Memory.RewindFailed, which Decide turns into a reclone).
func (a *Agent) rewind(ctx context.Context, o core.Observation, up cluster.Member) error {
	label := "rewinding from " + up.Name
	// pg_rewind runs on a stopped server only.
	live := a.startLive(ctx, a.record(o, cluster.RoleStopped, label))
	r := newCopyReporter(a.log.With("from", up.Name), a.now, "pg_rewind", "rewind progress", label, live)
	r.phases = []phase{
		{"complete crash recovery", "recovering this server first"},
		{"syncing target data directory", "syncing to disk"},
	}
	run, err := a.pg.rewind(ctx, up, r.line)
	live.stop()
	if err == nil {
		a.m.Rewinds.WithLabelValues("done").Inc()
		return nil
	}
	raw := core.ClassifyRewind(run.lines, err, run.copied, run.killed)
	if errors.Is(err, errServerAlive) {
		raw = core.RewindServerRunning
	}
	// What Memory will make of it once the result is applied.
	class := a.mem.RewindVerdict(raw)
	if !class.Permanent() {
		a.m.Rewinds.WithLabelValues("retry").Inc()
		a.log.Warn("rewind failed; retrying next round: nothing suggests a fresh copy is needed",
			"from", up.Name, "cause", string(class), "err", err)
		return &rewindError{class: raw, err: fmt.Errorf("rewind from %s (%s, will retry): %w", up.Name, class, err)}
	}
	a.m.Rewinds.WithLabelValues("failed").Inc()
	a.log.Error("rewind cannot work: this member needs a fresh copy", "from", up.Name, "cause", string(class), "err", err)
	return &rewindError{class: raw, err: fmt.Errorf("rewind from %s (%s): %w", up.Name, class, err)}
}

// rewindError is a failed rewind with its class as ClassifyRewind named
// it, for the step's Result.
type rewindError struct {
	class core.RewindFailure
	err   error
}

func (e *rewindError) Error() string { return e.err.Error() }
func (e *rewindError) Unwrap() error { return e.err }

// errWatchdogRequired marks a step that could not arm the required
// watchdog (Memory keeps this member out of elections for a while).
var errWatchdogRequired = errors.New("required watchdog")

// bootstrap claims the initialize key, runs initdb, starts and leads.
func (a *Agent) bootstrap(ctx context.Context, o core.Observation) error {
	lease := a.currentLease()
	// The software watchdog watches the data directory: it must exist
	// (empty; initdb fills it) before arming.
	if err := a.cfg.Postgres.Owner.MkdirAll(a.cfg.Postgres.DataDir, 0o700); err != nil {
		return err
	}
	if err := a.armWatchdog(); err != nil {
		return err
	}
	cctx, cancel := a.callCtx(ctx)
	ok, err := a.dcs.claimInitialize(cctx, lease)
	cancel()
	if err != nil {
		return err
	}
	if !ok {
		a.disarmWatchdog()
		a.log.Info("another member is bootstrapping the cluster")
		return nil
	}
	a.log.Info("bootstrapping the cluster", "data_dir", a.cfg.Postgres.DataDir)
	live := a.startLive(ctx, a.record(o, cluster.RoleStarting, "bootstrapping: initdb"))
	defer live.stop()
	t0 := a.now()
	last := t0
	// Each step is logged with its duration: initdb and the first start
	// can take a while on slow disks, and the member record shows which
	// one runs.
	done := func(step, next string) {
		now := a.now()
		a.log.Info("bootstrap step done", "step", step, "took", now.Sub(last).Round(time.Millisecond), "elapsed", now.Sub(t0).Round(time.Millisecond))
		last = now
		live.set("bootstrapping: " + next)
	}
	fail := func(err error) error {
		_ = a.pg.stop(context.WithoutCancel(ctx), 10*time.Second)
		a.disarmWatchdog()
		_ = a.pg.wipe()
		cctx, cancel := a.callCtx(context.WithoutCancel(ctx))
		defer cancel()
		switch dropped, derr := a.dcs.dropInitialize(cctx, lease); {
		case derr != nil:
			err = errors.Join(err, fmt.Errorf("remove initialize key: %w", derr))
		case !dropped:
			a.log.Warn("initialize key left alone: it is no longer this member's claim (the lease expired meanwhile)")
		}
		return fmt.Errorf("bootstrap: %w", err)
	}
	if err := a.pg.initdb(ctx); err != nil {
		return fail(err)
	}
	if err := a.pg.writeConf(false, nil); err != nil {
		return fail(err)
	}
	done("initdb", "first start")
	if err := a.pg.start(ctx, a.cfg.StartTimeout); err != nil {
		return fail(err)
	}
	done("first start", "creating roles")
	if err := a.pg.createRoles(ctx); err != nil {
		return fail(err)
	}
	done("roles", "taking the leader key")
	cctx, cancel = a.callCtx(ctx)
	epoch, err := a.dcs.acquire(cctx, lease, 0)
	cancel()
	if err != nil || epoch == 0 {
		return fail(fmt.Errorf("take the leader key: %v", err))
	}
	a.epoch = epoch
	done("leader key", "recording the system identifier")
	var v core.PGView
	if err := a.pg.query(ctx, &v); err != nil {
		return fail(err)
	}
	cctx, cancel = a.callCtx(ctx)
	err = a.dcs.finishInitialize(cctx, epoch, v.SystemID)
	cancel()
	if err != nil {
		return fail(err)
	}
	if err := a.recordHistory(ctx, core.PromotionBootstrap); err != nil {
		a.log.Warn("bootstrap history not recorded", "err", err)
	}
	a.m.Promotions.WithLabelValues(core.PromotionBootstrap).Inc()
	a.log.Info("cluster bootstrapped", "system_id", v.SystemID, "epoch", epoch, "took", a.now().Sub(t0).Round(time.Millisecond))
	return nil
}

// shutdown stops PostgreSQL cleanly, then releases the key and the lease.
// It runs after ctx ended, with its own bounded contexts.
func (a *Agent) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.StopTimeout+a.cb.cfg.Timeout+5*time.Second)
	defer cancel()
	wasRunning := a.pg.postmasterPid() != 0
	if err := a.pg.stop(ctx, a.cfg.StopTimeout); err != nil {
		a.log.Error("stop PostgreSQL", "err", err)
	} else {
		a.log.Info("PostgreSQL stopped")
		a.disarmWatchdog()
		// The runner is gone with the loop: run on_stop here, bounded.
		if wasRunning && a.cfg.Callbacks.OnStop != "" {
			a.cb.exec(ctx, callbackJob{"on_stop", a.lastRole})
		}
	}
	cctx, ccancel := a.callCtx(ctx)
	defer ccancel()
	if a.epoch != 0 {
		switch released, err := a.dcs.release(cctx, a.epoch); {
		case err != nil:
			a.log.Warn("release leader key", "err", err)
		case released:
			a.log.Info("leader key released", "epoch", a.epoch)
		default:
			a.log.Warn("leader key not released: it is no longer this member's (lease expired or another member leads)", "epoch", a.epoch)
		}
	}
	if lease := a.currentLease(); lease != 0 {
		if err := a.dcs.revoke(cctx, lease); err != nil {
			a.log.Warn("revoke lease", "err", err)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
