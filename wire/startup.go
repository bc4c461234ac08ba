package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Limits PostgreSQL itself applies to the startup phase (see
// MAX_STARTUP_PACKET_LENGTH and ProcessStartupPacket in the server).
const (
	// MaxStartupPacketLen counts the packet without its length word, as
	// the server does: a whole packet may be 4 bytes longer.
	MaxStartupPacketLen = 10000
	maxStartupPacketLen = MaxStartupPacketLen + 4
	minStartupPacketLen = 8
	// A CancelRequest carries a 4-byte process id and a secret key of 4
	// bytes (protocol 3.0) up to 256 bytes (3.2, PostgreSQL 18).
	minCancelKeyLen = 4
	maxCancelKeyLen = 256
)

// Request codes that take the place of a protocol version in the packet.
const (
	codeCancelRequest = 80877102
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
)

// ProtocolMajor3 is the only protocol major version PostgreSQL (≥ 14) speaks.
const ProtocolMajor3 = 3

// StartupKind says which of the four untyped startup-phase packets was read.
type StartupKind uint8

const (
	KindStartupMessage StartupKind = iota + 1
	KindSSLRequest
	KindGSSENCRequest
	KindCancelRequest
)

func (k StartupKind) String() string {
	switch k {
	case KindStartupMessage:
		return "StartupMessage"
	case KindSSLRequest:
		return "SSLRequest"
	case KindGSSENCRequest:
		return "GSSENCRequest"
	case KindCancelRequest:
		return "CancelRequest"
	}
	return fmt.Sprintf("StartupKind(%d)", uint8(k))
}

// Param is one name/value pair of a StartupMessage, kept in wire order.
type Param struct {
	Name, Value string
}

// StartupPacket is one parsed startup-phase packet. Raw aliases the buffer it
// was parsed from.
type StartupPacket struct {
	Kind StartupKind
	Raw  []byte // the whole packet, length word included

	// StartupMessage only. The minor version is not checked: a client that
	// asks for 3.2 (or later) is passed to the server, which negotiates.
	ProtocolVersion uint32
	Params          []Param

	// CancelRequest only. CancelKey aliases Raw.
	CancelPID uint32
	CancelKey []byte
}

// ProtocolMinor returns the requested minor protocol version.
func (p *StartupPacket) ProtocolMinor() uint16 { return uint16(p.ProtocolVersion) }

// Param returns the value of the named startup parameter. A name sent more
// than once yields its last value, which is the one the server applies.
func (p *StartupPacket) Param(name string) (string, bool) {
	for i := len(p.Params) - 1; i >= 0; i-- {
		if p.Params[i].Name == name {
			return p.Params[i].Value, true
		}
	}
	return "", false
}

// ReadStartupPacket reads exactly one startup-phase packet from r into buf
// (grown if needed) and parses it. It never reads past the packet, so no
// plaintext can be buffered ahead of a TLS handshake.
func ReadStartupPacket(r io.Reader, buf []byte) (StartupPacket, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return StartupPacket{}, err
	}
	n := int(int32(binary.BigEndian.Uint32(hdr[:])))
	if n < minStartupPacketLen || n > maxStartupPacketLen {
		return StartupPacket{}, protocolErrorf("invalid length of startup packet: %d", n)
	}
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	copy(buf, hdr[:])
	if _, err := io.ReadFull(r, buf[4:]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return StartupPacket{}, fmt.Errorf("incomplete startup packet: %w", err)
	}
	return ParseStartupPacket(buf)
}

