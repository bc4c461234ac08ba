package etcdlocal

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"

	"github.com/pharos-ha/pharos/internal/pglocal"
)

// SelfSignedTLS writes a self-signed certificate for 127.0.0.1 into dir and
// returns the files to start a member with (Options.ClientTLS) and a client
// configuration that trusts it.
func SelfSignedTLS(dir string) (*TLSFiles, *tls.Config, error) {
	certPEM, keyPEM, err := pglocal.SelfSignedCert()
	if err != nil {
		return nil, nil, err
	}
	files := &TLSFiles{CertFile: filepath.Join(dir, "etcd.crt"), KeyFile: filepath.Join(dir, "etcd.key"), CAFile: filepath.Join(dir, "etcd.crt")}
	if err := os.WriteFile(files.CertFile, certPEM, 0o600); err != nil {
		return nil, nil, err
	}
	if err := os.WriteFile(files.KeyFile, keyPEM, 0o600); err != nil {
		return nil, nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(certPEM)
	return files, &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}, nil
}
