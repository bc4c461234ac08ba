package clusterstate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pharos-ha/pharos/internal/cluster"
)

// ErrRefused wraps every reason a request is refused before anything is
// written: the caller (CLI, REST API) reports it as the operator's error.
var ErrRefused = errors.New("refused")

func refused(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, a...))
}

// SwitchoverRequest is what an operator asks for.
type SwitchoverRequest struct {
	// Leader, when set, must be the current leader.
	Leader string
	// Candidate is the member to lead; "" lets the leader pick (switchover
	// only).
	Candidate string
	// ScheduledAt delays a switchover; nil is at once.
	ScheduledAt *time.Time
	// MaxLag refuses a candidate lagging more bytes (0: no limit). A
	// negative value means the limit the leader itself will apply: the
	// cluster's maximum_lag_on_failover from the config key, or
	// DefaultMaxLag when the key sets none.
	MaxLag        int64
	DefaultMaxLag int64
}

// recordStale is how old a member record may be before ctl calls it stale:
// agents publish every loop_wait (1 s by default).
const recordStale = 10 * time.Second

// RequestSwitchover checks the request against the cluster as it is and
// writes the switchover key; the leader carries it out. It refuses (with
// ErrRefused) when there is no leader, the named leader is not it, the
// candidate is not a fresh replica streaming from it within MaxLag, no
// replica qualifies, or another request is pending.
func RequestSwitchover(ctx context.Context, cli *clientv3.Client, keys cluster.Keys, r SwitchoverRequest, now time.Time) error {
	st, err := Status(ctx, cli, keys)
	if err != nil {
		return err
	}
	if st.Leader == nil {
		return refused("there is no leader to switch over from (use failover --to to choose one)")
	}
	leader := st.Leader.Name
	if r.Leader != "" && r.Leader != leader {
		return refused("%s is not the leader, %s is", r.Leader, leader)
	}
	if r.ScheduledAt != nil && r.ScheduledAt.Before(now.Add(-time.Minute)) {
		return refused("scheduled time %s is in the past", r.ScheduledAt.Format(time.RFC3339))
	}
	if r.MaxLag < 0 {
		if r.MaxLag, err = clusterMaxLag(ctx, cli, keys, r.DefaultMaxLag); err != nil {
			return err
		}
	}
	// The leader's own rule, less synchronous mode (the leader checks
	// that when it acts), with ctl's words for the operator.
	rule := cluster.TakeoverRule{Leader: leader, StaleAfter: recordStale, MaxLag: r.MaxLag}
	if r.Candidate != "" {
		if _, ok := st.Member(r.Candidate); !ok {
			return refused("%s is not a member of the cluster", r.Candidate)
		}
		if v := cluster.CheckTakeover(st.candidate(r.Candidate, now), rule); !v.OK() {
			return refused("%s", unfit(v))
		}
	} else {
		cands := make([]cluster.Candidate, 0, len(st.Members))
		for _, m := range st.Members {
			cands = append(cands, st.candidate(m.Name, now))
		}
		if best, verdicts := cluster.PickTakeover(cands, rule); best == "" {
			reasons := make([]string, 0, len(verdicts))
			for _, v := range verdicts {
				reasons = append(reasons, unfit(v))
			}
			if len(reasons) == 0 {
				reasons = []string{"the cluster has no other member"}
			}
			return refused("no replica can take over: %s", strings.Join(reasons, "; "))
		}
	}
	sw := cluster.Switchover{Leader: leader, Candidate: r.Candidate, ScheduledAt: r.ScheduledAt, RequestedAt: now.UTC()}
	return putSwitchover(ctx, cli, keys, sw)
}

// candidate is the named member for the takeover rule; its record's age
// is by its UpdatedAt, since ctl sees it once.
func (s ClusterStatus) candidate(name string, now time.Time) cluster.Candidate {
	c := cluster.Candidate{Name: name}
	if m, ok := s.Member(name); ok {
		c.Record, c.Age = &m, now.Sub(m.UpdatedAt)
	}
	return c
}

