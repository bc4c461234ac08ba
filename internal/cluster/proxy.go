package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// MaxCancelID is the largest cancel ID a proxy can hold: its keys' pids are
// cancelID<<22 | seq, which must stay a positive int32.
const MaxCancelID = 511

// Proxy is the record at proxies/<name>, on the proxy's own lease: a live
// proxy of the cluster. Agents read it for switchover drain
// acknowledgements; other proxies read it to pass on CancelRequests whose
// key carries its CancelID.
type Proxy struct {
	Name      string         `json:"name"`
	Version   string         `json:"version"`
	Listeners ProxyListeners `json:"listeners"`
	StartedAt time.Time      `json:"started_at"`
	// CancelID is the ID the proxy's cancel keys carry (pid>>22), held by
	// its claim at proxy-cancel-ids/<id> on the same lease; 0 when it holds
	// none (every ID taken), in which case nobody passes keys on to it.
	CancelID uint16 `json:"cancel_id,omitempty"`
	// DrainAck is the revision of the switchover request whose drain the
	// proxy has acknowledged; 0 when none.
	DrainAck int64 `json:"drain_ack,omitempty"`
}

// ProxyListeners are a proxy's addresses, host:port, "" for one it does
// not serve.
type ProxyListeners struct {
	RW      string `json:"rw,omitempty"`
	RO      string `json:"ro,omitempty"`
	Metrics string `json:"metrics,omitempty"`
}

// CancelAddr is where CancelRequests for the proxy's keys can be sent:
// either client listener takes them.
func (l ProxyListeners) CancelAddr() string {
	if l.RW != "" {
		return l.RW
	}
	return l.RO
}

// ValidProxyName reports whether name can be a proxy name (and so a key
// segment): a member name's characters and ':', so that the default,
// host:port of the rw listener, is one.
func ValidProxyName(name string) bool {
	if name == "" || len(name) > 128 || name == "." || name == ".." {
		return false
	}
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.', r == ':':
		default:
			return false
		}
	}
	return true
}

// maxProxyVersion bounds the version string, which ctl prints.
const maxProxyVersion = 64

// Validate reports the first field that makes the record unusable.
func (p Proxy) Validate() error {
	switch {
	case !ValidProxyName(p.Name):
		return fmt.Errorf("name %q is not a proxy name: at most 128 letters, digits, '-', '_', '.' and ':'", p.Name)
	case len(p.Version) > maxProxyVersion:
		return fmt.Errorf("version is %d bytes, more than %d", len(p.Version), maxProxyVersion)
	case p.CancelID > MaxCancelID:
		return fmt.Errorf("cancel_id %d is not in 0..%d", p.CancelID, MaxCancelID)
	case p.DrainAck < 0:
		return fmt.Errorf("drain_ack %d is negative", p.DrainAck)
	case p.Listeners.RW == "" && p.Listeners.RO == "":
		return errors.New("listeners: neither rw nor ro")
	}
	for _, r := range p.Version {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("version %q has a non-printable character", p.Version)
		}
	}
	for _, l := range []struct{ name, addr string }{
		{"rw", p.Listeners.RW}, {"ro", p.Listeners.RO}, {"metrics", p.Listeners.Metrics},
	} {
		if l.addr == "" {
			continue
		}
		if err := checkListenAddr(l.addr); err != nil {
			return fmt.Errorf("listeners.%s: %w", l.name, err)
		}
	}
	return nil
}

// checkListenAddr accepts host:port with a port in 1..65535 and a host
// CheckHost accepts: other proxies dial it.
func checkListenAddr(addr string) error {
	host, port, ok := splitHostPort(addr)
	if !ok {
		return fmt.Errorf("%q is not host:port", addr)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q: port out of range", addr)
	}
	return CheckHost(host)
}

// splitHostPort is net.SplitHostPort's split, "[v6]:port" or
// "host:port" with no other colon (this package stays off net).
func splitHostPort(addr string) (host, port string, ok bool) {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return "", "", false
	}
	host, port = addr[:i], addr[i+1:]
	if strings.HasPrefix(host, "[") {
		if !strings.HasSuffix(host, "]") {
			return "", "", false
		}
		host = host[1 : len(host)-1]
		return host, port, strings.Contains(host, ":")
	}
	return host, port, !strings.ContainsAny(host, ":[]")
}

// MarshalProxy encodes a proxy record.
func MarshalProxy(p Proxy) ([]byte, error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("proxy record: %w", err)
	}
	return json.Marshal(p)
}

// ParseProxy decodes and validates a proxy record. Unknown fields are
// ignored so that newer proxies can add some.
func ParseProxy(data []byte) (Proxy, error) {
	var p Proxy
	if err := json.Unmarshal(data, &p); err != nil {
		return Proxy{}, fmt.Errorf("proxy record: %w", err)
	}
	if err := p.Validate(); err != nil {
		return Proxy{}, fmt.Errorf("proxy record: %w", err)
	}
	return p, nil
}

// ParseCancelIDKey returns the ID of a proxy-cancel-ids/<id> key's last
// segment, written in decimal without leading zeros.
func ParseCancelIDKey(seg string) (uint16, bool) {
	n, err := strconv.Atoi(seg)
	if err != nil || n < 1 || n > MaxCancelID || strconv.Itoa(n) != seg {
		return 0, false
	}
	return uint16(n), true
}