// ParseStartupPacket parses a complete startup-phase packet, length word
// included. The result aliases pkt.
func ParseStartupPacket(pkt []byte) (StartupPacket, error) {
	if len(pkt) < minStartupPacketLen || len(pkt) > maxStartupPacketLen {
		return StartupPacket{}, protocolErrorf("invalid length of startup packet: %d", len(pkt))
	}
	if n := int(int32(binary.BigEndian.Uint32(pkt))); n != len(pkt) {
		return StartupPacket{}, protocolErrorf("startup packet length word %d does not match packet size %d", n, len(pkt))
	}
	code := binary.BigEndian.Uint32(pkt[4:8])
	body := pkt[8:]
	p := StartupPacket{Raw: pkt}
	switch code {
	case codeSSLRequest, codeGSSENCRequest:
		if len(body) != 0 {
			return StartupPacket{}, protocolErrorf("invalid length of encryption request packet: %d", len(pkt))
		}
		p.Kind = KindSSLRequest
		if code == codeGSSENCRequest {
			p.Kind = KindGSSENCRequest
		}
		return p, nil
	case codeCancelRequest:
		if len(body) < 4+minCancelKeyLen || len(body) > 4+maxCancelKeyLen {
			return StartupPacket{}, protocolErrorf("invalid length of cancel request packet: %d", len(pkt))
		}
		p.Kind = KindCancelRequest
		p.CancelPID = binary.BigEndian.Uint32(body)
		p.CancelKey = body[4:]
		return p, nil
	}
	if major := code >> 16; major != ProtocolMajor3 {
		return StartupPacket{}, &ProtocolError{
			Code:    CodeFeatureNotSupported,
			Message: fmt.Sprintf("unsupported frontend protocol %d.%d: server supports 3.0 to 3.x", major, code&0xffff),
		}
	}
	p.Kind = KindStartupMessage
	p.ProtocolVersion = code
	params, err := parseStartupParams(body)
	if err != nil {
		return StartupPacket{}, err
	}
	p.Params = params
	if user, _ := p.Param("user"); user == "" {
		return StartupPacket{}, &ProtocolError{Code: CodeInvalidAuthSpec, Message: "no PostgreSQL user name specified in startup packet"}
	}
	return p, nil
}

// parseStartupParams reads NUL-terminated name/value pairs ended by one
// extra NUL, as the server does.
func parseStartupParams(body []byte) ([]Param, error) {
	var params []Param
	for {
		if len(body) == 0 {
			return nil, protocolErrorf("invalid startup packet layout: expected terminator as last byte")
		}
		if body[0] == 0 {
			if len(body) != 1 {
				return nil, protocolErrorf("invalid startup packet layout: data after terminator")
			}
			return params, nil
		}
		name, rest, ok := cutString(body)
		if !ok {
			return nil, protocolErrorf("invalid startup packet layout: unterminated parameter name")
		}
		value, rest, ok := cutString(rest)
		if !ok {
			return nil, protocolErrorf("invalid startup packet layout: missing value for parameter %q", name)
		}
		params = append(params, Param{Name: name, Value: value})
		body = rest
	}
}

func cutString(b []byte) (s string, rest []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", nil, false
	}
	return string(b[:i]), b[i+1:], true
}

// AppendStartupMessage appends a StartupMessage with the given protocol
// version and parameters, in order, to dst. (pgproto3's StartupMessage
// holds parameters in a map and decodes only 3.0 and 3.2; the proxy must
// pass any 3.x minor and the client's parameter order through.) A NUL inside a name or value
// would become a separator on the wire and smuggle in another parameter, so
// it is refused.
func AppendStartupMessage(dst []byte, version uint32, params []Param) ([]byte, error) {
	for _, kv := range params {
		if strings.IndexByte(kv.Name, 0) >= 0 || strings.IndexByte(kv.Value, 0) >= 0 || kv.Name == "" {
			return dst, protocolErrorf("invalid startup parameter %q", kv.Name)
		}
	}
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	dst = binary.BigEndian.AppendUint32(dst, version)
	for _, kv := range params {
		dst = append(dst, kv.Name...)
		dst = append(dst, 0)
		dst = append(dst, kv.Value...)
		dst = append(dst, 0)
	}
	dst = append(dst, 0)
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start))
	return dst, nil
}

// AppendSSLRequest appends an SSLRequest to dst.
func AppendSSLRequest(dst []byte) []byte {
	out, _ := (&pgproto3.SSLRequest{}).Encode(dst) // cannot fail
	return out
}

// AppendCancelRequest appends a CancelRequest for the given key to dst. It
// does not check the key's length, so tests can build the oversized
// requests the parser must refuse.
func AppendCancelRequest(dst []byte, pid uint32, key []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(12+len(key)))
	dst = binary.BigEndian.AppendUint32(dst, codeCancelRequest)
	dst = binary.BigEndian.AppendUint32(dst, pid)
	return append(dst, key...)
}

// TLSHandshakeByte is the first byte of a TLS record carrying a handshake:
// a client using PostgreSQL 17's direct SSL negotiation starts with it
// instead of an SSLRequest.
const TLSHandshakeByte = 0x16