// unfit says why a member may not take over, in words for the operator
// who asked.
func unfit(v cluster.Verdict) string {
	switch v.Reason {
	case cluster.UnfitStale:
		return fmt.Sprintf("%s's record is %v old: is its agent running?", v.Name, v.Age.Round(time.Second))
	case cluster.UnfitNotStreaming:
		return fmt.Sprintf("%s is not a healthy replica of %s (%s, %s)", v.Name, v.Leader, v.Role, v.State)
	case cluster.UnfitLagging:
		return fmt.Sprintf("%s lags %d bytes behind %s (limit %d)", v.Name, v.Lag, v.Leader, v.MaxLag)
	}
	return v.String()
}

// clusterMaxLag reads maximum_lag_on_failover from the config key, or
// returns def when it sets none.
func clusterMaxLag(ctx context.Context, cli *clientv3.Client, keys cluster.Keys, def int64) (int64, error) {
	cfg, _, err := dynamicConfig(ctx, cli, keys)
	switch {
	case err != nil && cfg.Object == nil:
		return 0, err
	case err != nil:
		return 0, refused("%v (the agents ignore the whole key until it is fixed)", err)
	case cfg.MaxLag == nil:
		return def, nil
	case *cfg.MaxLag < 0:
		return 0, refused("the config key's maximum_lag_on_failover %d is not a number of bytes", *cfg.MaxLag)
	}
	return *cfg.MaxLag, nil
}

// RequestFailover names the member to lead. With a leader it is a
// switchover to candidate without the lag checks; without one the
// candidate takes the key at once, even if it is not the most advanced
// member (an operator's choice: writes it never received are lost).
func RequestFailover(ctx context.Context, cli *clientv3.Client, keys cluster.Keys, candidate string, now time.Time) error {
	if candidate == "" {
		return refused("failover needs a candidate (--to)")
	}
	st, err := Status(ctx, cli, keys)
	if err != nil {
		return err
	}
	if _, ok := st.Member(candidate); !ok {
		return refused("%s is not a member of the cluster", candidate)
	}
	rule := cluster.TakeoverRule{Failover: true, StaleAfter: recordStale}
	if st.Leader != nil {
		rule.Leader = st.Leader.Name
	}
	if v := cluster.CheckTakeover(st.candidate(candidate, now), rule); !v.OK() {
		return refused("%s", unfit(v))
	}
	sw := cluster.Switchover{Candidate: candidate, Failover: true, RequestedAt: now.UTC()}
	if st.Leader == nil {
		sw.Handover, sw.HandoverAt = true, now.UTC()
	} else {
		sw.Leader = st.Leader.Name
	}
	return putSwitchover(ctx, cli, keys, sw)
}

func putSwitchover(ctx context.Context, cli *clientv3.Client, keys cluster.Keys, sw cluster.Switchover) error {
	b, err := json.Marshal(sw)
	if err != nil {
		return err
	}
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(keys.Switchover()), "=", 0)).
		Then(clientv3.OpPut(keys.Switchover(), string(b))).
		Else(clientv3.OpGet(keys.Switchover())).
		Commit()
	if err != nil {
		return fmt.Errorf("write %s: %w", keys.Switchover(), err)
	}
	if !resp.Succeeded {
		pending := "a request"
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 {
			if old, err := cluster.ParseSwitchover(kvs[0].Value); err == nil {
				pending = old.Describe()
			}
		}
		return refused("another switchover is pending (%s); cancel it first with switchover --cancel", pending)
	}
	return nil
}

