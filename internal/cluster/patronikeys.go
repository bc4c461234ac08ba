package cluster

// The etcd v3 keys of a Patroni cluster, as read by the proxy (see
// patroni.go for its member records). Checked against Patroni's source
// (github.com/patroni/patroni).
//
// Key layout (patroni/dcs/__init__.py, AbstractDCS):
//   - The cluster's root is "/<namespace>/<scope>/", namespace defaulting to
//     "service", with runs of '/' collapsed (AbstractDCS.__init__ builds
//     _base_path so). With Citus/MPP enabled a group number is inserted
//     after the scope (client_path); that layout is not supported here.
//   - "leader": the leader's member name as plain text (not JSON), on the
//     leader's lease, created with a create-revision-0 compare
//     (patroni/dcs/etcd3.py, _do_attempt_to_acquire_leader). Renewals put
//     the same value again (_update_leader), so the key's create revision
//     stays a leadership epoch as in pharos.
//   - "members/<name>": the member's JSON record on its own lease
//     (patroni/dcs/etcd3.py, touch_member, compact json.dumps). Only keys
//     with no further '/' after "members/" are members, and the name is the
//     key's last segment (etcd3.py, _cluster_from_nodes and member()).
//   - "status": JSON {"optime": <int>, "slots": {...}, "retain_slots": [...]}
//     written by the leader (AbstractDCS.write_status, Status.from_node).
//     It appeared in Patroni 2.1.0; before that the same position lived in
//     "optime/leader" as a plain integer, which a leader still writes while
//     any member runs a Patroni older than 2.1.0 (write_status). Readers use
//     "status" and fall back to "optime/leader" (etcd3.py,
//     _cluster_from_nodes).
//   - "config", "initialize", "failover", "history", "sync", "failsafe":
//     classified, not parsed here.

import (
	"fmt"
	"strings"
)

// DefaultPatroniNamespace is Patroni's default namespace.
const DefaultPatroniNamespace = "/service"

// Key kinds that only a Patroni layout has. Their values start well above
// those of keys.go so that kinds added there later cannot collide.
const (
	KeyStatus       KeyKind = 64 + iota // "status": the leader's last WAL position, JSON
	KeyLegacyOptime                     // "optime/leader": the same, a plain integer (Patroni < 2.1)
	KeyFailover                         // "failover": a switchover or failover request
	KeyFailsafe                         // "failsafe": the topology failsafe_mode falls back on
)

// PatroniKeys is the key layout of one Patroni cluster:
// /<namespace>/<scope>/.
type PatroniKeys struct {
	prefix string // ends in "/"
}

// NewPatroniKeys returns the layout of the Patroni cluster scope under
// namespace ("" means DefaultPatroniNamespace). Like Patroni, it collapses
// runs of '/', so "service", "/service" and "/service/" are the same.
func NewPatroniKeys(namespace, scope string) (PatroniKeys, error) {
	if strings.Trim(scope, "/") == "" {
		return PatroniKeys{}, fmt.Errorf("patroni scope %q is empty", scope)
	}
	if namespace == "" {
		namespace = DefaultPatroniNamespace
	}
	return PatroniKeys{prefix: collapseSlashes("/" + namespace + "/" + scope + "/")}, nil
}

func collapseSlashes(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '/' && i > 0 && s[i-1] == '/' {
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Prefix is the cluster's root, ending in "/"; a watch on it sees every key.
func (k PatroniKeys) Prefix() string { return k.prefix }

// Leader holds the leader's member name as plain text, on its lease.
func (k PatroniKeys) Leader() string { return k.prefix + "leader" }

// MembersPrefix is the directory of member records.
func (k PatroniKeys) MembersPrefix() string { return k.prefix + "members/" }

// Member is the record of one member, on that member's lease.
func (k PatroniKeys) Member(name string) string { return k.prefix + "members/" + name }

// Status holds the leader's last known WAL position (Patroni 2.1+).
func (k PatroniKeys) Status() string { return k.prefix + "status" }

// LegacyOptime holds the leader's last known WAL position as a plain
// integer; Patroni 2.1+ still writes it while older members are present.
func (k PatroniKeys) LegacyOptime() string { return k.prefix + "optime/leader" }

// Config holds Patroni's dynamic configuration.
func (k PatroniKeys) Config() string { return k.prefix + "config" }

// Initialize holds the system identifier.
func (k PatroniKeys) Initialize() string { return k.prefix + "initialize" }

// Failover holds a pending switchover or failover request.
func (k PatroniKeys) Failover() string { return k.prefix + "failover" }

// Sync names the synchronous standbys.
func (k PatroniKeys) Sync() string { return k.prefix + "sync" }

// History holds the timeline history.
func (k PatroniKeys) History() string { return k.prefix + "history" }

// Failsafe holds the topology used by failsafe_mode.
func (k PatroniKeys) Failsafe() string { return k.prefix + "failsafe" }

// Classify says what key is and, for a member record, whose. Like Patroni,
// it takes any name without '/' as a member's; a name pharos cannot use is
// reported by ParsePatroniMember rather than silently ignored here.
func (k PatroniKeys) Classify(key string) (KeyKind, string) {
	rest, ok := strings.CutPrefix(key, k.prefix)
	if !ok {
		return KeyUnknown, ""
	}
	if name, ok := strings.CutPrefix(rest, "members/"); ok {
		if name == "" || strings.Contains(name, "/") {
			return KeyUnknown, ""
		}
		return KeyMember, name
	}
	switch rest {
	case "leader":
		return KeyLeader, ""
	case "status":
		return KeyStatus, ""
	case "optime/leader":
		return KeyLegacyOptime, ""
	case "config":
		return KeyConfig, ""
	case "initialize":
		return KeyInitialize, ""
	case "failover":
		return KeyFailover, ""
	case "sync":
		return KeySync, ""
	case "history":
		return KeyHistory, ""
	case "failsafe":
		return KeyFailsafe, ""
	}
	return KeyUnknown, ""
}
