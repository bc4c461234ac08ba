// Package wire owns PostgreSQL v3 framing as the proxy needs it: the
// startup phase (StartupMessage of any 3.x minor version, SSLRequest,
// GSSENCRequest, CancelRequest with 4- to 256-byte keys), message boundaries
// of the regular stream without decoding payloads, the ReadyForQuery
// transaction status, the handful of messages the proxy must look inside
// (AuthenticationSASL, BackendKeyData, ErrorResponse), the messages the
// proxy writes itself, encoded with github.com/jackc/pgx/v5/pgproto3, and
// the StartupMessage's parameters as the server reads them (setting names
// without case, the "options" command line) so that a setting can be
// forced.
//
// It enforces PostgreSQL's own limits (a startup packet is at most 10 000
// bytes, a message length is at least 4 and below 1 GiB) and a caller-chosen
// maximum message size.
//
// It must not know who owns the sockets, how a backend was chosen, or etcd:
// everything here works on byte slices and io.Readers.
//
// Its Go API carries no stability promise: pharos ships a binary, and
// these packages change with it.
package wire
