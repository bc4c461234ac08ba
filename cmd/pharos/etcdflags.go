package main

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"strings"

	"github.com/pharos-ha/pharos/internal/etcdclient"
)

// EtcdSettings are the etcd connection settings of every command that
// talks to etcd (proxy, agent, ctl): their settings embed it with
// `yaml:",inline"`, so they share the config-file keys, the flags and the
// client set-up. (Exported only so that loadYAML may set the fields
// through the embedding.)
type EtcdSettings struct {
	Etcd             []string `yaml:"etcd"`
	EtcdUsername     string   `yaml:"etcd_username"`
	EtcdPassword     string   `yaml:"etcd_password"` // config file only: a flag would show it in ps
	EtcdPasswordFile string   `yaml:"etcd_password_file"`
	EtcdCACert       string   `yaml:"etcd_cacert"`
	EtcdCert         string   `yaml:"etcd_cert"`
	EtcdKey          string   `yaml:"etcd_key"`
}

// bindEtcdFlags registers the etcd connection flags; etcd finds the
// settings they override.
func bindEtcdFlags[S any](o *overrides[S], etcd func(*S) *EtcdSettings) {
	str := func(name, usage string, f func(*EtcdSettings) *string) {
		bind(o, name, usage, parseString, func(s *S) *string { return f(etcd(s)) })
	}
	bind(o, "etcd", "comma-separated etcd endpoints", parseList, func(s *S) *[]string { return &etcd(s).Etcd })
	str("etcd-username", "etcd user (enables etcd authentication)", func(e *EtcdSettings) *string { return &e.EtcdUsername })
	str("etcd-password-file", "file holding the etcd password (or env PHAROS_ETCD_PASSWORD)", func(e *EtcdSettings) *string { return &e.EtcdPasswordFile })
	str("etcd-cacert", "CA bundle to verify etcd's certificate (enables TLS)", func(e *EtcdSettings) *string { return &e.EtcdCACert })
	str("etcd-cert", "client certificate for etcd", func(e *EtcdSettings) *string { return &e.EtcdCert })
	str("etcd-key", "client key for etcd", func(e *EtcdSettings) *string { return &e.EtcdKey })
}

// etcdConfig reads the password and TLS material and returns the client
// config. Problems are usage errors naming the key.
func (e EtcdSettings) etcdConfig() (etcdclient.Config, error) {
	password, err := readSecret("etcd_password", e.EtcdPassword, e.EtcdPasswordFile, "PHAROS_ETCD_PASSWORD")
	if err != nil {
		return etcdclient.Config{}, err
	}
	cfg := etcdclient.Config{Endpoints: e.Etcd, Username: e.EtcdUsername, Password: password}
	if password != "" && cfg.Username == "" {
		return cfg, usageErrorf("etcd_username: an etcd password needs a user name")
	}
	if ep := etcdclient.PlainEndpoint(e.Etcd); ep != "" {
		var why []string
		for _, set := range []struct {
			key string
			on  bool
		}{{"etcd_cacert", e.EtcdCACert != ""}, {"etcd_cert", e.EtcdCert != "" || e.EtcdKey != ""}, {"etcd_password", password != ""}} {
			if set.on {
				why = append(why, set.key)
			}
		}
		// The etcd client drops TLS for them silently, and a password
		// would cross the network in clear.
		if len(why) > 0 {
			verb := "is"
			if len(why) > 1 {
				verb = "are"
			}
			return cfg, usageErrorf("etcd: endpoint %q is plain http:// while %s %s set, and the etcd client talks to such an endpoint without TLS; use https://",
				ep, strings.Join(why, " and "), verb)
		}
	}
	if e.EtcdCACert != "" || e.EtcdCert != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if e.EtcdCACert != "" {
			pem, err := os.ReadFile(e.EtcdCACert)
			if err != nil {
				return cfg, usageErrorf("etcd_cacert: %v", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return cfg, usageErrorf("etcd_cacert: no certificate in %s", e.EtcdCACert)
			}
			tc.RootCAs = pool
		}
		if e.EtcdCert != "" || e.EtcdKey != "" {
			cert, err := tls.LoadX509KeyPair(e.EtcdCert, e.EtcdKey)
			if err != nil {
				return cfg, usageErrorf("etcd_cert: %v", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		cfg.TLS = tc
	}
	return cfg, nil
}
