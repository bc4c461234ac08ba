// Package etcdclient owns how every pharos command connects to etcd: the
// endpoints, the user and password, TLS, and the client's dial and
// keep-alive settings. The proxy's topology source, the agent and ctl all
// build their client here, so that one rule (never send TLS material or a
// password to a plain http:// endpoint) holds for all of them.
//
// It must not know the key layout, the proxy or the agent: it returns a
// connected client and nothing else.
package etcdclient

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Config says how to reach etcd.
type Config struct {
	Endpoints []string
	// Username and Password enable etcd's authentication; Password is never
	// logged.
	Username, Password string
	// TLS is used when not nil (client certificates, CA).
	TLS *tls.Config
	// DialTimeout bounds the first connection; default 2s.
	DialTimeout time.Duration
}

// PlainEndpoint returns the first endpoint of eps that names the http://
// scheme, or "". The etcd client connects to such an endpoint without TLS
// even when it has a TLS configuration (it drops it silently) and would
// send a password in clear there, so a configuration with either must not
// name one.
func PlainEndpoint(eps []string) string {
	for _, ep := range eps {
		if len(ep) >= len("http://") && strings.EqualFold(ep[:len("http://")], "http://") {
			return ep
		}
	}
	return ""
}

// New connects to etcd with cfg. The caller closes the client. It refuses
// an http:// endpoint when cfg has TLS or a password (PlainEndpoint).
func New(cfg Config) (*clientv3.Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd: at least one endpoint is required")
	}
	if ep := PlainEndpoint(cfg.Endpoints); ep != "" && (cfg.TLS != nil || cfg.Password != "") {
		return nil, fmt.Errorf("etcd: endpoint %q is plain http://, which would drop TLS and send the password in clear; use https://", ep)
	}
	dial := cfg.DialTimeout
	if dial <= 0 {
		dial = 2 * time.Second
	}
	return clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		Username:             cfg.Username,
		Password:             cfg.Password,
		TLS:                  cfg.TLS,
		DialTimeout:          dial,
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		// The client's own zap logs are noise next to ours.
		Logger: zap.NewNop(),
	})
}