// CancelSwitchover deletes a pending request; a hand-over already under
// way cannot be cancelled.
func CancelSwitchover(ctx context.Context, cli *clientv3.Client, keys cluster.Keys) error {
	resp, err := cli.Get(ctx, keys.Switchover())
	if err != nil {
		return err
	}
	if len(resp.Kvs) == 0 {
		return refused("no switchover is pending")
	}
	if sw, err := cluster.ParseSwitchover(resp.Kvs[0].Value); err == nil && sw.Handover {
		return refused("the hand-over to %s is under way and cannot be cancelled", sw.Candidate)
	}
	txn, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(keys.Switchover()), "=", resp.Kvs[0].ModRevision)).
		Then(clientv3.OpDelete(keys.Switchover())).
		Commit()
	if err != nil {
		return err
	}
	if !txn.Succeeded {
		return refused("the request changed meanwhile; look again with ctl list")
	}
	return nil
}

// WaitNewLeader waits until a member other than from leads and its record
// says primary, or until the switchover request is gone without a change
// (the leader refused it: the reason is in its log). It returns the new
// leader.
func WaitNewLeader(ctx context.Context, cli *clientv3.Client, keys cluster.Keys, from string) (string, error) {
	for {
		st, err := Status(ctx, cli, keys)
		if err == nil {
			if l := st.Leader; l != nil && l.Name != from {
				if m, ok := st.Member(l.Name); ok && m.Role == cluster.RolePrimary {
					return l.Name, nil
				}
			}
			if st.Switchover == nil && st.Leader != nil && st.Leader.Name == from {
				return "", fmt.Errorf("%s cancelled the request (see its agent's log)", from)
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no new leader yet: %w", context.Cause(ctx))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// dynamicConfig reads and parses the config key (cluster.ParseConfig),
// with its revision; an absent key is the empty configuration at revision
// 0.
func dynamicConfig(ctx context.Context, cli *clientv3.Client, keys cluster.Keys) (cluster.DynamicConfig, int64, error) {
	resp, err := cli.Get(ctx, keys.Config())
	if err != nil {
		return cluster.DynamicConfig{}, 0, err
	}
	if len(resp.Kvs) == 0 {
		cfg, err := cluster.ParseConfig([]byte("{}"))
		return cfg, 0, err
	}
	cfg, err := cluster.ParseConfig(resp.Kvs[0].Value)
	return cfg, resp.Kvs[0].ModRevision, err
}

// Config reads the dynamic configuration as written and its revision (0
// when unset). A key the agents ignore because a value has the wrong type
// is still returned, so that it can be shown and repaired; one that is not
// a JSON object is an error.
func Config(ctx context.Context, cli *clientv3.Client, keys cluster.Keys) (map[string]any, int64, error) {
	cfg, rev, err := dynamicConfig(ctx, cli, keys)
	if cfg.Object == nil {
		return nil, 0, err
	}
	return cfg.Object, rev, nil
}

// CheckSettings refuses (with ErrRefused) key=value settings that
// EditConfig would refuse, without reading or writing etcd: a command can
// check them before it asks for confirmation.
func CheckSettings(settings []string) error {
	_, err := parseSettings(settings)
	return err
}

// configChange is one parsed key=value setting.
type configChange struct {
	path  []string
	value any
	del   bool
}

// parseSettings reads and validates key=value settings.
func parseSettings(settings []string) ([]configChange, error) {
	if len(settings) == 0 {
		return nil, refused("nothing to change: give key=value settings")
	}
	var changes []configChange
	for _, kv := range settings {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, refused("%q is not key=value", kv)
		}
		// A parameter's own name may hold a dot (pg_stat_statements.max);
		// PostgreSQL folds names to lower case, so one spelling is kept.
		path := strings.Split(k, ".")
		if name, ok := strings.CutPrefix(k, paramsPrefix); ok {
			path = []string{"postgresql", "parameters", strings.ToLower(name)}
		}
		for _, p := range path {
			if p == "" {
				return nil, refused("%q: empty path element", k)
			}
		}
		c := configChange{path: path}
		var parsed any
		if err := json.Unmarshal([]byte(v), &parsed); err == nil {
			c.value, c.del = parsed, parsed == nil
		} else {
			c.value = v
		}
		if err := validateSetting(path, c.value, c.del); err != nil {
			return nil, err
		}
		changes = append(changes, c)
	}
	return changes, nil
}

// paramsPrefix starts the keys of PostgreSQL parameters.
const paramsPrefix = "postgresql.parameters."

// EditConfig applies key=value settings to the dynamic configuration in
// one conditional write. Keys are dotted paths
// (postgresql.parameters.work_mem, whose last element is a PostgreSQL
// parameter name, which may hold a dot of its own:
// postgresql.parameters.pg_stat_statements.max); a value that is JSON (true, 5, "x",
// null) is taken as such, anything else as a string; null removes the key.
func EditConfig(ctx context.Context, cli *clientv3.Client, keys cluster.Keys, settings []string) (map[string]any, error) {
	changes, err := parseSettings(settings)
	if err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		cfg, rev, err := Config(ctx, cli, keys)
		if err != nil {
			return nil, err
		}
		for _, c := range changes {
			if isParameter(c.path) {
				// Another spelling of the same parameter would be a second
				// line in pharos.conf, whichever the agent wrote last.
				dropParameterSpellings(cfg, c.path[2])
			}
			setPath(cfg, c.path, c.value, c.del)
		}
		b, err := json.Marshal(cfg)
		if err != nil {
			return nil, err
		}
		resp, err := cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(keys.Config()), "=", rev)).
			Then(clientv3.OpPut(keys.Config(), string(b))).
			Commit()
		if err != nil {
			return nil, err
		}
		if resp.Succeeded {
			return cfg, nil
		}
		if attempt == 5 {
			return nil, errors.New("config kept changing under us; try again")
		}
	}
}

