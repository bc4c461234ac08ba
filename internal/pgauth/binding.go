package pgauth

import (
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"errors"
	"fmt"
	"hash"
)

// MechanismPlus is the SASL mechanism name of SCRAM-SHA-256 with channel
// binding.
const MechanismPlus = "SCRAM-SHA-256-PLUS"

// BindingType is the one channel-binding type PostgreSQL (and so every
// client of it) uses: RFC 5929's tls-server-end-point.
const BindingType = "tls-server-end-point"

// gs2Plus is the GS2 header of a client-first-message that binds to the
// channel: flag "p=tls-server-end-point", no authzid.
const gs2Plus = "p=" + BindingType + ",,"

// ErrBindingDowngrade is a client that can bind to the channel ("y") but
// believes the server cannot, from a server that offered
// SCRAM-SHA-256-PLUS: someone between them removed the mechanism (RFC 5802
// section 6), so the login is refused (28000), as PostgreSQL does.
var ErrBindingDowngrade = errors.New("SCRAM channel binding negotiation error: the client supports SCRAM channel binding but thinks the server does not; however, this server does support channel binding")

// ErrBindingMismatch is a client-final-message whose channel-binding data
// is not the server's certificate hash: the client's TLS channel ends
// somewhere else (a man in the middle). 28000, as in PostgreSQL.
var ErrBindingMismatch = errors.New("SCRAM channel binding check failed")

// TLSServerEndPoint returns the tls-server-end-point channel-binding data
// of a TLS server's leaf certificate (RFC 5929 section 4.1): the hash of
// its DER encoding with the hash function of its signature algorithm, or
// SHA-256 when that is MD5 or SHA-1. A signature without a separate hash
// function (Ed25519) has no tls-server-end-point binding.
func TLSServerEndPoint(cert *x509.Certificate) ([]byte, error) {
	var h hash.Hash
	switch cert.SignatureAlgorithm {
	case x509.MD5WithRSA, x509.SHA1WithRSA, x509.ECDSAWithSHA1, x509.DSAWithSHA1,
		x509.SHA256WithRSA, x509.SHA256WithRSAPSS, x509.ECDSAWithSHA256, x509.DSAWithSHA256:
		h = sha256.New()
	case x509.SHA384WithRSA, x509.SHA384WithRSAPSS, x509.ECDSAWithSHA384:
		h = sha512.New384()
	case x509.SHA512WithRSA, x509.SHA512WithRSAPSS, x509.ECDSAWithSHA512:
		h = sha512.New()
	default:
		return nil, fmt.Errorf("tls-server-end-point channel binding is undefined for certificate signature algorithm %v", cert.SignatureAlgorithm)
	}
	h.Write(cert.Raw)
	return h.Sum(nil), nil
}
