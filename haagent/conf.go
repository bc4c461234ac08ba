package haagent

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/pharos-ha/pharos/haagent/core"
	"github.com/pharos-ha/pharos/internal/cluster"
)

// confInputs is everything pharos.conf says: renderConf is a function of
// it alone.
type confInputs struct {
	Listen    string
	Port      int
	SocketDir string
	// Name is the member's (cluster_name, its replication slot upstream).
	Name string
	// Dynamic are the cluster's parameters, Local this node's; Local
	// overrides Dynamic, and both give way to the agent's protected ones.
	Dynamic, Local map[string]string
	SyncNames      []string
	// Upstream names the member a standby follows ("": none) and
	// PrimaryConninfo is how it connects there.
	Upstream        string
	PrimaryConninfo string
}

// ignoredParam is a parameter renderConf left out: a name or value that
// would not be one line of pharos.conf (err), or one the agent sets
// (protected).
type ignoredParam struct {
	name      string
	err       error
	protected bool
}

// renderConf is pharos.conf's text for in, and the parameters it left out.
func renderConf(in confInputs) (string, []ignoredParam) {
	params := map[string]string{
		"listen_addresses":             in.Listen,
		"port":                         strconv.Itoa(in.Port),
		"unix_socket_directories":      in.SocketDir,
		"cluster_name":                 in.Name,
		"wal_level":                    "replica",
		"hot_standby":                  "on",
		"hot_standby_feedback":         "on",
		"max_wal_senders":              "10",
		"max_replication_slots":        "10",
		"wal_keep_size":                "256MB",
		"wal_log_hints":                "on",
		"wal_retrieve_retry_interval":  "500ms",
		"wal_receiver_status_interval": "1s",
		"recovery_target_timeline":     "latest",
		"logging_collector":            "off",
		"log_line_prefix":              "%m [%p] %q%u@%d ",
		"password_encryption":          "scram-sha-256",
	}
	// Precedence: the agent's own settings < the cluster's dynamic ones <
	// this node's local ones; protected ones are the agent's only. Names
	// are folded as PostgreSQL folds them, so that a layer overrides
	// another whatever the spelling. The dynamic layer is whatever a writer
	// of the config key put there: a name or value that would not be one
	// line of pharos.conf is skipped, not written. Each layer in name
	// order, so that the same spelling always wins.
	var ignored []ignoredParam
	for _, layer := range []map[string]string{in.Dynamic, in.Local} {
		names := make([]string, 0, len(layer))
		for k := range layer {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			v := layer[k]
			if err := cluster.CheckParameter(k, v); err != nil {
				ignored = append(ignored, ignoredParam{name: k, err: err})
				continue
			}
			if cluster.ProtectedParameter(k) {
				ignored = append(ignored, ignoredParam{name: k, protected: true})
				continue
			}
			params[strings.ToLower(k)] = v
		}
	}
	// A standby ignores it; a standby about to be promoted in synchronous
	// mode needs it in place before the promotion.
	params["synchronous_standby_names"] = formatSyncNames(in.SyncNames)
	params["primary_conninfo"], params["primary_slot_name"] = "", ""
	if in.Upstream != "" {
		params["primary_conninfo"] = in.PrimaryConninfo
		params["primary_slot_name"] = core.SlotName(in.Name)
	}
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("# written by the pharos agent; edits are lost\n")
	if in.Upstream != "" {
		fmt.Fprintf(&b, "# upstream: %s\n", in.Upstream)
	}
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, quoteConfValue(params[k]))
	}
	return b.String(), ignored
}
