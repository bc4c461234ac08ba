// Package clusterstate owns what an operator reads from and writes to a
// pharos cluster's keys in etcd (DESIGN §3): the consistent status read
// (Status), the timeline history, switchover and failover requests checked
// against the cluster as it is, their cancellation, and edits of the
// dynamic configuration. ctl (the CLI), the agent's REST API and the demo
// all act through it, so that a request is refused for the same reasons
// whichever way it comes.
//
// It must not know how anything is shown (ctl renders), the proxy, or the
// agent's loop: the one HA rule it applies, whether a member may take over
// from the leader, is internal/cluster's, shared with the agent's Decide.
package clusterstate

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pharos-ha/pharos/internal/cluster"
)

// ClusterStatus is a cluster's state in etcd at one revision.
type ClusterStatus struct {
	// Prefix is the cluster's key prefix, /pharos/<cluster>/.
	Prefix string `json:"prefix"`
	// Revision is the etcd revision of the read: everything below is as of
	// it.
	Revision int64 `json:"revision"`
	// Leader is the holder of the leader key; nil when no member holds it.
	Leader *Leader `json:"leader"`
	// Members are the valid member records, sorted by name.
	Members []cluster.Member `json:"members"`
	// Proxies are the valid records of live proxies (on a lease), sorted
	// by name.
	Proxies []cluster.Proxy `json:"proxies"`
	// Initialize is the bootstrap record; nil before the first bootstrap.
	Initialize *cluster.Initialize `json:"initialize,omitempty"`
	// History is the timeline history, oldest first.
	History cluster.History `json:"history"`
	// Sync names the synchronous standbys, nil when the key is absent.
	Sync *cluster.SyncState `json:"sync,omitempty"`
	// Switchover is the pending switchover request, nil when none.
	Switchover *cluster.Switchover `json:"switchover,omitempty"`
	// Config is the dynamic configuration (the config key) as written, nil
	// when unset or not a JSON object. A key whose values the agents
	// cannot read is here too, and in Invalid.
	Config map[string]any `json:"config,omitempty"`
	// Dynamic is what the agents read from the config key
	// (cluster.ParseConfig): zero when it is unset or they ignore it. Its
	// Object and Parameters are left out: Config holds them.
	Dynamic cluster.DynamicConfig `json:"-"`
	// ParametersHidden says Config is shown without its PostgreSQL
	// parameters (WithoutParameters).
	ParametersHidden bool `json:"parameters_hidden,omitempty"`
	// Invalid lists the keys of the layout whose value could not be read,
	// sorted by key. A member here is missing from Members.
	Invalid []InvalidRecord `json:"invalid"`
}

// Leader is the leader key as read.
type Leader struct {
	// Name is the key's value: the holder's member name.
	Name string `json:"name"`
	// Epoch is the key's create revision, the leadership epoch.
	Epoch int64 `json:"epoch"`
	// HasRecord says whether members/<Name> holds a valid record.
	HasRecord bool `json:"has_record"`
}

// InvalidRecord is a key whose value does not parse or validate.
type InvalidRecord struct {
	Key         string `json:"key"`
	ModRevision int64  `json:"mod_revision"`
	Error       string `json:"error"`
}

// Paused reports whether the dynamic configuration pauses the cluster.
func (s ClusterStatus) Paused() bool {
	return s.Dynamic.Pause
}

// WithoutParameters returns s with the dynamic configuration's PostgreSQL
// parameters (postgresql.parameters) left out, for readers who may see the
// topology but not the parameters' values, which often hold secrets (an
// archive_command's credentials). s itself is not changed.
func (s ClusterStatus) WithoutParameters() ClusterStatus {
	pg, ok := s.Config["postgresql"].(map[string]any)
	if !ok {
		return s
	}
	if _, ok := pg["parameters"]; !ok {
		return s
	}
	cfg := maps.Clone(s.Config)
	pg = maps.Clone(pg)
	delete(pg, "parameters")
	if len(pg) == 0 {
		delete(cfg, "postgresql")
	} else {
		cfg["postgresql"] = pg
	}
	s.Config, s.ParametersHidden = cfg, true
	return s
}

// Member returns the record of the named member.
func (s ClusterStatus) Member(name string) (cluster.Member, bool) {
	i := slices.IndexFunc(s.Members, func(m cluster.Member) bool { return m.Name == name })
	if i < 0 {
		return cluster.Member{}, false
	}
	return s.Members[i], true
}

// Empty reports whether nothing of the layout is under the prefix.
func (s ClusterStatus) Empty() bool {
	return s.Leader == nil && len(s.Members) == 0 && s.Initialize == nil && len(s.History) == 0 && len(s.Invalid) == 0 &&
		len(s.Proxies) == 0
}

