package wire_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pharos-ha/pharos/wire"
)

// Request codes as the protocol documentation gives them.
const (
	cancelCode = 80877102
	sslCode    = 80877103
	gssCode    = 80877104
)

func TestParseStartupPacket(t *testing.T) {
	type want struct {
		kind       wire.StartupKind
		version    uint32
		minor      uint16
		params     []wire.Param
		cancelPID  uint32
		cancelKey  []byte
		errCode    string // SQLSTATE of the expected *ProtocolError
		errContain string
	}
	bigBody := "user\x00u\x00x\x00" + strings.Repeat("v", wire.MaxStartupPacketLen) + "\x00\x00"
	tests := []struct {
		name string
		pkt  []byte
		want want
	}{
		{
			name: "StartupMessage 3.0 keeps params in wire order",
			pkt:  startupRaw(proto30, "user\x00alice\x00database\x00app\x00application_name\x00psql\x00\x00"),
			want: want{
				kind: wire.KindStartupMessage, version: proto30, minor: 0,
				params: []wire.Param{{"user", "alice"}, {"database", "app"}, {"application_name", "psql"}},
			},
		},
		{
			name: "StartupMessage 3.2",
			pkt:  startupRaw(proto32, "database\x00app\x00user\x00bob\x00\x00"),
			want: want{
				kind: wire.KindStartupMessage, version: proto32, minor: 2,
				params: []wire.Param{{"database", "app"}, {"user", "bob"}},
			},
		},
		{
			name: "StartupMessage with unknown minor 3.7 passed on",
			pkt:  startupRaw(proto37, "user\x00carol\x00_pq_.future\x00on\x00\x00"),
			want: want{
				kind: wire.KindStartupMessage, version: proto37, minor: 7,
				params: []wire.Param{{"user", "carol"}, {"_pq_.future", "on"}},
			},
		},
		{
			name: "StartupMessage with empty value",
			pkt:  startupRaw(proto30, "user\x00dave\x00options\x00\x00\x00"),
			want: want{
				kind: wire.KindStartupMessage, version: proto30,
				params: []wire.Param{{"user", "dave"}, {"options", ""}},
			},
		},
		{
			name: "missing user",
			pkt:  startupRaw(proto30, "database\x00app\x00\x00"),
			want: want{errCode: wire.CodeInvalidAuthSpec, errContain: "no PostgreSQL user name"},
		},
		{
			name: "no params at all",
			pkt:  startupRaw(proto30, "\x00"),
			want: want{errCode: wire.CodeInvalidAuthSpec},
		},
		{
			name: "protocol major 2",
			pkt:  startupRaw(2<<16, "user\x00alice\x00\x00"),
			want: want{errCode: wire.CodeFeatureNotSupported, errContain: "unsupported frontend protocol 2.0"},
		},
		{
			name: "protocol major 4",
			pkt:  startupRaw(4<<16|1, "user\x00alice\x00\x00"),
			want: want{errCode: wire.CodeFeatureNotSupported, errContain: "4.1"},
		},
		{
			name: "unknown request code 1234.5681",
			pkt:  startupRaw(80877105, ""),
			want: want{errCode: wire.CodeFeatureNotSupported},
		},
		{
			name: "SSLRequest",
			pkt:  startupRaw(sslCode, ""),
			want: want{kind: wire.KindSSLRequest},
		},
		{
			name: "GSSENCRequest",
			pkt:  startupRaw(gssCode, ""),
			want: want{kind: wire.KindGSSENCRequest},
		},
		{
			name: "SSLRequest with a body",
			pkt:  startupRaw(sslCode, "x"),
			want: want{errCode: wire.CodeProtocolViolation},
		},
		{
			name: "GSSENCRequest with a body",
			pkt:  startupRaw(gssCode, "\x00\x00\x00\x00"),
			want: want{errCode: wire.CodeProtocolViolation},
		},
		{
			name: "CancelRequest with 4-byte key (protocol 3.0)",
			pkt:  wire.AppendCancelRequest(nil, 4242, key(4)),
			want: want{kind: wire.KindCancelRequest, cancelPID: 4242, cancelKey: key(4)},
		},
		{
			name: "CancelRequest with 32-byte key (PostgreSQL 18, protocol 3.2)",
			pkt:  wire.AppendCancelRequest(nil, 7, key(32)),
			want: want{kind: wire.KindCancelRequest, cancelPID: 7, cancelKey: key(32)},
		},
		{
			name: "CancelRequest with 256-byte key (protocol maximum)",
			pkt:  wire.AppendCancelRequest(nil, 0xffffffff, key(256)),
			want: want{kind: wire.KindCancelRequest, cancelPID: 0xffffffff, cancelKey: key(256)},
		},
		{
			name: "CancelRequest with 257-byte key",
			pkt:  wire.AppendCancelRequest(nil, 1, key(257)),
			want: want{errCode: wire.CodeProtocolViolation, errContain: "cancel request"},
		},
		{
			name: "CancelRequest with 3-byte key",
			pkt:  wire.AppendCancelRequest(nil, 1, key(3)),
			want: want{errCode: wire.CodeProtocolViolation, errContain: "cancel request"},
		},
		{
			name: "CancelRequest without pid",
			pkt:  startupRaw(cancelCode, ""),
			want: want{errCode: wire.CodeProtocolViolation},
		},
		{
			name: "nil packet",
			pkt:  nil,
			want: want{errCode: wire.CodeProtocolViolation, errContain: "invalid length"},
		},
		{
			name: "length word only",
			pkt:  []byte{0, 0, 0, 4},
			want: want{errCode: wire.CodeProtocolViolation, errContain: "invalid length"},
		},
		{
			name: "seven bytes",
			pkt:  []byte{0, 0, 0, 7, 0, 3, 0},
			want: want{errCode: wire.CodeProtocolViolation, errContain: "invalid length"},
		},
		{
			name: "packet over 10000 bytes",
			pkt:  startupRaw(proto30, bigBody),
			want: want{errCode: wire.CodeProtocolViolation, errContain: "invalid length"},
		},
		{
			name: "length word larger than packet",
			pkt:  append([]byte{0, 0, 0, 30}, startupRaw(proto30, "user\x00alice\x00\x00")[4:]...),
			want: want{errCode: wire.CodeProtocolViolation, errContain: "does not match"},
		},
		{
			name: "length word smaller than packet",
			pkt:  append([]byte{0, 0, 0, 8}, startupRaw(proto30, "user\x00alice\x00\x00")[4:]...),
			want: want{errCode: wire.CodeProtocolViolation, errContain: "does not match"},
		},
		{
			name: "negative length word",
			pkt:  append([]byte{0xff, 0xff, 0xff, 0xf0}, startupRaw(proto30, "user\x00alice\x00\x00")[4:]...),
			want: want{errCode: wire.CodeProtocolViolation},
		},
		{
			name: "missing terminator",
			pkt:  startupRaw(proto30, "user\x00alice\x00"),
			want: want{errCode: wire.CodeProtocolViolation, errContain: "expected terminator"},
		},
		{
			name: "empty body",
			pkt:  startupRaw(proto30, ""),
			want: want{errCode: wire.CodeProtocolViolation, errContain: "expected terminator"},
		},
		{
			name: "data after terminator",
			pkt:  startupRaw(proto30, "user\x00alice\x00\x00x"),
			want: want{errCode: wire.CodeProtocolViolation, errContain: "data after terminator"},
		},
		{
			name: "two terminators",
			pkt:  startupRaw(proto30, "user\x00alice\x00\x00\x00"),
			want: want{errCode: wire.CodeProtocolViolation, errContain: "data after terminator"},
		},
		{
			name: "unterminated name",
			pkt:  startupRaw(proto30, "user\x00alice\x00database"),
			want: want{errCode: wire.CodeProtocolViolation, errContain: "unterminated parameter name"},
		},
		{
			name: "missing value",
			pkt:  startupRaw(proto30, "user\x00alice\x00database\x00"),
			want: want{errCode: wire.CodeProtocolViolation, errContain: `missing value for parameter "database"`},
		},
		{
			name: "unterminated value",
			pkt:  startupRaw(proto30, "user\x00alice"),
			want: want{errCode: wire.CodeProtocolViolation, errContain: "missing value"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := wire.ParseStartupPacket(tt.pkt)
			if tt.want.errCode != "" {
				if err == nil {
					t.Fatalf("ParseStartupPacket = %+v, want error with code %s", p, tt.want.errCode)
				}
				if got := protocolErrorCode(err); got != tt.want.errCode {
					t.Fatalf("error %q (%T) has code %q, want %q", err, err, got, tt.want.errCode)
				}
				if !strings.Contains(err.Error(), tt.want.errContain) {
					t.Errorf("error %q does not mention %q", err, tt.want.errContain)
				}
				if p.Kind != 0 || p.Raw != nil || p.Params != nil {
					t.Errorf("failed parse returned non-zero packet %+v", p)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseStartupPacket: %v", err)
			}
			if p.Kind != tt.want.kind {
				t.Errorf("Kind = %v, want %v", p.Kind, tt.want.kind)
			}
			if !bytes.Equal(p.Raw, tt.pkt) || &p.Raw[0] != &tt.pkt[0] {
				t.Errorf("Raw does not alias the input")
			}
			if p.ProtocolVersion != tt.want.version {
				t.Errorf("ProtocolVersion = %#x, want %#x", p.ProtocolVersion, tt.want.version)
			}
			if p.ProtocolMinor() != tt.want.minor {
				t.Errorf("ProtocolMinor() = %d, want %d", p.ProtocolMinor(), tt.want.minor)
			}
			if !slices.Equal(p.Params, tt.want.params) {
				t.Errorf("Params = %q, want %q", p.Params, tt.want.params)
			}
			if p.CancelPID != tt.want.cancelPID {
				t.Errorf("CancelPID = %d, want %d", p.CancelPID, tt.want.cancelPID)
			}
			if !bytes.Equal(p.CancelKey, tt.want.cancelKey) {
				t.Errorf("CancelKey = %x, want %x", p.CancelKey, tt.want.cancelKey)
			}
			if p.Kind == wire.KindCancelRequest && &p.CancelKey[0] != &tt.pkt[12] {
				t.Errorf("CancelKey does not alias Raw")
			}
		})
	}
}

func TestStartupPacketParam(t *testing.T) {
	p, err := wire.ParseStartupPacket(startupRaw(proto30, "user\x00alice\x00database\x00\x00\x00"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		param     string
		wantValue string
		wantOK    bool
	}{
		{name: "present", param: "user", wantValue: "alice", wantOK: true},
		{name: "present and empty", param: "database", wantValue: "", wantOK: true},
		{name: "absent", param: "options", wantOK: false},
		{name: "names are case sensitive", param: "User", wantOK: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, ok := p.Param(tt.param)
			if v != tt.wantValue || ok != tt.wantOK {
				t.Errorf("Param(%q) = %q, %v; want %q, %v", tt.param, v, ok, tt.wantValue, tt.wantOK)
			}
		})
	}
}

func TestStartupKindString(t *testing.T) {
	tests := []struct {
		name string
		kind wire.StartupKind
		want string
	}{
		{name: "startup", kind: wire.KindStartupMessage, want: "StartupMessage"},
		{name: "ssl", kind: wire.KindSSLRequest, want: "SSLRequest"},
		{name: "gssenc", kind: wire.KindGSSENCRequest, want: "GSSENCRequest"},
		{name: "cancel", kind: wire.KindCancelRequest, want: "CancelRequest"},
		{name: "zero", kind: 0, want: "StartupKind(0)"},
		{name: "unknown", kind: 99, want: "StartupKind(99)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.kind.String(); got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestReadStartupPacket(t *testing.T) {
	startup := startupRaw(proto32, "user\x00alice\x00database\x00app\x00\x00")
	tail := []byte("\x16\x03\x01tls-or-next-message")
	tests := []struct {
		name      string
		input     []byte
		wantKind  wire.StartupKind
		wantRaw   []byte
		wantErrIs error  // errors.Is target
		wantCode  string // SQLSTATE of a *ProtocolError
		wantLeft  int    // bytes the reader must still hold afterwards; -1: don't care
		wantExact bool   // error must be identical to wantErrIs, not wrapped
	}{
		{
			name:     "StartupMessage followed by more bytes",
			input:    append(slices.Clone(startup), tail...),
			wantKind: wire.KindStartupMessage, wantRaw: startup, wantLeft: len(tail),
		},
		{
			name:     "SSLRequest followed by a TLS ClientHello",
			input:    append(wire.AppendSSLRequest(nil), tail...),
			wantKind: wire.KindSSLRequest, wantRaw: wire.AppendSSLRequest(nil), wantLeft: len(tail),
		},
		{
			name:     "GSSENCRequest followed by more bytes",
			input:    append(startupRaw(gssCode, ""), tail...),
			wantKind: wire.KindGSSENCRequest, wantRaw: startupRaw(gssCode, ""), wantLeft: len(tail),
		},
		{
			name:     "CancelRequest with 32-byte key followed by more bytes",
			input:    append(wire.AppendCancelRequest(nil, 9, key(32)), tail...),
			wantKind: wire.KindCancelRequest, wantRaw: wire.AppendCancelRequest(nil, 9, key(32)), wantLeft: len(tail),
		},
		{
			name:     "exactly one packet",
			input:    startup,
			wantKind: wire.KindStartupMessage, wantRaw: startup, wantLeft: 0,
		},
		{
			name:      "EOF before anything",
			input:     nil,
			wantErrIs: io.EOF, wantExact: true, wantLeft: 0,
		},
		{
			name:      "truncated length word",
			input:     []byte{0, 0},
			wantErrIs: io.ErrUnexpectedEOF, wantLeft: 0,
		},
		{
			name:      "length word only",
			input:     startup[:4],
			wantErrIs: io.ErrUnexpectedEOF, wantLeft: 0,
		},
		{
			name:      "truncated body",
			input:     startup[:len(startup)-1],
			wantErrIs: io.ErrUnexpectedEOF, wantLeft: 0,
		},
		{
			name:     "length word 7 refused without reading the body",
			input:    append([]byte{0, 0, 0, 7}, tail...),
			wantCode: wire.CodeProtocolViolation, wantLeft: len(tail),
		},
		{
			name:     "length word 0",
			input:    []byte{0, 0, 0, 0},
			wantCode: wire.CodeProtocolViolation, wantLeft: 0,
		},
		{
			name:     "negative length word",
			input:    append([]byte{0x80, 0, 0, 0}, tail...),
			wantCode: wire.CodeProtocolViolation, wantLeft: len(tail),
		},
		{
			name:     "length word above the startup limit refused without reading the body",
			input:    append(binary.BigEndian.AppendUint32(nil, wire.MaxStartupPacketLen+5), tail...),
			wantCode: wire.CodeProtocolViolation, wantLeft: len(tail),
		},
		{
			name:     "HTTP request instead of a startup packet",
			input:    []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
			wantCode: wire.CodeProtocolViolation, wantLeft: -1,
		},
		{
			name:     "malformed packet consumed whole",
			input:    append(startupRaw(proto30, "user\x00alice\x00"), tail...),
			wantCode: wire.CodeProtocolViolation, wantLeft: len(tail),
		},
		{
			name:     "missing user",
			input:    startupRaw(proto30, "database\x00app\x00\x00"),
			wantCode: wire.CodeInvalidAuthSpec, wantLeft: 0,
		},
	}
	readers := []struct {
		name string
		wrap func(io.Reader) io.Reader
	}{
		{name: "plain", wrap: func(r io.Reader) io.Reader { return r }},
		{name: "one byte at a time", wrap: iotest.OneByteReader},
		{name: "half reads", wrap: iotest.HalfReader},
	}
	for _, tt := range tests {
		for _, rd := range readers {
			t.Run(tt.name+"/"+rd.name, func(t *testing.T) {
				br := bytes.NewReader(tt.input)
				p, err := wire.ReadStartupPacket(rd.wrap(br), nil)
				switch {
				case tt.wantErrIs != nil:
					if !errors.Is(err, tt.wantErrIs) {
						t.Fatalf("err = %v, want %v", err, tt.wantErrIs)
					}
					if tt.wantExact && err != tt.wantErrIs {
						t.Fatalf("err = %#v, want exactly %v", err, tt.wantErrIs)
					}
				case tt.wantCode != "":
					if got := protocolErrorCode(err); got != tt.wantCode {
						t.Fatalf("err = %v (code %q), want code %q", err, got, tt.wantCode)
					}
				default:
					if err != nil {
						t.Fatalf("ReadStartupPacket: %v", err)
					}
					if p.Kind != tt.wantKind {
						t.Errorf("Kind = %v, want %v", p.Kind, tt.wantKind)
					}
					if !bytes.Equal(p.Raw, tt.wantRaw) {
						t.Errorf("Raw = %q, want %q", p.Raw, tt.wantRaw)
					}
				}
				if tt.wantLeft >= 0 {
					if br.Len() != tt.wantLeft {
						t.Fatalf("reader has %d bytes left, want %d", br.Len(), tt.wantLeft)
					}
					rest, _ := io.ReadAll(br)
					if !bytes.Equal(rest, tt.input[len(tt.input)-tt.wantLeft:]) {
						t.Errorf("bytes left in reader = %q", rest)
					}
				}
			})
		}
	}
}

func TestReadStartupPacketStopsAtPacketEnd(t *testing.T) {
	// A reader that fails the test if asked for a single byte past the
	// packet: nothing may be buffered ahead of a TLS handshake.
	tests := []struct {
		name string
		pkt  []byte
	}{
		{name: "SSLRequest", pkt: wire.AppendSSLRequest(nil)},
		{name: "GSSENCRequest", pkt: startupRaw(gssCode, "")},
		{name: "StartupMessage", pkt: startupRaw(proto30, "user\x00alice\x00\x00")},
		{name: "CancelRequest", pkt: wire.AppendCancelRequest(nil, 1, key(256))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &errAfterReader{tb: t, data: slices.Clone(tt.pkt)}
			p, err := wire.ReadStartupPacket(r, nil)
			if err != nil {
				t.Fatalf("ReadStartupPacket: %v", err)
			}
			if !bytes.Equal(p.Raw, tt.pkt) {
				t.Errorf("Raw = %q, want %q", p.Raw, tt.pkt)
			}
		})
	}
}

func TestReadStartupPacketBuffer(t *testing.T) {
	pkt := startupRaw(proto30, "user\x00alice\x00\x00")
	tests := []struct {
		name      string
		buf       []byte
		wantAlias bool
	}{
		{name: "nil buffer is allocated", buf: nil},
		{name: "small buffer is replaced", buf: make([]byte, 0, 8)},
		{name: "large enough buffer is reused", buf: make([]byte, 3, 1024), wantAlias: true},
		{name: "exactly sized buffer is reused", buf: make([]byte, 0, len(pkt)), wantAlias: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := wire.ReadStartupPacket(bytes.NewReader(pkt), tt.buf)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(p.Raw, pkt) {
				t.Fatalf("Raw = %q, want %q", p.Raw, pkt)
			}
			aliased := cap(tt.buf) > 0 && &p.Raw[0] == &tt.buf[:1][0]
			if aliased != tt.wantAlias {
				t.Errorf("Raw aliases buf = %v, want %v", aliased, tt.wantAlias)
			}
		})
	}
}

func TestAppendStartupMessageRoundTrip(t *testing.T) {
	tests := []struct {
		name    string
		prefix  []byte
		version uint32
		params  []wire.Param
	}{
		{name: "3.0 user only", version: proto30, params: []wire.Param{{"user", "alice"}}},
		{
			name: "3.2 several params in order", version: proto32,
			params: []wire.Param{{"database", "app"}, {"user", "bob"}, {"application_name", "pharos"}, {"options", "-c search_path=x"}},
		},
		{name: "unknown minor 3.7", version: proto37, params: []wire.Param{{"user", "u"}, {"_pq_.x", "1"}}},
		{name: "empty values", version: proto30, params: []wire.Param{{"user", "u"}, {"database", ""}}},
		{name: "appended after existing bytes", prefix: []byte("prefix"), version: proto30, params: []wire.Param{{"user", "u"}}},
		{name: "non-ASCII value", version: proto30, params: []wire.Param{{"user", "δοκιμή"}, {"application_name", "日本"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := wire.AppendStartupMessage(slices.Clone(tt.prefix), tt.version, tt.params)
			if err != nil {
				t.Fatalf("AppendStartupMessage: %v", err)
			}
			if !bytes.Equal(out[:len(tt.prefix)], tt.prefix) {
				t.Fatalf("prefix clobbered: %q", out[:len(tt.prefix)])
			}
			pkt := out[len(tt.prefix):]
			p, err := wire.ParseStartupPacket(pkt)
			if err != nil {
				t.Fatalf("ParseStartupPacket(%q): %v", pkt, err)
			}
			if p.Kind != wire.KindStartupMessage || p.ProtocolVersion != tt.version {
				t.Errorf("Kind, ProtocolVersion = %v, %#x; want StartupMessage, %#x", p.Kind, p.ProtocolVersion, tt.version)
			}
			if !slices.Equal(p.Params, tt.params) {
				t.Errorf("Params = %q, want %q", p.Params, tt.params)
			}
			// pgx decodes what we encode.
			if tt.version == proto30 || tt.version == proto32 {
				var sm pgproto3.StartupMessage
				if err := sm.Decode(pkt[4:]); err != nil {
					t.Fatalf("pgproto3 Decode: %v", err)
				}
				for _, kv := range tt.params {
					if sm.Parameters[kv.Name] != kv.Value {
						t.Errorf("pgproto3 sees %s=%q, want %q", kv.Name, sm.Parameters[kv.Name], kv.Value)
					}
				}
			}
		})
	}
}

func TestAppendCancelRequestRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		pid  uint32
		key  []byte
	}{
		{name: "4-byte key", pid: 12345, key: key(4)},
		{name: "32-byte key", pid: 1, key: key(32)},
		{name: "256-byte key", pid: 0xfffffffe, key: key(256)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pkt := wire.AppendCancelRequest([]byte("x"), tt.pid, tt.key)[1:]
			p, err := wire.ParseStartupPacket(pkt)
			if err != nil {
				t.Fatalf("ParseStartupPacket: %v", err)
			}
			if p.Kind != wire.KindCancelRequest || p.CancelPID != tt.pid || !bytes.Equal(p.CancelKey, tt.key) {
				t.Errorf("parsed %v pid %d key %x; want CancelRequest pid %d key %x", p.Kind, p.CancelPID, p.CancelKey, tt.pid, tt.key)
			}
			want, err := (&pgproto3.CancelRequest{ProcessID: tt.pid, SecretKey: tt.key}).Encode(nil)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(pkt, want) {
				t.Errorf("AppendCancelRequest = %x, pgproto3 encodes %x", pkt, want)
			}
			var cr pgproto3.CancelRequest
			if err := cr.Decode(pkt[4:]); err != nil {
				t.Fatalf("pgproto3 Decode: %v", err)
			}
			if cr.ProcessID != tt.pid || !bytes.Equal(cr.SecretKey, tt.key) {
				t.Errorf("pgproto3 decodes pid %d key %x", cr.ProcessID, cr.SecretKey)
			}
		})
	}
}

