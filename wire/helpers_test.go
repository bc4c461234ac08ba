package wire_test

import (
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pharos-ha/pharos/wire"
)

// encoder is what every pgproto3 message implements.
type encoder interface {
	Encode(dst []byte) ([]byte, error)
}

// mustEncode encodes one pgproto3 message.
func mustEncode(tb testing.TB, m encoder) []byte {
	tb.Helper()
	b, err := m.Encode(nil)
	if err != nil {
		tb.Fatalf("encode %T: %v", m, err)
	}
	return b
}

// stream is a run of encoded regular messages with the offsets where each
// message starts, which is the ground truth the Framer is checked against.
type stream struct {
	data   []byte
	starts []int  // offset of each message's type byte
	types  []byte // type byte of each message
}

func buildStream(tb testing.TB, msgs ...encoder) stream {
	tb.Helper()
	var s stream
	for _, m := range msgs {
		s.starts = append(s.starts, len(s.data))
		b := mustEncode(tb, m)
		s.types = append(s.types, b[0])
		s.data = append(s.data, b...)
	}
	return s
}

// isBoundary reports whether off (bytes fed so far) ends a whole message.
func (s stream) isBoundary(off int) bool {
	if off == len(s.data) {
		return true
	}
	for _, st := range s.starts {
		if st == off {
			return true
		}
	}
	return false
}

// messagesAt is the number of complete headers within the first off bytes.
func (s stream) messagesAt(off int) uint64 {
	var n uint64
	for _, st := range s.starts {
		if st+wire.HeaderLen <= off {
			n++
		}
	}
	return n
}

// lastTypeAt is the type of the last message whose header lies within the
// first off bytes, or 0.
func (s stream) lastTypeAt(off int) byte {
	var typ byte
	for i, st := range s.starts {
		if st+wire.HeaderLen <= off {
			typ = s.types[i]
		}
	}
	return typ
}

// txStatusAt is the status byte of the last ReadyForQuery whose status byte
// lies within the first off bytes, or 0.
func (s stream) txStatusAt(off int) byte {
	var st byte
	for i, start := range s.starts {
		if s.types[i] == wire.MsgReadyForQuery && start+wire.HeaderLen < off {
			st = s.data[start+wire.HeaderLen]
		}
	}
	return st
}

// checkFramer compares the framer's state with the ground truth after off
// bytes have been fed.
func (s stream) checkFramer(tb testing.TB, f *wire.Framer, off int, how string) {
	tb.Helper()
	if got, want := f.AtBoundary(), s.isBoundary(off); got != want {
		tb.Fatalf("%s: after %d bytes AtBoundary() = %v, want %v", how, off, got, want)
	}
	if got, want := f.Messages(), s.messagesAt(off); got != want {
		tb.Fatalf("%s: after %d bytes Messages() = %d, want %d", how, off, got, want)
	}
	if got, want := f.LastType(), s.lastTypeAt(off); got != want {
		tb.Fatalf("%s: after %d bytes LastType() = %q, want %q", how, off, got, want)
	}
	if got, want := f.TxStatus(), s.txStatusAt(off); got != want {
		tb.Fatalf("%s: after %d bytes TxStatus() = %q, want %q", how, off, got, want)
	}
}

// protocolErrorCode returns the SQLSTATE of a *wire.ProtocolError in err's
// chain, or "" when there is none.
func protocolErrorCode(err error) string {
	var pe *wire.ProtocolError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// header builds a regular message header with an arbitrary length word.
func header(typ byte, length uint32) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], length)
	return b
}

// startupRaw builds an untyped startup-phase packet with a correct length
// word around code and body.
func startupRaw(code uint32, body string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(8+len(body)))
	b = binary.BigEndian.AppendUint32(b, code)
	return append(b, body...)
}

// key returns n distinct-ish bytes.
func key(n int) []byte {
	k := make([]byte, n)
	for i := range k {
		k[i] = byte(i*7 + 1)
	}
	return k
}

// errAfterReader hands out data, then fails the test on any further read:
// it proves a function stopped reading where it should have.
type errAfterReader struct {
	tb   testing.TB
	data []byte
}

func (r *errAfterReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		r.tb.Errorf("read of %d bytes past the allowed data", len(p))
		return 0, errors.New("read past allowed data")
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

var _ io.Reader = (*errAfterReader)(nil)

// appendStartup is wire.AppendStartupMessage for parameters known to be
// valid.
func appendStartup(tb testing.TB, dst []byte, version uint32, params []wire.Param) []byte {
	tb.Helper()
	out, err := wire.AppendStartupMessage(dst, version, params)
	if err != nil {
		tb.Fatalf("AppendStartupMessage(%q): %v", params, err)
	}
	return out
}

// maxStartupTotal is the largest whole startup packet PostgreSQL accepts:
// MAX_STARTUP_PACKET_LENGTH counts the packet without its length word.
const maxStartupTotal = wire.MaxStartupPacketLen + 4

// Protocol versions as pgproto3 names them, plus one from the future.
const (
	proto30 = pgproto3.ProtocolVersion30
	proto32 = pgproto3.ProtocolVersion32
	proto37 = 3<<16 | 7
)