// Status reads the cluster's keys with one Get on the prefix, so that the
// leader, the member records and the history are from the same revision.
// Keys outside the layout are ignored; keys of the layout that do not parse
// are listed in Invalid.
func Status(ctx context.Context, cli *clientv3.Client, keys cluster.Keys) (ClusterStatus, error) {
	resp, err := cli.Get(ctx, keys.Prefix(), clientv3.WithPrefix())
	if err != nil {
		return ClusterStatus{}, fmt.Errorf("read %s: %w", keys.Prefix(), err)
	}
	st := ClusterStatus{
		Prefix:   keys.Prefix(),
		Revision: resp.Header.Revision,
		Members:  []cluster.Member{},
		Proxies:  []cluster.Proxy{},
		History:  cluster.History{},
		Invalid:  []InvalidRecord{},
	}
	invalid := func(key string, modRev int64, err error) {
		st.Invalid = append(st.Invalid, InvalidRecord{Key: key, ModRevision: modRev, Error: err.Error()})
	}
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		kind, name := keys.Classify(key)
		switch kind {
		case cluster.KeyLeader:
			v := string(kv.Value)
			st.Leader = &Leader{Name: v, Epoch: kv.CreateRevision}
			if !cluster.ValidName(v) {
				invalid(key, kv.ModRevision, fmt.Errorf("leader key holds %q, not a member name", v))
			}
		case cluster.KeyMember:
			m, err := cluster.ParseMember(kv.Value)
			switch {
			case err != nil:
				invalid(key, kv.ModRevision, err)
			case m.Name != name:
				invalid(key, kv.ModRevision, fmt.Errorf("member record names member %q", m.Name))
			default:
				st.Members = append(st.Members, m)
			}
		case cluster.KeyProxy:
			p, err := cluster.ParseProxy(kv.Value)
			switch {
			case err != nil:
				invalid(key, kv.ModRevision, err)
			case p.Name != name:
				invalid(key, kv.ModRevision, fmt.Errorf("proxy record names proxy %q", p.Name))
			case kv.Lease == 0:
				invalid(key, kv.ModRevision, fmt.Errorf("proxy record on no lease: not a live proxy's"))
			default:
				st.Proxies = append(st.Proxies, p)
			}
		case cluster.KeyInitialize:
			in, err := cluster.ParseInitialize(kv.Value)
			if err != nil {
				invalid(key, kv.ModRevision, err)
				continue
			}
			st.Initialize = &in
		case cluster.KeyHistory:
			h, err := cluster.ParseHistory(kv.Value)
			if err != nil {
				invalid(key, kv.ModRevision, err)
				continue
			}
			if h != nil {
				st.History = h
			}
		case cluster.KeySync:
			ss, err := cluster.ParseSyncState(kv.Value)
			if err != nil {
				invalid(key, kv.ModRevision, err)
				continue
			}
			st.Sync = &ss
		case cluster.KeySwitchover:
			sw, err := cluster.ParseSwitchover(kv.Value)
			if err != nil {
				invalid(key, kv.ModRevision, err)
				continue
			}
			st.Switchover = &sw
		case cluster.KeyConfig:
			cfg, err := cluster.ParseConfig(kv.Value)
			if err != nil {
				invalid(key, kv.ModRevision, err)
			}
			st.Config = cfg.Object
			if err == nil {
				cfg.Object, cfg.Parameters = nil, nil
				st.Dynamic = cfg
			}
		case cluster.KeyUnknown:
			if strings.HasPrefix(key, keys.MembersPrefix()) {
				invalid(key, kv.ModRevision, fmt.Errorf("%q is not a member name", strings.TrimPrefix(key, keys.MembersPrefix())))
			}
		}
	}
	// etcd's key order is already name order; sorting keeps Members' doc
	// true whatever the read options.
	slices.SortFunc(st.Members, func(a, b cluster.Member) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(st.Proxies, func(a, b cluster.Proxy) int { return strings.Compare(a.Name, b.Name) })
	if st.Leader != nil {
		_, st.Leader.HasRecord = st.Member(st.Leader.Name)
	}
	return st, nil
}

// History reads the cluster's timeline history. A missing key is an empty
// history; a value that does not parse is an error.
func History(ctx context.Context, cli *clientv3.Client, keys cluster.Keys) (cluster.History, error) {
	resp, err := cli.Get(ctx, keys.History())
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", keys.History(), err)
	}
	if len(resp.Kvs) == 0 {
		return cluster.History{}, nil
	}
	h, err := cluster.ParseHistory(resp.Kvs[0].Value)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keys.History(), err)
	}
	if h == nil {
		h = cluster.History{}
	}
	return h, nil
}
