package wire_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pharos-ha/pharos/wire"
)

func TestReadMessage(t *testing.T) {
	authOK := mustEncode(t, &pgproto3.AuthenticationOk{})
	sasl := mustEncode(t, &pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"}})
	noData := mustEncode(t, &pgproto3.NoData{})
	bkd := mustEncode(t, &pgproto3.BackendKeyData{ProcessID: 1, SecretKey: key(32)})
	tail := []byte("next")
	tests := []struct {
		name       string
		input      []byte
		maxBodyLen int
		wantMsg    []byte
		wantErrIs  error
		wantExact  bool
		wantCode   string
		wantTooBig bool
		wantLeft   int
	}{
		{name: "AuthenticationOk", input: append(slices.Clone(authOK), tail...), wantMsg: authOK, wantLeft: len(tail)},
		{name: "AuthenticationSASL", input: append(slices.Clone(sasl), tail...), wantMsg: sasl, wantLeft: len(tail)},
		{name: "zero-length body", input: append(slices.Clone(noData), tail...), wantMsg: noData, wantLeft: len(tail)},
		{name: "BackendKeyData, exact limit", input: bkd, maxBodyLen: len(bkd) - wire.HeaderLen, wantMsg: bkd},
		{name: "EOF before anything", input: nil, wantErrIs: io.EOF, wantExact: true},
		{name: "truncated header", input: sasl[:3], wantErrIs: io.ErrUnexpectedEOF},
		{name: "header only", input: sasl[:wire.HeaderLen], wantErrIs: io.ErrUnexpectedEOF},
		{name: "truncated body", input: sasl[:len(sasl)-1], wantErrIs: io.ErrUnexpectedEOF},
		{name: "length word 3", input: append(header('R', 3), tail...), wantCode: wire.CodeProtocolViolation, wantLeft: len(tail)},
		{name: "negative length word", input: append(header('R', 0xfffffff0), tail...), wantCode: wire.CodeProtocolViolation, wantLeft: len(tail)},
		{
			name: "body one over the limit", input: bkd, maxBodyLen: len(bkd) - wire.HeaderLen - 1,
			wantCode: wire.CodeProtocolViolation, wantTooBig: true, wantLeft: len(bkd) - wire.HeaderLen,
		},
		{
			name: "0x7fffffff with default limit", input: append(header('R', 0x7fffffff), tail...),
			wantCode: wire.CodeProtocolViolation, wantTooBig: true, wantLeft: len(tail),
		},
	}
	readers := []struct {
		name string
		wrap func(io.Reader) io.Reader
	}{
		{name: "plain", wrap: func(r io.Reader) io.Reader { return r }},
		{name: "one byte at a time", wrap: iotest.OneByteReader},
	}
	for _, tt := range tests {
		for _, rd := range readers {
			t.Run(tt.name+"/"+rd.name, func(t *testing.T) {
				br := bytes.NewReader(tt.input)
				typ, msg, err := wire.ReadMessage(rd.wrap(br), nil, tt.maxBodyLen)
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
					if got := errors.Is(err, wire.ErrMessageTooLarge); got != tt.wantTooBig {
						t.Errorf("errors.Is(err, ErrMessageTooLarge) = %v, want %v", got, tt.wantTooBig)
					}
				default:
					if err != nil {
						t.Fatalf("ReadMessage: %v", err)
					}
					if typ != tt.wantMsg[0] || !bytes.Equal(msg, tt.wantMsg) {
						t.Errorf("ReadMessage = %q, %q; want %q, %q", typ, msg, tt.wantMsg[0], tt.wantMsg)
					}
				}
				if err != nil && (typ != 0 || msg != nil) {
					t.Errorf("failed ReadMessage returned %q, %q", typ, msg)
				}
				if br.Len() != tt.wantLeft {
					t.Errorf("reader has %d bytes left, want %d", br.Len(), tt.wantLeft)
				}
			})
		}
	}
}

