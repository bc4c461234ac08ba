package wire_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pharos-ha/pharos/wire"
)

// Seed encodings shared by the fuzz targets. On-disk seeds live in
// testdata/fuzz/<FuzzName>/.

func startupSeeds(tb testing.TB) [][]byte {
	return [][]byte{
		mustEncode(tb, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion32, Parameters: map[string]string{"user": "alice", "database": "app"}}),
		appendStartup(tb, nil, proto30, []wire.Param{{"user", "postgres"}, {"application_name", "psql"}, {"client_encoding", "UTF8"}}),
		appendStartup(tb, nil, proto37, []wire.Param{{"user", "u"}, {"_pq_.x", "1"}}),
		appendStartup(tb, nil, 2<<16, []wire.Param{{"user", "u"}}),
		appendStartup(tb, nil, proto30, []wire.Param{{"database", "d"}}),
		wire.AppendSSLRequest(nil),
		mustEncode(tb, &pgproto3.GSSEncRequest{}),
		wire.AppendCancelRequest(nil, 1234, key(4)),
		mustEncode(tb, &pgproto3.CancelRequest{ProcessID: 5678, SecretKey: key(32)}),
		wire.AppendCancelRequest(nil, 1, key(256)),
		wire.AppendCancelRequest(nil, 1, key(257)),
		startupRaw(proto30, "user\x00alice\x00"),
		startupRaw(proto30, "user\x00alice\x00\x00x"),
		{0, 0, 0, 7, 0, 3, 0},
		{0, 0, 0, 8},
		nil,
	}
}

func backendSeeds(tb testing.TB) [][]byte {
	return [][]byte{
		backendStream(tb).data[:600],
		shortStream(tb).data,
		frontendStream(tb).data,
		mustEncode(tb, &pgproto3.ReadyForQuery{TxStatus: 'E'}),
		header('D', 3),
		header('D', 0x7fffffff),
		append(header('Z', 4), header('Z', 5)...),
	}
}

func FuzzParseStartupPacket(f *testing.F) {
	for _, s := range startupSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := wire.ParseStartupPacket(data)
		if err != nil {
			checkStartupError(t, err)
			return
		}
		checkStartupPacket(t, data, p, true)
	})
}

func FuzzReadStartupPacket(f *testing.F) {
	for _, s := range startupSeeds(f) {
		f.Add(append(slices.Clone(s), "trailing"...))
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		p, err := wire.ReadStartupPacket(r, nil)
		consumed := len(data) - r.Len()
		if err != nil {
			switch {
			case len(data) == 0:
				if err != io.EOF {
					t.Fatalf("empty input: err = %v, want io.EOF", err)
				}
			case errors.Is(err, io.ErrUnexpectedEOF):
				if consumed != len(data) {
					t.Fatalf("truncated input but %d of %d bytes consumed", consumed, len(data))
				}
			default:
				checkStartupError(t, err)
			}
		} else {
			if consumed != len(p.Raw) || !bytes.Equal(p.Raw, data[:consumed]) {
				t.Fatalf("consumed %d bytes, Raw is %d bytes", consumed, len(p.Raw))
			}
			checkStartupPacket(t, data[:consumed], p, false)
		}
		// Whenever a whole packet of legal size is present, reading and
		// parsing agree.
		if len(data) >= 4 {
			n := int(int32(binary.BigEndian.Uint32(data)))
			if n >= 8 && n <= maxStartupTotal && n <= len(data) {
				if consumed != n {
					t.Fatalf("length word %d but %d bytes consumed", n, consumed)
				}
				_, perr := wire.ParseStartupPacket(slices.Clone(data[:n]))
				if (perr == nil) != (err == nil) {
					t.Fatalf("ReadStartupPacket err %v, ParseStartupPacket err %v", err, perr)
				}
			} else if err == nil {
				t.Fatalf("length word %d (input %d bytes) accepted", n, len(data))
			}
		}
	})
}

func checkStartupError(t *testing.T, err error) {
	t.Helper()
	switch code := protocolErrorCode(err); code {
	case wire.CodeProtocolViolation, wire.CodeInvalidAuthSpec, wire.CodeFeatureNotSupported:
	default:
		t.Fatalf("error %v (%T) has unexpected code %q", err, err, code)
	}
}

