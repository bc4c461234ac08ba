package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5/pgproto3"
)

// MaxProtocolBodyLen is the largest message body PostgreSQL accepts: its
// limit (PG_LARGE_MESSAGE_LIMIT, MaxAllocSize - 1) applies to the length
// word, which counts itself.
const MaxProtocolBodyLen = 0x3fffffff - 1 - 4

// HeaderLen is the size of a regular message header: type byte and int32
// length (which counts itself but not the type byte).
const HeaderLen = 5

// Transaction status reported by ReadyForQuery.
const (
	TxIdle          byte = 'I'
	TxInTransaction byte = 'T'
	TxFailed        byte = 'E'
)

// Message types the proxy looks at. Everything else passes untouched.
const (
	MsgAuthentication   byte = 'R'
	MsgBackendKeyData   byte = 'K'
	MsgErrorResponse    byte = 'E'
	MsgReadyForQuery    byte = 'Z'
	MsgNegotiateVersion byte = 'v'
	MsgTerminate        byte = 'X'
	MsgQuery            byte = 'Q'
	MsgSync             byte = 'S' // from a client; from a server 'S' is ParameterStatus
	MsgFunctionCall     byte = 'F'
	MsgParameterStatus  byte = 'S' // from a server
	MsgNoticeResponse   byte = 'N'
	MsgCommandComplete  byte = 'C'
	MsgEmptyQuery       byte = 'I' // EmptyQueryResponse
	MsgNotification     byte = 'A'
	// MsgSASLInitialResponse shares 'p' with the other authentication
	// responses; it is the first one after AuthenticationSASL.
	MsgSASLInitialResponse byte = 'p'
)

// Framer follows message boundaries in one direction of the regular
// (post-startup) stream without decoding payloads. Feed it every chunk in
// order; it keeps only the few bytes of a header split across chunks, never
// copies payloads and never allocates.
//
// The zero value accepts any length the protocol allows.
type Framer struct {
	// MaxBodyLen bounds a message body; 0 means MaxProtocolBodyLen.
	MaxBodyLen int
	// Frontend says the stream comes from a client. It decides which
	// messages SyncPoints counts.
	Frontend bool
	// Capture, when non-zero, is a message type whose messages Feed hands
	// whole (header included) to Captured as each one completes, however
	// the chunks split it. The bytes are valid only during the call. A
	// message whose body is over MaxCaptureBody is passed as nil: its
	// content was not kept. Captured runs on the Feed caller's goroutine;
	// the copy buffer is reused, so capturing allocates only while it grows.
	Capture  byte
	Captured func(msg []byte)

	hdr        [HeaderLen]byte
	hdrN       int // header bytes seen of the message in progress
	rem        int // body bytes still to come of the message in progress
	typ        byte
	wantStatus bool // the next body byte is a ReadyForQuery status
	txStatus   byte
	messages   uint64
	syncPoints uint64
	idleReady  uint64 // ReadyForQuery messages whose status is TxIdle
	capturing  bool   // the message in progress is one of Capture's
	capTooBig  bool   // ... and over MaxCaptureBody: not copied
	capBuf     []byte // the captured message so far
}

// MaxCaptureBody bounds the body of a message Framer.Capture copies.
const MaxCaptureBody = 64 << 10

// ErrMessageTooLarge is wrapped by the ProtocolError returned for a message
// longer than the configured limit.
var ErrMessageTooLarge = errors.New("message too large")

func tooLarge(typ byte, bodyLen, limit int) *ProtocolError {
	return &ProtocolError{
		Code:    CodeProtocolViolation,
		Message: fmt.Sprintf("message of type %q is %d bytes, over the limit of %d", typ, bodyLen, limit),
		Err:     ErrMessageTooLarge,
	}
}

