package main

import (
	"crypto/tls"
	"crypto/x509"
	"os"

	"github.com/pharos-ha/pharos/internal/router"
)

// etcdFields points at the etcd settings inside a command's settings
// struct, so that every command that talks to etcd (proxy, ctl) shares
// the flags, their config-file keys (etcd, etcd_username, etcd_password,
// etcd_password_file, etcd_cacert, etcd_cert, etcd_key) and the client
// set-up. Pointers rather than an embedded struct, because config files
// are flat and loadYAML maps a struct's own fields only.
type etcdFields struct {
	Endpoints    *[]string
	Username     *string
	Password     *string // config file only: a flag would show it in ps
	PasswordFile *string
	CACert       *string
	Cert         *string
	Key          *string
}

// bindEtcdFlags registers the etcd connection flags; fields finds them in
// the settings the flags override.
func bindEtcdFlags[S any](o *overrides[S], fields func(*S) etcdFields) {
	str := func(name, usage string, f func(etcdFields) *string) {
		bind(o, name, usage, parseString, func(s *S) *string { return f(fields(s)) })
	}
	bind(o, "etcd", "comma-separated etcd endpoints", parseList, func(s *S) *[]string { return fields(s).Endpoints })
	str("etcd-username", "etcd user (enables etcd authentication)", func(f etcdFields) *string { return f.Username })
	str("etcd-password-file", "file holding the etcd password (or env PHAROS_ETCD_PASSWORD)", func(f etcdFields) *string { return f.PasswordFile })
	str("etcd-cacert", "CA bundle to verify etcd's certificate (enables TLS)", func(f etcdFields) *string { return f.CACert })
	str("etcd-cert", "client certificate for etcd", func(f etcdFields) *string { return f.Cert })
	str("etcd-key", "client key for etcd", func(f etcdFields) *string { return f.Key })
}

// config reads the password and TLS material and returns the client
// config. Problems are usage errors naming the key.
func (f etcdFields) config() (router.EtcdConfig, error) {
	password, err := readSecret("etcd_password", *f.Password, *f.PasswordFile, "PHAROS_ETCD_PASSWORD")
	if err != nil {
		return router.EtcdConfig{}, err
	}
	cfg := router.EtcdConfig{Endpoints: *f.Endpoints, Username: *f.Username, Password: password}
	if password != "" && cfg.Username == "" {
		return cfg, usageErrorf("etcd_username: an etcd password needs a user name")
	}
	if *f.CACert != "" || *f.Cert != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if *f.CACert != "" {
			pem, err := os.ReadFile(*f.CACert)
			if err != nil {
				return cfg, usageErrorf("etcd_cacert: %v", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return cfg, usageErrorf("etcd_cacert: no certificate in %s", *f.CACert)
			}
			tc.RootCAs = pool
		}
		if *f.Cert != "" || *f.Key != "" {
			cert, err := tls.LoadX509KeyPair(*f.Cert, *f.Key)
			if err != nil {
				return cfg, usageErrorf("etcd_cert: %v", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		cfg.TLS = tc
	}
	return cfg, nil
}