// checkStartupPacket verifies the invariants of a successfully parsed packet:
// it is exactly the input, and re-encoding it gives the input back.
func checkStartupPacket(t *testing.T, data []byte, p wire.StartupPacket, aliased bool) {
	t.Helper()
	if !bytes.Equal(p.Raw, data) || len(data) == 0 || (aliased && &p.Raw[0] != &data[0]) {
		t.Fatalf("Raw (%d bytes) is not the input (%d bytes)", len(p.Raw), len(data))
	}
	if len(data) < 8 || len(data) > maxStartupTotal {
		t.Fatalf("accepted a %d-byte packet", len(data))
	}
	var again []byte
	switch p.Kind {
	case wire.KindStartupMessage:
		if p.ProtocolVersion>>16 != wire.ProtocolMajor3 || p.ProtocolMinor() != uint16(p.ProtocolVersion) {
			t.Fatalf("ProtocolVersion %#x", p.ProtocolVersion)
		}
		if _, ok := p.Param("user"); !ok {
			t.Fatalf("accepted a StartupMessage without user")
		}
		for _, kv := range p.Params {
			if kv.Name == "" || bytes.IndexByte([]byte(kv.Name+kv.Value), 0) >= 0 {
				t.Fatalf("bad param %q", kv)
			}
		}
		var err error
		if again, err = wire.AppendStartupMessage(nil, p.ProtocolVersion, p.Params); err != nil {
			t.Fatalf("AppendStartupMessage refuses parsed params %q: %v", p.Params, err)
		}
	case wire.KindSSLRequest:
		again = wire.AppendSSLRequest(nil)
	case wire.KindGSSENCRequest:
		again = mustEncode(t, &pgproto3.GSSEncRequest{})
	case wire.KindCancelRequest:
		if len(p.CancelKey) < 4 || len(p.CancelKey) > 256 {
			t.Fatalf("CancelKey of %d bytes", len(p.CancelKey))
		}
		again = wire.AppendCancelRequest(nil, p.CancelPID, p.CancelKey)
	default:
		t.Fatalf("Kind %v", p.Kind)
	}
	if !bytes.Equal(again, data) {
		t.Fatalf("re-encoding gives %q, input was %q", again, data)
	}
}

// framerState is what a Framer exposes.
type framerState struct {
	err        bool
	tooLarge   bool
	messages   uint64
	atBoundary bool
	txStatus   byte
	lastType   byte
	captured   string // the complete ParameterStatus messages, each followed by "|" ("<nil>" for one too large)
}

func feedChunks(limit int, chunks ...[]byte) framerState {
	var captured strings.Builder
	f := wire.Framer{MaxBodyLen: limit, Capture: wire.MsgParameterStatus, Captured: func(msg []byte) {
		if msg == nil {
			captured.WriteString("<nil>")
		}
		captured.Write(msg)
		captured.WriteByte('|')
	}}
	for _, c := range chunks {
		if err := f.Feed(c); err != nil {
			return framerState{err: true, tooLarge: errors.Is(err, wire.ErrMessageTooLarge)}
		}
	}
	return framerState{messages: f.Messages(), atBoundary: f.AtBoundary(), txStatus: f.TxStatus(), lastType: f.LastType(), captured: captured.String()}
}

// refFrame is a straightforward model of the Framer over one buffer.
func refFrame(data []byte, limit int) framerState {
	if limit <= 0 || limit > wire.MaxProtocolBodyLen {
		limit = wire.MaxProtocolBodyLen
	}
	var s framerState
	for off := 0; ; {
		if len(data)-off < wire.HeaderLen {
			s.atBoundary = off == len(data)
			return s
		}
		n := int(int32(binary.BigEndian.Uint32(data[off+1:])))
		if n < 4 {
			return framerState{err: true}
		}
		if n-4 > limit {
			return framerState{err: true, tooLarge: true}
		}
		s.messages++
		s.lastType = data[off]
		body := data[off+wire.HeaderLen:]
		if data[off] == wire.MsgReadyForQuery && n > 4 && len(body) > 0 {
			s.txStatus = body[0]
		}
		if len(body) < n-4 {
			return s // mid-body
		}
		if data[off] == wire.MsgParameterStatus {
			if n-4 > wire.MaxCaptureBody {
				s.captured += "<nil>|"
			} else {
				s.captured += string(data[off:off+wire.HeaderLen+n-4]) + "|"
			}
		}
		off += wire.HeaderLen + n - 4
	}
}

func FuzzParseParameterStatus(f *testing.F) {
	f.Add([]byte("S\x00\x00\x00\x0eTimeZone\x00UTC\x00"))
	f.Add([]byte("S\x00\x00\x00\x06\x00\x00"))
	f.Add([]byte("S\x00\x00\x00\x05a"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		name, value, err := wire.ParseParameterStatus(msg)
		n, v, ok := wire.ParameterStatusBytes(msg)
		if ok != (err == nil) || string(n) != name || string(v) != value {
			t.Fatalf("%q: ParameterStatusBytes %q %q %v, ParseParameterStatus %q %q %v", msg, n, v, ok, name, value, err)
		}
		if err != nil {
			return
		}
		again, err := (&pgproto3.ParameterStatus{Name: name, Value: value}).Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		// The length word is not checked (the Framer did that): the rest
		// must read back the same.
		if !bytes.Equal(again[wire.HeaderLen:], msg[wire.HeaderLen:]) || again[0] != msg[0] {
			t.Fatalf("%q parsed as %q=%q, which encodes as %q", msg, name, value, again)
		}
	})
}

