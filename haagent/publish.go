package haagent

import (
	"context"

	"github.com/pharos-ha/pharos/haagent/core"
	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/metrics"
)

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
	if role == cluster.RoleReplica {
		// What core.PublishedRole's state says in words, for readers.
		m.Upstream, m.Streaming = o.PG.Upstream, o.PG.Streaming && o.PG.Upstream != ""
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
	lease := a.lease.ID()
	if lease == 0 || a.lease.Gone() {
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