// Feed advances the framer over p. On error the stream is corrupt and must
// be closed; the framer's state is then meaningless.
func (f *Framer) Feed(p []byte) error {
	for len(p) > 0 {
		if f.rem > 0 {
			if f.wantStatus {
				f.setStatus(p[0])
			}
			n := min(f.rem, len(p))
			if f.capturing {
				f.capture(p[:n], f.rem == n)
			}
			f.rem -= n
			p = p[n:]
			continue
		}
		if f.hdrN == 0 && len(p) >= HeaderLen {
			// Fast path: hop from header to header inside the chunk.
			bodyLen, err := f.startMessage(p[0], binary.BigEndian.Uint32(p[1:HeaderLen]))
			if err != nil {
				return err
			}
			if f.wantStatus && len(p) > HeaderLen && bodyLen > 0 {
				f.setStatus(p[HeaderLen])
			}
			if end := HeaderLen + bodyLen; end <= len(p) {
				if f.capturing {
					f.capture(p[:end], true)
				}
				p = p[end:]
				continue
			}
			if f.capturing {
				f.capture(p, false)
			}
			f.rem = HeaderLen + bodyLen - len(p)
			return nil
		}
		n := copy(f.hdr[f.hdrN:], p)
		f.hdrN += n
		p = p[n:]
		if f.hdrN < HeaderLen {
			return nil
		}
		f.hdrN = 0
		bodyLen, err := f.startMessage(f.hdr[0], binary.BigEndian.Uint32(f.hdr[1:]))
		if err != nil {
			return err
		}
		if f.capturing {
			f.capture(f.hdr[:], bodyLen == 0)
		}
		f.rem = bodyLen
	}
	return nil
}

// capture adds part of the captured message in progress and hands it on
// when last says the message is complete.
func (f *Framer) capture(part []byte, last bool) {
	if !f.capTooBig {
		f.capBuf = append(f.capBuf, part...)
	}
	if !last {
		return
	}
	f.capturing = false
	if f.capTooBig {
		f.Captured(nil)
	} else {
		f.Captured(f.capBuf)
	}
	f.capBuf = f.capBuf[:0]
}

func (f *Framer) startMessage(typ byte, length uint32) (int, error) {
	n := int(int32(length))
	if n < 4 {
		return 0, protocolErrorf("invalid message length %d for message type %q", n, typ)
	}
	bodyLen := n - 4
	limit := f.MaxBodyLen
	if limit <= 0 || limit > MaxProtocolBodyLen {
		limit = MaxProtocolBodyLen
	}
	if bodyLen > limit {
		return 0, tooLarge(typ, bodyLen, limit)
	}
	f.typ = typ
	f.wantStatus = typ == MsgReadyForQuery && bodyLen > 0
	if f.Capture != 0 && typ == f.Capture && f.Captured != nil {
		f.capturing, f.capTooBig = true, bodyLen > MaxCaptureBody
		f.capBuf = f.capBuf[:0]
	}
	f.messages++
	if f.Frontend {
		if IsSyncPoint(typ) {
			f.syncPoints++
		}
	} else if typ == MsgReadyForQuery {
		f.syncPoints++
	}
	return bodyLen, nil
}

// setStatus records a ReadyForQuery's status byte.
func (f *Framer) setStatus(b byte) {
	f.txStatus = b
	f.wantStatus = false
	if b == TxIdle {
		f.idleReady++
	}
}

// AtBoundary reports whether everything fed so far ends with a complete
// message, so the proxy may insert a message of its own here.
func (f *Framer) AtBoundary() bool { return f.hdrN == 0 && f.rem == 0 }

// TxStatus is the status byte of the last ReadyForQuery seen ('I', 'T' or
// 'E'), or 0 before the first.
func (f *Framer) TxStatus() byte { return f.txStatus }

// LastType is the type byte of the last message whose header was seen.
func (f *Framer) LastType() byte { return f.typ }

// IsSyncPoint reports whether a client message of type typ is answered by
// exactly one ReadyForQuery: Query, Sync, FunctionCall.
func IsSyncPoint(typ byte) bool {
	return typ == MsgQuery || typ == MsgSync || typ == MsgFunctionCall
}