func TestReadMessageBuffer(t *testing.T) {
	msg := mustEncode(t, &pgproto3.ErrorResponse{Severity: "FATAL", Code: "28P01", Message: "password authentication failed"})
	tests := []struct {
		name      string
		buf       []byte
		wantAlias bool
	}{
		{name: "nil buffer", buf: nil},
		{name: "buffer smaller than a header", buf: make([]byte, 0, 4)},
		{name: "buffer holding the header only", buf: make([]byte, 0, wire.HeaderLen)},
		{name: "large buffer reused", buf: make([]byte, 10, 4096), wantAlias: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			typ, got, err := wire.ReadMessage(bytes.NewReader(msg), tt.buf, 0)
			if err != nil || typ != 'E' || !bytes.Equal(got, msg) {
				t.Fatalf("ReadMessage = %q, %q, %v", typ, got, err)
			}
			aliased := cap(tt.buf) > 0 && &got[0] == &tt.buf[:1][0]
			if aliased != tt.wantAlias {
				t.Errorf("result aliases buf = %v, want %v", aliased, tt.wantAlias)
			}
		})
	}
}

// TestReadMessageRefusesOversizedBeforeReading checks that an oversized or
// invalid length is refused from the header alone: no byte past the header
// is read and nothing body-sized is allocated.
func TestReadMessageRefusesOversizedBeforeReading(t *testing.T) {
	tests := []struct {
		name       string
		hdr        []byte
		maxBodyLen int
		wantTooBig bool
	}{
		{name: "just over a 1 MiB limit", hdr: header('R', 4+1<<20+1), maxBodyLen: 1 << 20, wantTooBig: true},
		{name: "900 MiB against a 8 KiB limit", hdr: header('R', 900<<20), maxBodyLen: 8 << 10, wantTooBig: true},
		{name: "0x7fffffff against the default limit", hdr: header('E', 0x7fffffff), wantTooBig: true},
		{name: "length word 2", hdr: header('E', 2)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, _, err := wire.ReadMessage(&errAfterReader{tb: t, data: slices.Clone(tt.hdr)}, nil, tt.maxBodyLen)
			runtime.ReadMemStats(&after)
			if protocolErrorCode(err) != wire.CodeProtocolViolation {
				t.Fatalf("err = %v, want *ProtocolError 08P01", err)
			}
			if errors.Is(err, wire.ErrMessageTooLarge) != tt.wantTooBig {
				t.Errorf("errors.Is(err, ErrMessageTooLarge) = %v, want %v", !tt.wantTooBig, tt.wantTooBig)
			}
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
				t.Errorf("ReadMessage allocated %d bytes for a refused message", grew)
			}
		})
	}
}

