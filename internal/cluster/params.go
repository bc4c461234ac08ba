package cluster

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// PostgreSQL parameters as the dynamic configuration (config key,
// postgresql.parameters) and an agent's local settings carry them. The
// agent writes each as one `name = 'value'` line of pharos.conf, so a name
// or value that postgresql.conf would read differently smuggles settings:
// a name like "port = '6001' #" or a value with a line break in it adds a
// line of the writer's choosing. ctl refuses such settings before writing
// the key, and the agent skips them when it reads the key, because anyone
// who can write the cluster's prefix in etcd can put them there.

// ValidParameterName reports whether name is spelled as postgresql.conf
// spells a parameter: a word of ASCII letters, digits and '_' that does not
// start with a digit, or two such words joined by one '.' for a custom or
// extension parameter (pg_stat_statements.max). These are PostgreSQL's ID
// and QUALIFIED_ID (src/backend/utils/misc/guc-file.l), less the non-ASCII
// bytes it also takes. Names are case-insensitive in PostgreSQL: compare
// them with strings.EqualFold or after strings.ToLower.
func ValidParameterName(name string) bool {
	word, rest, qualified := strings.Cut(name, ".")
	if !parameterWord(word) {
		return false
	}
	return !qualified || parameterWord(rest)
}

func parameterWord(w string) bool {
	if w == "" || w[0] >= '0' && w[0] <= '9' {
		return false
	}
	for i := 0; i < len(w); i++ {
		c := w[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// CheckParameter refuses a parameter the agent could not write as one
// line of pharos.conf meaning exactly name = value: a name that is not a
// parameter name (ValidParameterName), an include directive (which would
// read a file of the writer's choosing), or a value holding a line break
// or a NUL byte. It does not judge whether PostgreSQL knows the parameter
// or likes the value, and it does not refuse the agent's own parameters:
// see ProtectedParameter.
func CheckParameter(name, value string) error {
	if !ValidParameterName(name) {
		return fmt.Errorf("parameter name %q: letters, digits and '_' (not first), with at most one '.' between two such words, as postgresql.conf spells names", name)
	}
	if directives[strings.ToLower(name)] {
		return fmt.Errorf("parameter name %q: an include directive of postgresql.conf, not a parameter", name)
	}
	if i := strings.IndexAny(value, "\r\n\x00"); i >= 0 {
		return fmt.Errorf("parameter %s: the value holds %q at byte %d; postgresql.conf values are one line without NUL bytes", name, value[i:i+1], i)
	}
	return nil
}

// directives are the lines of postgresql.conf that look like parameters
// and read other files; PostgreSQL matches them case-insensitively.
var directives = map[string]bool{"include": true, "include_if_exists": true, "include_dir": true}

// protectedParameters are set by the agent alone: neither the dynamic nor
// a local configuration may change them. They either tie the server to the
// agent (its port, sockets, data directory, the pg_hba.conf it writes) or
// carry replication and failover, which the agent runs.
var protectedParameters = map[string]bool{
	"port": true, "listen_addresses": true, "unix_socket_directories": true, "cluster_name": true,
	"primary_conninfo": true, "primary_slot_name": true, "recovery_target_timeline": true,
	"hot_standby": true, "wal_level": true, "wal_log_hints": true, "synchronous_standby_names": true,
	"data_directory": true, "config_file": true, "hba_file": true,
}

// ProtectedParameter reports whether the agent alone sets name, whatever
// its case.
func ProtectedParameter(name string) bool { return protectedParameters[strings.ToLower(name)] }

// maxHostLen is DNS's limit on a name (RFC 1035 §2.3.4), less the trailing
// dot.
const maxHostLen = 253

// CheckHost refuses a member host that is neither a host name nor an IP
// address literal. The host goes into libpq connection strings
// (primary_conninfo, pg_rewind's source) and into host:port addresses, so
// anything else could add keywords there (a vertical tab separates them as
// a space does: "10.9.9.9\vsslmode=disable") or name something other than
// a network host (a Unix socket directory, several hosts).
//
// A host name is dot-separated labels of ASCII letters, digits, '-' and
// '_' (underscores are common in container and internal names), neither
// starting nor ending with '-', each at most 63 bytes, at most 253 in all,
// with an optional final dot. An IP literal is IPv4 or IPv6 without
// brackets; an IPv6 zone may hold letters, digits, '.', '-' and '_'.
func CheckHost(host string) error {
	if host == "" {
		return errors.New("host is empty")
	}
	if a, err := netip.ParseAddr(host); err == nil {
		for _, c := range []byte(a.Zone()) {
			if !hostByte(c) && c != '.' {
				return fmt.Errorf("host %q: the IPv6 zone holds %q", host, string(c))
			}
		}
		return nil
	}
	name := strings.TrimSuffix(host, ".")
	if len(name) > maxHostLen {
		return fmt.Errorf("host %.40q...: longer than %d bytes", host, maxHostLen)
	}
	for label := range strings.SplitSeq(name, ".") {
		switch {
		case label == "":
			return fmt.Errorf("host %q is not a host name or IP address: empty label", host)
		case len(label) > 63:
			return fmt.Errorf("host %q is not a host name or IP address: a label is longer than 63 bytes", host)
		case label[0] == '-' || label[len(label)-1] == '-':
			return fmt.Errorf("host %q is not a host name or IP address: a label starts or ends with '-'", host)
		}
		for i := 0; i < len(label); i++ {
			if !hostByte(label[i]) {
				return fmt.Errorf("host %q is not a host name or IP address: it holds %q", host, label[i:i+1])
			}
		}
	}
	return nil
}

func hostByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}
