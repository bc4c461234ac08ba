package haagent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/pharos-ha/pharos/haagent/core"
	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/clusterstate"
	"github.com/pharos-ha/pharos/internal/restapi"
)

// apiRequest is an operator's request for the loop (restart,
// reinitialize): the loop runs it between rounds and answers on reply.
type apiRequest struct {
	kind  string
	reply chan error
}

// API returns the agent as the REST API's backend.
func (a *Agent) API() restapi.Backend { return agentAPI{a} }

type agentAPI struct{ a *Agent }

func (x agentAPI) Status() restapi.NodeStatus {
	if st := x.a.status.Load(); st != nil {
		return *st
	}
	return restapi.NodeStatus{Name: x.a.rules.Name, Role: cluster.RoleStarting, LagBytes: -1}
}

func (x agentAPI) Cluster(ctx context.Context, authenticated bool) (any, error) {
	st, err := clusterstate.Status(ctx, x.a.dcs.cli, x.a.dcs.keys)
	if err != nil || authenticated {
		return st, err
	}
	return st.WithoutParameters(), nil
}

func (x agentAPI) History(ctx context.Context) (cluster.History, error) {
	return clusterstate.History(ctx, x.a.dcs.cli, x.a.dcs.keys)
}

// refusal maps clusterstate's refusals to the API's 4xx.
func refusal(err error) error {
	if errors.Is(err, clusterstate.ErrRefused) {
		return fmt.Errorf("%w: %s", restapi.ErrConflict, strings.TrimPrefix(err.Error(), clusterstate.ErrRefused.Error()+": "))
	}
	return err
}

func (x agentAPI) Switchover(ctx context.Context, r restapi.SwitchoverRequest) error {
	// The limit the leader will check the request against: the cluster's,
	// else this agent's own setting (the same on every member in a sane
	// deployment).
	err := clusterstate.RequestSwitchover(ctx, x.a.dcs.cli, x.a.dcs.keys, clusterstate.SwitchoverRequest{
		Leader: r.Leader, Candidate: r.Candidate, ScheduledAt: r.ScheduledAt,
		MaxLag: -1, DefaultMaxLag: x.a.rules.MaximumLagOnFailover,
	}, time.Now())
	return refusal(err)
}

func (x agentAPI) Failover(ctx context.Context, r restapi.SwitchoverRequest) error {
	return refusal(clusterstate.RequestFailover(ctx, x.a.dcs.cli, x.a.dcs.keys, r.Candidate, time.Now()))
}

func (x agentAPI) Restart(ctx context.Context) error      { return x.a.request(ctx, "restart") }
func (x agentAPI) Reinitialize(ctx context.Context) error { return x.a.request(ctx, "reinitialize") }

// request hands kind to the loop and waits for its answer.
func (a *Agent) request(ctx context.Context, kind string) error {
	req := apiRequest{kind: kind, reply: make(chan error, 1)}
	select {
	case a.requests <- req:
	case <-ctx.Done():
		return fmt.Errorf("%w: the agent is busy", restapi.ErrConflict)
	}
	select {
	case err := <-req.reply:
		return err
	case <-ctx.Done():
		return fmt.Errorf("%s still running: %w", kind, ctx.Err())
	}
}

// serveRequest runs an operator's request on the loop.
func (a *Agent) serveRequest(ctx context.Context, req apiRequest) error {
	o := a.observe(ctx)
	switch req.kind {
	case "restart":
		if !o.PG.Running {
			return fmt.Errorf("%w: PostgreSQL is not running", restapi.ErrConflict)
		}
		a.log.Info("restart requested through the REST API")
		if err := a.pg.stop(ctx, a.cfg.StopTimeout); err != nil {
			return err
		}
		err := a.pg.start(ctx, a.cfg.StartTimeout)
		a.mem.Apply(core.Result{Request: core.RequestRestart, At: a.now(), OK: err == nil, ConfigRev: o.DCS.ConfigRev})
		if err != nil {
			return err
		}
		a.cb.fire("on_restart", a.lastRole)
		return nil
	case "reinitialize":
		// Decided like a round of the loop, with the request in the
		// observation: the rules that keep the loop from wiping a leader
		// or a synchronous standby hold here too.
		o.Request = core.RequestReinitialize
		p := core.Decide(o, a.currentRules())
		if !slices.ContainsFunc(p.Actions, func(x core.Action) bool { return x.Kind == core.ActReclone }) {
			return fmt.Errorf("%w: %s", restapi.ErrConflict, p.Reason)
		}
		a.log.Warn("reinitialize requested through the REST API", "plan", p.String())
		_, err := a.executePlan(ctx, p, o)
		return err
	}
	return fmt.Errorf("%w: unknown request %q", restapi.ErrBadRequest, req.kind)
}

// setStatus publishes what the REST API answers.
func (a *Agent) setStatus(o core.Observation, m cluster.Member) {
	st := restapi.NodeStatus{
		Name:           a.rules.Name,
		Role:           m.Role,
		State:          m.State,
		Running:        o.PG.Running,
		Leader:         o.DCS.LeaderIsMine && m.Role == cluster.RolePrimary,
		Streaming:      m.Streaming,
		LagBytes:       m.Lag(),
		Timeline:       o.PG.Timeline,
		LSN:            o.PG.Position(),
		Tags:           a.rules.Tags,
		Paused:         o.DCS.Paused,
		PendingRestart: o.PG.PendingRestart,
		LoopAt:         a.now(),
		Epoch:          o.DCS.LeaderEpoch,
	}
	a.status.Store(&st)
}