// SyncPoints counts, in a client stream, the messages each answered by
// exactly one ReadyForQuery (Query, Sync, FunctionCall); in a server
// stream, the ReadyForQuery messages. A session whose two counts are equal
// has no request in flight.
func (f *Framer) SyncPoints() uint64 { return f.syncPoints }

// IdleReadies counts, in a server stream, the ReadyForQuery messages that
// said TxIdle: each ends a transaction (an implicit one for a statement
// outside BEGIN), the way PgBouncer counts transactions.
func (f *Framer) IdleReadies() uint64 { return f.idleReady }

// Messages counts the message headers seen.
func (f *Framer) Messages() uint64 { return f.messages }

// ReadMessage reads one whole regular message (header included) from r into
// buf, growing it if needed, and returns its type and bytes. Bodies longer
// than maxBodyLen are refused before anything is allocated for them. It is
// for the startup phase, where the proxy must see whole messages; the
// regular phase streams with a Framer instead.
func ReadMessage(r io.Reader, buf []byte, maxBodyLen int) (typ byte, msg []byte, err error) {
	if cap(buf) < HeaderLen {
		buf = make([]byte, HeaderLen, 512)
	}
	buf = buf[:HeaderLen]
	if _, err := io.ReadFull(r, buf); err != nil {
		return 0, nil, err
	}
	typ = buf[0]
	n := int(int32(binary.BigEndian.Uint32(buf[1:])))
	if n < 4 {
		return 0, nil, protocolErrorf("invalid message length %d for message type %q", n, typ)
	}
	if maxBodyLen <= 0 || maxBodyLen > MaxProtocolBodyLen {
		maxBodyLen = MaxProtocolBodyLen
	}
	if n-4 > maxBodyLen {
		return 0, nil, tooLarge(typ, n-4, maxBodyLen)
	}
	total := HeaderLen + n - 4
	if cap(buf) < total {
		nb := make([]byte, total)
		copy(nb, buf)
		buf = nb
	}
	buf = buf[:total]
	if _, err := io.ReadFull(r, buf[HeaderLen:]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return typ, buf, nil
}

// Authentication request codes (the int32 after an 'R' header).
const (
	AuthOK                = 0
	AuthCleartextPassword = 3
	AuthMD5Password       = 5
	AuthSASL              = 10
	AuthSASLContinue      = 11
	AuthSASLFinal         = 12
)

// AuthCode returns the request code of an Authentication message (whole
// message, header included).
func AuthCode(msg []byte) (int32, error) {
	if len(msg) < HeaderLen+4 || msg[0] != MsgAuthentication {
		return 0, protocolErrorf("malformed authentication message")
	}
	return int32(binary.BigEndian.Uint32(msg[HeaderLen:])), nil
}

// SASLMechanisms returns the mechanisms an AuthenticationSASL message offers.
func SASLMechanisms(msg []byte) ([]string, error) {
	code, err := AuthCode(msg)
	if err != nil {
		return nil, err
	}
	if code != AuthSASL {
		return nil, protocolErrorf("authentication request %d is not SASL", code)
	}
	body := msg[HeaderLen+4:]
	var mechs []string
	for {
		name, rest, ok := cutString(body)
		if !ok {
			return nil, protocolErrorf("malformed SASL mechanism list")
		}
		if name == "" {
			if len(rest) != 0 {
				return nil, protocolErrorf("malformed SASL mechanism list: data after terminator")
			}
			return mechs, nil
		}
		mechs = append(mechs, name)
		body = rest
	}
}

// AppendSASLRequest appends an AuthenticationSASL message offering mechs.
func AppendSASLRequest(dst []byte, mechs []string) []byte {
	out, err := (&pgproto3.AuthenticationSASL{AuthMechanisms: mechs}).Encode(dst)
	if err != nil {
		// Only a message over 1 GiB fails to encode; a mechanism list
		// taken from a server message never is.
		panic(fmt.Sprintf("wire: encode AuthenticationSASL: %v", err))
	}
	return out
}

// ParseBackendKeyData returns the process id and secret key of a
// BackendKeyData message (whole message). The key aliases msg.
func ParseBackendKeyData(msg []byte) (pid uint32, key []byte, err error) {
	if len(msg) < HeaderLen || msg[0] != MsgBackendKeyData {
		return 0, nil, protocolErrorf("malformed BackendKeyData")
	}
	body := msg[HeaderLen:]
	if len(body) < 4+minCancelKeyLen || len(body) > 4+maxCancelKeyLen {
		return 0, nil, protocolErrorf("BackendKeyData with a %d-byte body", len(body))
	}
	return binary.BigEndian.Uint32(body), body[4:], nil
}

// AppendBackendKeyData appends a BackendKeyData message with pid and key
// to dst.
func AppendBackendKeyData(dst []byte, pid uint32, key []byte) []byte {
	dst = append(dst, MsgBackendKeyData)
	dst = binary.BigEndian.AppendUint32(dst, uint32(8+len(key)))
	dst = binary.BigEndian.AppendUint32(dst, pid)
	return append(dst, key...)
}

// ErrorFields returns the severity (non-localized when present), SQLSTATE
// and message of an ErrorResponse or NoticeResponse (whole message).
func ErrorFields(msg []byte) (severity, code, message string, err error) {
	if len(msg) < HeaderLen+1 {
		return "", "", "", protocolErrorf("malformed error message")
	}
	body := msg[HeaderLen:]
	for len(body) > 0 && body[0] != 0 {
		field := body[0]
		i := bytes.IndexByte(body[1:], 0)
		if i < 0 {
			return "", "", "", protocolErrorf("malformed error message field %q", field)
		}
		v := string(body[1 : 1+i])
		switch field {
		case 'S':
			if severity == "" {
				severity = v
			}
		case 'V':
			severity = v
		case 'C':
			code = v
		case 'M':
			message = v
		}
		body = body[2+i:]
	}
	if len(body) == 0 {
		return "", "", "", protocolErrorf("error message without terminator")
	}
	return severity, code, message, nil
}

// ParseSASLInitialResponse returns the mechanism and initial data of a
// SASLInitialResponse (whole message); ok is false when p is not one.
func ParseSASLInitialResponse(p []byte) (mech string, data []byte, ok bool) {
	if len(p) < HeaderLen || p[0] != MsgSASLInitialResponse {
		return "", nil, false
	}
	n := int(int32(binary.BigEndian.Uint32(p[1:HeaderLen])))
	if n < 4 || 1+n > len(p) {
		return "", nil, false
	}
	body := p[HeaderLen : 1+n]
	mech, rest, ok := cutString(body)
	if !ok || len(rest) < 4 {
		return "", nil, false
	}
	dataLen := int(int32(binary.BigEndian.Uint32(rest)))
	rest = rest[4:]
	if dataLen == -1 {
		return mech, nil, true
	}
	if dataLen < 0 || dataLen != len(rest) {
		return "", nil, false
	}
	return mech, rest, true
}

// ParseParameterStatus returns the name and value of a ParameterStatus
// message (whole message).
func ParseParameterStatus(msg []byte) (name, value string, err error) {
	n, v, ok := ParameterStatusBytes(msg)
	if !ok {
		return "", "", protocolErrorf("malformed ParameterStatus")
	}
	return string(n), string(v), nil
}

// ParameterStatusBytes is ParseParameterStatus without allocating: name
// and value alias msg.
func ParameterStatusBytes(msg []byte) (name, value []byte, ok bool) {
	if len(msg) < HeaderLen || msg[0] != MsgParameterStatus {
		return nil, nil, false
	}
	body := msg[HeaderLen:]
	i := bytes.IndexByte(body, 0)
	if i < 0 {
		return nil, nil, false
	}
	name, rest := body[:i], body[i+1:]
	j := bytes.IndexByte(rest, 0)
	if j < 0 || j+1 != len(rest) {
		return nil, nil, false
	}
	return name, rest[:j], true
}