func FuzzFramer(f *testing.F) {
	for i, s := range backendSeeds(f) {
		f.Add(s, uint16(i*37), uint16(0))
		f.Add(s, uint16(i*5+1), uint16(100))
	}
	f.Fuzz(func(t *testing.T, data []byte, split, limit uint16) {
		k := int(split) % (len(data) + 1)
		want := refFrame(data, int(limit))
		whole := feedChunks(int(limit), data)
		if whole != want {
			t.Fatalf("whole: %+v, model says %+v", whole, want)
		}
		two := feedChunks(int(limit), data[:k], data[k:])
		if two != whole {
			t.Fatalf("split at %d: %+v, whole: %+v", k, two, whole)
		}
		if len(data) <= 4096 {
			chunks := make([][]byte, len(data))
			for i := range data {
				chunks[i] = data[i : i+1]
			}
			if bb := feedChunks(int(limit), chunks...); bb != whole {
				t.Fatalf("byte by byte: %+v, whole: %+v", bb, whole)
			}
		}
		// The first chunk alone agrees with the model of its prefix.
		if first := feedChunks(int(limit), data[:k]); first != refFrame(data[:k], int(limit)) {
			t.Fatalf("prefix of %d: %+v, model says %+v", k, first, refFrame(data[:k], int(limit)))
		}
	})
}