func TestAuthCode(t *testing.T) {
	tests := []struct {
		name     string
		msg      []byte
		want     int32
		wantFail bool
	}{
		{name: "AuthenticationOk", msg: mustEncode(t, &pgproto3.AuthenticationOk{}), want: wire.AuthOK},
		{name: "cleartext password", msg: mustEncode(t, &pgproto3.AuthenticationCleartextPassword{}), want: wire.AuthCleartextPassword},
		{name: "MD5 password", msg: mustEncode(t, &pgproto3.AuthenticationMD5Password{Salt: [4]byte{1, 2, 3, 4}}), want: wire.AuthMD5Password},
		{name: "SASL", msg: mustEncode(t, &pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256"}}), want: wire.AuthSASL},
		{name: "SASL continue", msg: mustEncode(t, &pgproto3.AuthenticationSASLContinue{Data: []byte("r=abc,s=xyz,i=4096")}), want: wire.AuthSASLContinue},
		{name: "SASL final", msg: mustEncode(t, &pgproto3.AuthenticationSASLFinal{Data: []byte("v=xyz")}), want: wire.AuthSASLFinal},
		{name: "GSS (code 7) passed through", msg: mustEncode(t, &pgproto3.AuthenticationGSS{}), want: 7},
		{name: "negative code", msg: append(header('R', 8), 0xff, 0xff, 0xff, 0xff), want: -1},
		{name: "nil", msg: nil, wantFail: true},
		{name: "header only", msg: header('R', 4), wantFail: true},
		{name: "three code bytes", msg: append(header('R', 7), 0, 0, 0), wantFail: true},
		{name: "not an Authentication message", msg: mustEncode(t, &pgproto3.BackendKeyData{ProcessID: 1, SecretKey: key(4)}), wantFail: true},
		{name: "ErrorResponse", msg: wire.FatalError(wire.CodeInvalidAuthSpec, "no"), wantFail: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := wire.AuthCode(tt.msg)
			if tt.wantFail {
				if err == nil || protocolErrorCode(err) != wire.CodeProtocolViolation {
					t.Fatalf("AuthCode = %d, %v; want 08P01 error", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("AuthCode = %d, %v; want %d", got, err, tt.want)
			}
		})
	}
}

// rawMsg builds a regular message with a correct length word.
func rawMsg(typ byte, body string) []byte {
	return append(header(typ, uint32(4+len(body))), body...)
}

// saslRaw builds an 'R' message with the given auth code and raw body.
func saslRaw(code uint32, body string) []byte {
	b := header('R', uint32(8+len(body)))
	b = binary.BigEndian.AppendUint32(b, code)
	return append(b, body...)
}

func TestSASLMechanisms(t *testing.T) {
	tests := []struct {
		name        string
		msg         []byte
		want        []string
		wantContain string // non-empty: an error mentioning this is expected
	}{
		{
			name: "SCRAM-SHA-256-PLUS and SCRAM-SHA-256 from pgproto3",
			msg:  mustEncode(t, &pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"}}),
			want: []string{"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"},
		},
		{
			name: "SCRAM-SHA-256 only from pgproto3",
			msg:  mustEncode(t, &pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256"}}),
			want: []string{"SCRAM-SHA-256"},
		},
		{name: "empty list", msg: saslRaw(wire.AuthSASL, "\x00"), want: nil},
		{name: "not SASL", msg: mustEncode(t, &pgproto3.AuthenticationOk{}), wantContain: "not SASL"},
		{name: "SASL continue", msg: mustEncode(t, &pgproto3.AuthenticationSASLContinue{Data: []byte("x")}), wantContain: "not SASL"},
		{name: "no list at all", msg: saslRaw(wire.AuthSASL, ""), wantContain: "malformed SASL mechanism list"},
		{name: "missing list terminator", msg: saslRaw(wire.AuthSASL, "SCRAM-SHA-256\x00"), wantContain: "malformed SASL mechanism list"},
		{name: "unterminated name", msg: saslRaw(wire.AuthSASL, "SCRAM-SHA-256"), wantContain: "malformed SASL mechanism list"},
		{name: "data after terminator", msg: saslRaw(wire.AuthSASL, "SCRAM-SHA-256\x00\x00junk"), wantContain: "data after terminator"},
		{name: "two terminators", msg: saslRaw(wire.AuthSASL, "SCRAM-SHA-256\x00\x00\x00"), wantContain: "data after terminator"},
		{name: "too short", msg: header('R', 4), wantContain: "malformed authentication"},
		{name: "wrong type", msg: append([]byte{'E'}, saslRaw(wire.AuthSASL, "SCRAM-SHA-256\x00\x00")[1:]...), wantContain: "malformed authentication"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := wire.SASLMechanisms(tt.msg)
			if tt.wantContain != "" {
				if err == nil {
					t.Fatalf("SASLMechanisms = %q, want error", got)
				}
				if protocolErrorCode(err) != wire.CodeProtocolViolation || !strings.Contains(err.Error(), tt.wantContain) {
					t.Errorf("err = %v, want 08P01 mentioning %q", err, tt.wantContain)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("SASLMechanisms = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestAppendSASLRequest(t *testing.T) {
	tests := []struct {
		name   string
		prefix []byte
		mechs  []string
	}{
		{name: "PLUS and plain", mechs: []string{"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"}},
		{name: "plain only", mechs: []string{"SCRAM-SHA-256"}},
		{name: "after other messages", prefix: mustEncode(t, &pgproto3.ParameterStatus{Name: "a", Value: "b"}), mechs: []string{"SCRAM-SHA-256"}},
		{name: "no mechanisms", mechs: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := wire.AppendSASLRequest(slices.Clone(tt.prefix), tt.mechs)
			if !bytes.Equal(out[:len(tt.prefix)], tt.prefix) {
				t.Fatalf("prefix clobbered")
			}
			msg := out[len(tt.prefix):]
			want := mustEncode(t, &pgproto3.AuthenticationSASL{AuthMechanisms: tt.mechs})
			if !bytes.Equal(msg, want) {
				t.Errorf("AppendSASLRequest = %q, pgproto3 encodes %q", msg, want)
			}
			got, err := wire.SASLMechanisms(msg)
			if err != nil || !slices.Equal(got, tt.mechs) {
				t.Errorf("SASLMechanisms = %q, %v; want %q", got, err, tt.mechs)
			}
			typ, read, err := wire.ReadMessage(bytes.NewReader(msg), nil, 0)
			if err != nil || typ != wire.MsgAuthentication || !bytes.Equal(read, msg) {
				t.Errorf("ReadMessage = %q, %q, %v", typ, read, err)
			}
			if tt.mechs != nil {
				var dec pgproto3.AuthenticationSASL
				if err := dec.Decode(msg[wire.HeaderLen:]); err != nil || !slices.Equal(dec.AuthMechanisms, tt.mechs) {
					t.Errorf("pgproto3 decodes %q, %v", dec.AuthMechanisms, err)
				}
			}
		})
	}
}

func TestParseBackendKeyData(t *testing.T) {
	tests := []struct {
		name     string
		msg      []byte
		wantPID  uint32
		wantKey  []byte
		wantFail bool
	}{
		{name: "4-byte key (protocol 3.0)", msg: mustEncode(t, &pgproto3.BackendKeyData{ProcessID: 4242, SecretKey: key(4)}), wantPID: 4242, wantKey: key(4)},
		{name: "32-byte key (PostgreSQL 18, protocol 3.2)", msg: mustEncode(t, &pgproto3.BackendKeyData{ProcessID: 99, SecretKey: key(32)}), wantPID: 99, wantKey: key(32)},
		{name: "256-byte key", msg: mustEncode(t, &pgproto3.BackendKeyData{ProcessID: 1, SecretKey: key(256)}), wantPID: 1, wantKey: key(256)},
		{name: "257-byte key", msg: mustEncode(t, &pgproto3.BackendKeyData{ProcessID: 1, SecretKey: key(257)}), wantFail: true},
		{name: "3-byte key", msg: mustEncode(t, &pgproto3.BackendKeyData{ProcessID: 1, SecretKey: key(3)}), wantFail: true},
		{name: "no key", msg: mustEncode(t, &pgproto3.BackendKeyData{ProcessID: 1}), wantFail: true},
		{name: "header only", msg: header('K', 4), wantFail: true},
		{name: "truncated header", msg: []byte{'K', 0, 0}, wantFail: true},
		{name: "nil", msg: nil, wantFail: true},
		{name: "wrong type", msg: append([]byte{'k'}, mustEncode(t, &pgproto3.BackendKeyData{ProcessID: 1, SecretKey: key(4)})[1:]...), wantFail: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pid, k, err := wire.ParseBackendKeyData(tt.msg)
			if tt.wantFail {
				if err == nil || protocolErrorCode(err) != wire.CodeProtocolViolation {
					t.Fatalf("ParseBackendKeyData = %d, %x, %v; want 08P01 error", pid, k, err)
				}
				return
			}
			if err != nil || pid != tt.wantPID || !bytes.Equal(k, tt.wantKey) {
				t.Fatalf("ParseBackendKeyData = %d, %x, %v; want %d, %x", pid, k, err, tt.wantPID, tt.wantKey)
			}
			if &k[0] != &tt.msg[wire.HeaderLen+4] {
				t.Errorf("key does not alias msg")
			}
			// The key forwarded in a CancelRequest reaches the same backend.
			p, err := wire.ParseStartupPacket(wire.AppendCancelRequest(nil, pid, k))
			if err != nil || p.CancelPID != pid || !bytes.Equal(p.CancelKey, k) {
				t.Errorf("CancelRequest round trip = %d, %x, %v", p.CancelPID, p.CancelKey, err)
			}
		})
	}
}

func TestErrorFields(t *testing.T) {
	tests := []struct {
		name         string
		msg          []byte
		wantSeverity string
		wantCode     string
		wantMessage  string
		wantFail     bool
	}{
		{
			name: "ErrorResponse with localized and unlocalized severity prefers V",
			msg: mustEncode(t, &pgproto3.ErrorResponse{
				Severity: "FEHLER", SeverityUnlocalized: "ERROR", Code: "42P01",
				Message: `Relation »nope« existiert nicht`, Position: 15, Detail: "d", Hint: "h",
			}),
			wantSeverity: "ERROR", wantCode: "42P01", wantMessage: `Relation »nope« existiert nicht`,
		},
		{
			name:         "ErrorResponse without V (pre-9.6 server) falls back to S",
			msg:          mustEncode(t, &pgproto3.ErrorResponse{Severity: "FATAL", Code: "28P01", Message: "password authentication failed for user \"x\""}),
			wantSeverity: "FATAL", wantCode: "28P01", wantMessage: "password authentication failed for user \"x\"",
		},
		{
			name:         "V before S still wins",
			msg:          rawMsg('E', "VERROR\x00SERREUR\x00C22012\x00Mdivision par zéro\x00\x00"),
			wantSeverity: "ERROR", wantCode: "22012", wantMessage: "division par zéro",
		},
		{
			name:         "NoticeResponse",
			msg:          mustEncode(t, &pgproto3.NoticeResponse{Severity: "AVIS", SeverityUnlocalized: "NOTICE", Code: "00000", Message: "hello"}),
			wantSeverity: "NOTICE", wantCode: "00000", wantMessage: "hello",
		},
		{
			name:         "all fields from PostgreSQL",
			msg:          mustEncode(t, &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "23505", Message: "duplicate key", Detail: "Key (id)=(1) already exists.", SchemaName: "public", TableName: "t", ConstraintName: "t_pkey", File: "nbtinsert.c", Line: 666, Routine: "_bt_check_unique"}),
			wantSeverity: "ERROR", wantCode: "23505", wantMessage: "duplicate key",
		},
		{
			name:         "unknown field types are skipped",
			msg:          rawMsg('E', "Zzz\x00CXX000\x00\x00"),
			wantSeverity: "", wantCode: "XX000", wantMessage: "",
		},
		{name: "no fields", msg: append(header('E', 5), 0), wantSeverity: "", wantCode: "", wantMessage: ""},
		{name: "bytes after terminator are ignored", msg: append(header('E', 9), "Mx\x00\x00junk"...), wantMessage: "x"},
		{name: "nil", msg: nil, wantFail: true},
		{name: "header only", msg: header('E', 4), wantFail: true},
		{name: "missing terminator", msg: rawMsg('E', "SERROR\x00C42P01\x00"), wantFail: true},
		{name: "unterminated field", msg: rawMsg('E', "SERROR\x00C42P01"), wantFail: true},
		{name: "field type without value", msg: append(header('E', 5), 'S'), wantFail: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sev, code, msg, err := wire.ErrorFields(tt.msg)
			if tt.wantFail {
				if err == nil || protocolErrorCode(err) != wire.CodeProtocolViolation {
					t.Fatalf("ErrorFields = %q, %q, %q, %v; want 08P01 error", sev, code, msg, err)
				}
				if sev != "" || code != "" || msg != "" {
					t.Errorf("failed ErrorFields returned %q, %q, %q", sev, code, msg)
				}
				return
			}
			if err != nil || sev != tt.wantSeverity || code != tt.wantCode || msg != tt.wantMessage {
				t.Fatalf("ErrorFields = %q, %q, %q, %v; want %q, %q, %q",
					sev, code, msg, err, tt.wantSeverity, tt.wantCode, tt.wantMessage)
			}
		})
	}
}

func TestAppendErrorDecodesWithPgproto3(t *testing.T) {
	tests := []struct {
		name     string
		build    func() []byte
		prefix   int
		severity string
		code     string
		message  string
	}{
		{
			name:     "FatalError cannot connect now",
			build:    func() []byte { return wire.FatalError(wire.CodeCannotConnectNow, "no backend available") },
			severity: "FATAL", code: wire.CodeCannotConnectNow, message: "no backend available",
		},
		{
			name:     "FatalError too many connections",
			build:    func() []byte { return wire.FatalError(wire.CodeTooManyConnections, "sorry, too many clients already") },
			severity: "FATAL", code: wire.CodeTooManyConnections, message: "sorry, too many clients already",
		},
		{
			name: "AppendError ERROR after a ReadyForQuery",
			build: func() []byte {
				return wire.AppendError(mustEncode(t, &pgproto3.ReadyForQuery{TxStatus: 'I'}), "ERROR", wire.CodeProtocolViolation, "bad message")
			},
			prefix:   6,
			severity: "ERROR", code: wire.CodeProtocolViolation, message: "bad message",
		},
		{
			name: "AppendError with non-ASCII message",
			build: func() []byte {
				return wire.AppendError(nil, "FATAL", wire.CodeAdminShutdown, "terminating connection: «fenced»")
			},
			severity: "FATAL", code: wire.CodeAdminShutdown, message: "terminating connection: «fenced»",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := tt.build()
			msg := out[tt.prefix:]
			if msg[0] != wire.MsgErrorResponse {
				t.Fatalf("type %q, want 'E'", msg[0])
			}
			if n := binary.BigEndian.Uint32(msg[1:]); int(n) != len(msg)-1 {
				t.Fatalf("length word %d, message is %d bytes", n, len(msg))
			}
			var er pgproto3.ErrorResponse
			if err := er.Decode(msg[wire.HeaderLen:]); err != nil {
				t.Fatalf("pgproto3 Decode: %v", err)
			}
			if er.Severity != tt.severity || er.SeverityUnlocalized != tt.severity || er.Code != tt.code || er.Message != tt.message {
				t.Errorf("decoded S=%q V=%q C=%q M=%q; want %q, %q, %q", er.Severity, er.SeverityUnlocalized, er.Code, er.Message, tt.severity, tt.code, tt.message)
			}
			sev, code, m, err := wire.ErrorFields(msg)
			if err != nil || sev != tt.severity || code != tt.code || m != tt.message {
				t.Errorf("ErrorFields = %q, %q, %q, %v", sev, code, m, err)
			}
			var f wire.Framer
			if err := f.Feed(out); err != nil || !f.AtBoundary() {
				t.Errorf("Framer over the output: %v, AtBoundary %v", err, f.AtBoundary())
			}
		})
	}
}

func TestProtocolError(t *testing.T) {
	inner := errors.New("sentinel")
	tests := []struct {
		name      string
		err       *wire.ProtocolError
		wantMsg   string
		wantInner error
	}{
		{name: "with sentinel", err: &wire.ProtocolError{Code: "08P01", Message: "bad", Err: inner}, wantMsg: "bad", wantInner: inner},
		{name: "without sentinel", err: &wire.ProtocolError{Code: "28000", Message: "no user"}, wantMsg: "no user"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.err.Error() != tt.wantMsg {
				t.Errorf("Error() = %q, want %q", tt.err.Error(), tt.wantMsg)
			}
			if tt.err.Unwrap() != tt.wantInner {
				t.Errorf("Unwrap() = %v, want %v", tt.err.Unwrap(), tt.wantInner)
			}
		})
	}
}
