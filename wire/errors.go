package wire

import (
	"fmt"

	"github.com/jackc/pgx/v5/pgproto3"
)

// SQLSTATE codes the proxy answers with itself.
const (
	CodeProtocolViolation     = "08P01" // malformed or oversized input
	CodeCannotConnectNow      = "57P03" // no backend can take the session
	CodeTooManyConnections    = "53300" // per-endpoint client limit reached
	CodeAdminShutdown         = "57P01" // proxy draining or session fenced
	CodeInvalidAuthSpec       = "28000" // e.g. TLS required but not used
	CodeConnectionFailure     = "08006" // backend went away mid-session
	CodeFeatureNotSupported   = "0A000" // e.g. an unsupported protocol major
	CodeInvalidParameterValue = "22023"
)

// ProtocolError is a violation of the wire protocol by the peer. Code is the
// SQLSTATE the proxy reports to the client for it.
type ProtocolError struct {
	Code    string
	Message string
	Err     error // optional sentinel, such as ErrMessageTooLarge
}

func (e *ProtocolError) Error() string { return e.Message }

func (e *ProtocolError) Unwrap() error { return e.Err }

func protocolErrorf(format string, args ...any) *ProtocolError {
	return &ProtocolError{Code: CodeProtocolViolation, Message: fmt.Sprintf(format, args...)}
}

// AppendError appends an ErrorResponse with the given severity ("FATAL" or
// "ERROR"), SQLSTATE and message to dst.
func AppendError(dst []byte, severity, code, message string) []byte {
	msg := pgproto3.ErrorResponse{
		Severity:            severity,
		SeverityUnlocalized: severity,
		Code:                code,
		Message:             message,
	}
	// Encode only fails for messages too large for the protocol, which a
	// proxy-written error never is.
	out, err := msg.Encode(dst)
	if err != nil {
		panic(fmt.Sprintf("wire: encode ErrorResponse: %v", err))
	}
	return out
}

// FatalError returns a FATAL ErrorResponse message.
func FatalError(code, message string) []byte {
	return AppendError(nil, "FATAL", code, message)
}