// validateSetting checks the keys the agents read, so that a typo in a
// known key is refused rather than silently ignored.
func validateSetting(path []string, v any, del bool) error {
	key := strings.Join(path, ".")
	switch {
	case key == "pause":
		if _, ok := v.(bool); !ok && !del {
			return refused("pause: true or false")
		}
	case key == "synchronous_mode" || key == "synchronous_mode_strict":
		if _, ok := v.(bool); !ok && !del {
			return refused("%s: true or false", key)
		}
	case key == "synchronous_node_count":
		if n, ok := v.(float64); (!ok || n < 1 || n != float64(int(n))) && !del {
			return refused("synchronous_node_count: a whole number ≥ 1")
		}
	case key == "maximum_lag_on_failover":
		if n, ok := v.(float64); (!ok || n < 0) && !del {
			return refused("maximum_lag_on_failover: a number of bytes")
		}
	case isParameter(path):
		if del {
			// Removing is always allowed, so that a name the agents
			// ignore can be cleaned away.
			return nil
		}
		name, s := path[2], ""
		switch v := v.(type) {
		case string:
			s = v
		case float64, bool:
		default:
			return refused("%s: a scalar value", key)
		}
		if err := cluster.CheckParameter(name, s); err != nil {
			return refused("%s: %v", key, err)
		}
		if cluster.ProtectedParameter(name) {
			return refused("%s: the agent sets %s itself; it ignores the cluster's value", key, name)
		}
	case path[0] == "postgresql":
		return refused("%s: only postgresql.parameters.<name> is dynamic", key)
	default:
		return refused("%s: unknown key (pause, maximum_lag_on_failover, synchronous_mode, synchronous_mode_strict, synchronous_node_count, postgresql.parameters.<name>)", key)
	}
	return nil
}

func isParameter(path []string) bool {
	return len(path) == 3 && path[0] == "postgresql" && path[1] == "parameters"
}

// dropParameterSpellings removes every spelling of the parameter name
// from cfg, whatever its case.
func dropParameterSpellings(cfg map[string]any, name string) {
	pg, _ := cfg["postgresql"].(map[string]any)
	params, _ := pg["parameters"].(map[string]any)
	for k := range params {
		if strings.EqualFold(k, name) {
			delete(params, k)
		}
	}
}

func setPath(m map[string]any, path []string, v any, del bool) {
	for _, p := range path[:len(path)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			if del {
				return
			}
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	last := path[len(path)-1]
	if del {
		delete(m, last)
		return
	}
	m[last] = v
}
