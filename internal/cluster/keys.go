package cluster

import (
	"fmt"
	"strconv"
	"strings"
)

// DefaultPrefix is the root of every pharos cluster's keys.
const DefaultPrefix = "/pharos/"

// Keys is the key layout of one cluster: everything lives under
// /pharos/<cluster>/.
type Keys struct {
	prefix string // ends in "/"
}

// NewKeys returns the layout for cluster under DefaultPrefix.
func NewKeys(clusterName string) (Keys, error) {
	if !ValidName(clusterName) {
		return Keys{}, fmt.Errorf("cluster name %q: use letters, digits, '-', '_' and '.'", clusterName)
	}
	return Keys{prefix: DefaultPrefix + clusterName + "/"}, nil
}

// Prefix is the cluster's root, ending in "/"; a watch on it sees every key.
func (k Keys) Prefix() string { return k.prefix }

// Leader holds the leader's member name, attached to its lease. The key's
// create revision is the leadership epoch, the fencing token.
func (k Keys) Leader() string { return k.prefix + "leader" }

// MembersPrefix is the directory of member records.
func (k Keys) MembersPrefix() string { return k.prefix + "members/" }

// Member is the record of one member, on that member's lease.
func (k Keys) Member(name string) string { return k.prefix + "members/" + name }

// Config holds the dynamic cluster configuration.
func (k Keys) Config() string { return k.prefix + "config" }

// Initialize holds the system identifier, written once at bootstrap.
func (k Keys) Initialize() string { return k.prefix + "initialize" }

// Switchover holds a pending planned switchover request.
func (k Keys) Switchover() string { return k.prefix + "switchover" }

// Sync names the synchronous standbys.
func (k Keys) Sync() string { return k.prefix + "sync" }

// History holds the timeline history.
func (k Keys) History() string { return k.prefix + "history" }

// ProxiesPrefix is the directory of proxy records.
func (k Keys) ProxiesPrefix() string { return k.prefix + "proxies/" }

// Proxy is the record of one proxy, on that proxy's own lease.
func (k Keys) Proxy(name string) string { return k.prefix + "proxies/" + name }

// CancelIDsPrefix is the directory of the proxies' cancel ID claims.
func (k Keys) CancelIDsPrefix() string { return k.prefix + "proxy-cancel-ids/" }

// CancelID is the claim of cancel ID id: the holder's proxy name, on its
// lease, created only where it did not exist (CreateRevision == 0), so no
// two live proxies hold one ID.
func (k Keys) CancelID(id uint16) string {
	return k.prefix + "proxy-cancel-ids/" + strconv.Itoa(int(id))
}

// KeyKind classifies a key under the cluster prefix.
type KeyKind uint8

const (
	KeyUnknown KeyKind = iota // not part of the layout: ignored
	KeyLeader
	KeyMember
	KeyConfig
	KeyInitialize
	KeySwitchover
	KeySync
	KeyHistory
	KeyProxy         // proxies/<name>
	KeyProxyCancelID // proxy-cancel-ids/<id>; the name Classify returns is the id
)

// Classify says what key is and, for a member record, whose.
func (k Keys) Classify(key string) (KeyKind, string) {
	rest, ok := strings.CutPrefix(key, k.prefix)
	if !ok {
		return KeyUnknown, ""
	}
	if name, ok := strings.CutPrefix(rest, "members/"); ok {
		if ValidName(name) {
			return KeyMember, name
		}
		return KeyUnknown, ""
	}
	if name, ok := strings.CutPrefix(rest, "proxies/"); ok {
		if ValidProxyName(name) {
			return KeyProxy, name
		}
		return KeyUnknown, ""
	}
	if id, ok := strings.CutPrefix(rest, "proxy-cancel-ids/"); ok {
		if _, ok := ParseCancelIDKey(id); ok {
			return KeyProxyCancelID, id
		}
		return KeyUnknown, ""
	}
	switch rest {
	case "leader":
		return KeyLeader, ""
	case "config":
		return KeyConfig, ""
	case "initialize":
		return KeyInitialize, ""
	case "switchover":
		return KeySwitchover, ""
	case "sync":
		return KeySync, ""
	case "history":
		return KeyHistory, ""
	}
	return KeyUnknown, ""
}