func FuzzReadMessage(f *testing.F) {
	for _, s := range backendSeeds(f) {
		f.Add(s, uint16(0))
		f.Add(s, uint16(10))
	}
	f.Add(mustEncode(f, &pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"}}), uint16(0))
	f.Fuzz(func(t *testing.T, data []byte, limit uint16) {
		maxBody := int(limit)
		if maxBody == 0 && len(data) >= wire.HeaderLen && binary.BigEndian.Uint32(data[1:]) > 1<<16 {
			// The default limit would let a fuzzed header allocate up to
			// 1 GiB; unit tests cover it.
			maxBody = 1 << 16
		}
		r := bytes.NewReader(data)
		typ, msg, err := wire.ReadMessage(r, nil, maxBody)
		consumed := len(data) - r.Len()
		if err != nil {
			switch {
			case len(data) == 0:
				if err != io.EOF {
					t.Fatalf("empty input: err = %v, want io.EOF", err)
				}
			case errors.Is(err, io.ErrUnexpectedEOF):
				if consumed != len(data) {
					t.Fatalf("truncated, yet %d of %d bytes consumed", consumed, len(data))
				}
			case protocolErrorCode(err) == wire.CodeProtocolViolation:
				if consumed != wire.HeaderLen {
					t.Fatalf("refused from the header, yet %d bytes consumed", consumed)
				}
			default:
				t.Fatalf("unexpected error %v (%T)", err, err)
			}
			if typ != 0 || msg != nil {
				t.Fatalf("error with message %q", msg)
			}
			return
		}
		if len(msg) < wire.HeaderLen || typ != msg[0] || consumed != len(msg) || !bytes.Equal(msg, data[:consumed]) {
			t.Fatalf("ReadMessage = %q, %q with %d bytes consumed", typ, msg, consumed)
		}
		if n := binary.BigEndian.Uint32(msg[1:]); int(n) != len(msg)-1 {
			t.Fatalf("length word %d for a %d-byte message", n, len(msg))
		}
		if maxBody > 0 && len(msg)-wire.HeaderLen > maxBody {
			t.Fatalf("%d-byte body over limit %d", len(msg)-wire.HeaderLen, maxBody)
		}
		// A Framer sees exactly one message ending at a boundary.
		var fr wire.Framer
		if err := fr.Feed(msg); err != nil || fr.Messages() != 1 || !fr.AtBoundary() {
			t.Fatalf("Framer over the message: %v, %d messages, boundary %v", err, fr.Messages(), fr.AtBoundary())
		}
	})
}

func FuzzSASLMechanisms(f *testing.F) {
	f.Add(mustEncode(f, &pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"}}))
	f.Add(mustEncode(f, &pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256"}}))
	f.Add(mustEncode(f, &pgproto3.AuthenticationOk{}))
	f.Add(saslRaw(wire.AuthSASL, "SCRAM-SHA-256\x00"))
	f.Add(saslRaw(wire.AuthSASL, "SCRAM-SHA-256\x00\x00junk"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		mechs, err := wire.SASLMechanisms(msg)
		if err != nil {
			if protocolErrorCode(err) != wire.CodeProtocolViolation {
				t.Fatalf("error %v (%T) without 08P01", err, err)
			}
			return
		}
		for _, m := range mechs {
			if m == "" || bytes.IndexByte([]byte(m), 0) >= 0 {
				t.Fatalf("bad mechanism %q", m)
			}
		}
		// Re-encoding gives the same body (the length word is not checked).
		again := wire.AppendSASLRequest(nil, mechs)
		if !bytes.Equal(again[wire.HeaderLen:], msg[wire.HeaderLen:]) || msg[0] != wire.MsgAuthentication {
			t.Fatalf("re-encoded %q from %q", again, msg)
		}
		if code, err := wire.AuthCode(msg); err != nil || code != wire.AuthSASL {
			t.Fatalf("AuthCode = %d, %v", code, err)
		}
	})
}

func FuzzParseBackendKeyData(f *testing.F) {
	for _, n := range []int{0, 3, 4, 32, 256, 257} {
		f.Add(mustEncode(f, &pgproto3.BackendKeyData{ProcessID: uint32(n), SecretKey: key(n)}))
	}
	f.Add([]byte{'K'})
	f.Fuzz(func(t *testing.T, msg []byte) {
		pid, k, err := wire.ParseBackendKeyData(msg)
		wantOK := len(msg) >= wire.HeaderLen+8 && len(msg) <= wire.HeaderLen+4+256 && msg[0] == wire.MsgBackendKeyData
		if (err == nil) != wantOK {
			t.Fatalf("ParseBackendKeyData(%d bytes) err = %v", len(msg), err)
		}
		if err != nil {
			if protocolErrorCode(err) != wire.CodeProtocolViolation {
				t.Fatalf("error %v (%T) without 08P01", err, err)
			}
			return
		}
		if len(k) < 4 || len(k) > 256 || pid != binary.BigEndian.Uint32(msg[wire.HeaderLen:]) || !bytes.Equal(k, msg[wire.HeaderLen+4:]) {
			t.Fatalf("pid %d key %x from %x", pid, k, msg)
		}
		// Such a key is always accepted back in a CancelRequest.
		p, err := wire.ParseStartupPacket(wire.AppendCancelRequest(nil, pid, k))
		if err != nil || p.Kind != wire.KindCancelRequest || p.CancelPID != pid || !bytes.Equal(p.CancelKey, k) {
			t.Fatalf("CancelRequest round trip: %+v, %v", p, err)
		}
	})
}

func FuzzErrorFields(f *testing.F) {
	f.Add(wire.FatalError(wire.CodeCannotConnectNow, "no backend"))
	f.Add(mustEncode(f, &pgproto3.ErrorResponse{Severity: "FEHLER", SeverityUnlocalized: "ERROR", Code: "42P01", Message: "m", Detail: "d", Position: 3}))
	f.Add(mustEncode(f, &pgproto3.NoticeResponse{Severity: "NOTICE", Code: "00000", Message: "hi"}))
	f.Add(rawMsg('E', "VERROR\x00SERREUR\x00C22012\x00Mx\x00\x00"))
	f.Add(rawMsg('E', "SERROR\x00C42P01"))
	f.Add(rawMsg('E', "SERROR\x00"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		sev, code, message, err := wire.ErrorFields(msg)
		// pgproto3 must agree on well-formedness of the body.
		var er pgproto3.ErrorResponse
		var perr error = errors.New("too short")
		if len(msg) >= wire.HeaderLen {
			perr = er.Decode(msg[wire.HeaderLen:])
		}
		if (err == nil) != (perr == nil) {
			t.Fatalf("ErrorFields err %v, pgproto3 err %v", err, perr)
		}
		if err != nil {
			if protocolErrorCode(err) != wire.CodeProtocolViolation {
				t.Fatalf("error %v (%T) without 08P01", err, err)
			}
			if sev != "" || code != "" || message != "" {
				t.Fatalf("fields %q %q %q with error", sev, code, message)
			}
			return
		}
		if code != er.Code || message != er.Message {
			t.Fatalf("code, message = %q, %q; pgproto3 %q, %q", code, message, er.Code, er.Message)
		}
		if er.SeverityUnlocalized != "" && sev != er.SeverityUnlocalized {
			t.Fatalf("severity %q, but V is %q", sev, er.SeverityUnlocalized)
		}
		if er.SeverityUnlocalized == "" && sev != "" && !bytes.Contains(msg, []byte("S"+sev+"\x00")) {
			t.Fatalf("severity %q comes from no S field", sev)
		}
	})
}
