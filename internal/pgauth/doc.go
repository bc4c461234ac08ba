// Package pgauth holds PostgreSQL password authentication as pure
// functions: the verifiers PostgreSQL stores (SCRAM-SHA-256 and md5), the
// userlist file PgBouncer reads them from, and both sides of the
// SCRAM-SHA-256 exchange (RFC 5802, RFC 7677), with SCRAM-SHA-256-PLUS's
// tls-server-end-point channel binding (RFC 5929), and of md5. It owns no
// sockets, clock or randomness: nonces and salts come from the caller, so
// every step can be tested with fixed values. It must not know the proxy.
//
// No function here takes or returns a password except key derivation
// (NewSCRAMVerifier and NewSCRAMKeys, for tests and for the proxy's login
// as a certificate user whose password an auth_file gives) and
// ReadUserlist, which returns secrets as written; what a password login
// keeps is the ClientKey recovered from the client's proof, which the
// verifier's owner could not compute without the password but which lets
// the proxy log in to any server holding the same verifier.
package pgauth