func TestAppendSSLRequestRoundTrip(t *testing.T) {
	pkt := wire.AppendSSLRequest([]byte("ab"))
	if !bytes.Equal(pkt[:2], []byte("ab")) {
		t.Fatalf("prefix clobbered")
	}
	pkt = pkt[2:]
	if want := []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}; !bytes.Equal(pkt, want) {
		t.Fatalf("AppendSSLRequest = %x, want %x", pkt, want)
	}
	p, err := wire.ParseStartupPacket(pkt)
	if err != nil {
		t.Fatal(err)
	}
	if p.Kind != wire.KindSSLRequest {
		t.Errorf("Kind = %v, want SSLRequest", p.Kind)
	}
}

// TestParsePgxEncodings checks the parser against pgx's own encoder.
func TestParsePgxEncodings(t *testing.T) {
	params := map[string]string{
		"user":             "alice",
		"database":         "app",
		"application_name": "pgx",
		"client_encoding":  "UTF8",
	}
	tests := []struct {
		name       string
		msg        encoder
		wantKind   wire.StartupKind
		wantMinor  uint16
		wantParams map[string]string
		wantPID    uint32
		wantKey    []byte
	}{
		{
			name:     "StartupMessage 3.2",
			msg:      &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion32, Parameters: params},
			wantKind: wire.KindStartupMessage, wantMinor: 2, wantParams: params,
		},
		{
			name:     "StartupMessage 3.0",
			msg:      &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "bob"}},
			wantKind: wire.KindStartupMessage, wantMinor: 0, wantParams: map[string]string{"user": "bob"},
		},
		{
			name:     "CancelRequest with 4-byte key",
			msg:      &pgproto3.CancelRequest{ProcessID: 77, SecretKey: key(4)},
			wantKind: wire.KindCancelRequest, wantPID: 77, wantKey: key(4),
		},
		{
			name:     "CancelRequest with 32-byte key",
			msg:      &pgproto3.CancelRequest{ProcessID: 78, SecretKey: key(32)},
			wantKind: wire.KindCancelRequest, wantPID: 78, wantKey: key(32),
		},
		{
			name:     "CancelRequest with 256-byte key",
			msg:      &pgproto3.CancelRequest{ProcessID: 79, SecretKey: key(256)},
			wantKind: wire.KindCancelRequest, wantPID: 79, wantKey: key(256),
		},
		{name: "SSLRequest", msg: &pgproto3.SSLRequest{}, wantKind: wire.KindSSLRequest},
		{name: "GSSEncRequest", msg: &pgproto3.GSSEncRequest{}, wantKind: wire.KindGSSENCRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pkt := mustEncode(t, tt.msg)
			p, err := wire.ParseStartupPacket(pkt)
			if err != nil {
				t.Fatalf("ParseStartupPacket(%q): %v", pkt, err)
			}
			if p.Kind != tt.wantKind {
				t.Errorf("Kind = %v, want %v", p.Kind, tt.wantKind)
			}
			if p.Kind == wire.KindStartupMessage {
				if p.ProtocolMinor() != tt.wantMinor {
					t.Errorf("ProtocolMinor() = %d, want %d", p.ProtocolMinor(), tt.wantMinor)
				}
				got := map[string]string{}
				for _, kv := range p.Params {
					got[kv.Name] = kv.Value
				}
				if len(got) != len(p.Params) || len(got) != len(tt.wantParams) {
					t.Errorf("Params = %q, want %q", p.Params, tt.wantParams)
				}
				for k, v := range tt.wantParams {
					if got[k] != v {
						t.Errorf("param %s = %q, want %q", k, got[k], v)
					}
				}
			}
			if p.CancelPID != tt.wantPID || !bytes.Equal(p.CancelKey, tt.wantKey) {
				t.Errorf("cancel pid %d key %x, want %d %x", p.CancelPID, p.CancelKey, tt.wantPID, tt.wantKey)
			}
			// The same bytes through a reader.
			r := bytes.NewReader(append(slices.Clone(pkt), 'Q'))
			p2, err := wire.ReadStartupPacket(r, nil)
			if err != nil || !bytes.Equal(p2.Raw, pkt) || r.Len() != 1 {
				t.Errorf("ReadStartupPacket = %q, %v with %d bytes left", p2.Raw, err, r.Len())
			}
		})
	}
}
