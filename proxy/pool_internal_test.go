package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pharos-ha/pharos/wire"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (near, far net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	far, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	near, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { near.Close(); far.Close() })
	return near, far
}

// TestAlive: the liveness check tells an open, quiet server connection
// from one whose server closed it or sent something unasked (a FATAL
// before closing), and never consumes a byte.
func TestAlive(t *testing.T) {
	near, far := tcpPair(t)
	if !alive(near) {
		t.Fatal("an open, quiet connection is not alive")
	}
	if _, err := far.Write([]byte("E")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if alive(near) {
		t.Fatal("a connection with unrequested data is alive")
	}
	var b [1]byte
	if _, err := io.ReadFull(near, b[:]); err != nil || b[0] != 'E' {
		t.Fatalf("the peek consumed the byte: %q %v", b, err)
	}
	if !alive(near) {
		t.Fatal("quiet again, but not alive")
	}
	_ = far.Close()
	time.Sleep(20 * time.Millisecond)
	if alive(near) {
		t.Fatal("a connection the other side closed is alive")
	}
}

// TestWakeWithoutClosing is the release path's wake, many times over with
// data racing it: a pump blocked on a server socket is woken by an expired
// read deadline (set from another goroutine, as release does), returns
// ErrDeadlineExceeded, and once it has returned the deadline is cleared;
// the connection then reads on with no byte lost or duplicated. Run it
// under -race.
func TestWakeWithoutClosing(t *testing.T) {
	near, far := tcpPair(t)
	buffers := &sync.Pool{New: func() any { b := make([]byte, 64); return &b }}
	var got bytes.Buffer
	var want bytes.Buffer
	const rounds = 300
	for i := range rounds {
		msg := []byte{byte(i), byte(i >> 8), 'x'}
		want.Write(msg)
		done := make(chan error, 1)
		go func() {
			done <- pump(near, buffers, func(p []byte) bool { got.Write(p); return true })
		}()
		// Data before, during or after the wake: the pump reads it now or
		// the next one does.
		switch i % 3 {
		case 0:
			_, _ = far.Write(msg)
			_ = near.SetReadDeadline(time.Now())
		case 1:
			_ = near.SetReadDeadline(time.Now())
			_, _ = far.Write(msg)
		case 2:
			wrote := make(chan struct{})
			go func() { _, _ = far.Write(msg); close(wrote) }()
			_ = near.SetReadDeadline(time.Now())
			<-wrote
		}
		select {
		case err := <-done:
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("round %d: pump returned %v, want a deadline", i, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: the wake was lost", i)
		}
		_ = near.SetReadDeadline(time.Time{})
	}
	// Whatever the last rounds left in the socket arrives now.
	if got.Len() < want.Len() {
		done := make(chan error, 1)
		n := want.Len()
		go func() {
			done <- pump(near, buffers, func(p []byte) bool { got.Write(p); return got.Len() < n })
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("the bytes left after the wakes never arrived")
		}
	}
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Fatalf("bytes lost or reordered across wakes: got %d, want %d", got.Len(), want.Len())
	}
}

func TestPoolSignature(t *testing.T) {
	p := func(kv ...string) []wire.Param {
		var out []wire.Param
		for i := 0; i < len(kv); i += 2 {
			out = append(out, wire.Param{Name: kv[i], Value: kv[i+1]})
		}
		return out
	}
	base := poolSignature(196608, p("user", "u", "database", "d", "application_name", "a", "DateStyle", "ISO"))
	for _, tc := range []struct {
		name   string
		params []wire.Param
		same   bool
	}{
		{"other order", p("DateStyle", "ISO", "application_name", "a", "database", "d", "user", "u"), true},
		{"setting name in another case", p("user", "u", "database", "d", "APPLICATION_NAME", "a", "datestyle", "ISO"), true},
		{"repeated name, last wins", p("user", "u", "database", "d", "application_name", "b", "application_name", "a", "DateStyle", "ISO"), true},
		{"other value", p("user", "u", "database", "d", "application_name", "b", "DateStyle", "ISO"), false},
		{"value case matters", p("user", "u", "database", "d", "application_name", "A", "DateStyle", "ISO"), false},
		{"one more setting", p("user", "u", "database", "d", "application_name", "a", "DateStyle", "ISO", "TimeZone", "UTC"), false},
		{"one setting less", p("user", "u", "database", "d", "application_name", "a"), false},
		{"other user", p("user", "v", "database", "d", "application_name", "a", "DateStyle", "ISO"), false},
		{"options", p("user", "u", "database", "d", "application_name", "a", "DateStyle", "ISO", "options", "-c x=1"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := poolSignature(196608, tc.params) == base; got != tc.same {
				t.Fatalf("same signature: %v, want %v", got, tc.same)
			}
		})
	}
	if poolSignature(196608, p("user", "u")) != poolSignature(196608, p("user", "u", "database", "u")) {
		t.Error("the database defaults to the user, as in the server")
	}
	if poolSignature(196608, p("user", "u")) == poolSignature(196610, p("user", "u")) {
		t.Error("protocol 3.0 and 3.2 share a signature")
	}
}

// TestSettle: an idle connection that reported a new setting value (a
// configuration reload) or a notice unasked is still handed out, with the
// new value kept; one that sent an error or closed is not.
func TestSettle(t *testing.T) {
	status := func(name, value string) []byte {
		b, _ := (&pgproto3.ParameterStatus{Name: name, Value: value}).Encode(nil)
		return b
	}
	notice, _ := (&pgproto3.NoticeResponse{Severity: "NOTICE", Code: "00000", Message: "hello"}).Encode(nil)
	for _, tc := range []struct {
		name   string
		unread []byte
		close  bool
		ok     bool
	}{
		{name: "quiet", ok: true},
		{name: "a reported setting changed", unread: append(status("TimeZone", "Asia/Tokyo"), status("DateStyle", "ISO, DMY")...), ok: true},
		{name: "a notice", unread: notice, ok: true},
		{name: "a FATAL", unread: wire.FatalError(wire.CodeAdminShutdown, "terminating connection due to administrator command")},
		{name: "closed", close: true},
		{name: "a FATAL and closed", unread: wire.FatalError(wire.CodeAdminShutdown, "bye"), close: true},
		{name: "half a message", unread: status("TimeZone", "UTC")[:7]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			near, far := tcpPair(t)
			sc := &serverConn{conn: near, params: []wire.Param{{Name: "TimeZone", Value: "UTC"}}}
			if len(tc.unread) > 0 {
				if _, err := far.Write(tc.unread); err != nil {
					t.Fatal(err)
				}
			}
			if tc.close {
				_ = far.Close()
			}
			time.Sleep(20 * time.Millisecond)
			if got := sc.settle(); got != tc.ok {
				t.Fatalf("settle %v, want %v", got, tc.ok)
			}
			if tc.name == "a reported setting changed" {
				if v, _ := paramValue(sc.params, "TimeZone"); v != "Asia/Tokyo" || len(sc.params) != 2 {
					t.Fatalf("params %v", sc.params)
				}
			}
		})
	}
}

// TestServerQuery: the reset and health-check query succeeds only on an
// answer that ends idle, without an error, holding the message asked for,
// and keeps the ParameterStatus values it reports; a malformed one, a
// server that closes or stays silent fail it.
func TestServerQuery(t *testing.T) {
	enc := func(msgs ...pgproto3.BackendMessage) []byte {
		var out []byte
		for _, m := range msgs {
			var err error
			if out, err = m.Encode(out); err != nil {
				t.Fatal(err)
			}
		}
		return out
	}
	idle := &pgproto3.ReadyForQuery{TxStatus: wire.TxIdle}
	for _, tc := range []struct {
		name   string
		want   byte
		answer []byte
		close  bool
		err    string // "" for success
	}{
		{name: "reset", answer: enc(&pgproto3.ParameterStatus{Name: "TimeZone", Value: "Asia/Tokyo"},
			&pgproto3.CommandComplete{CommandTag: []byte("DISCARD ALL")}, idle)},
		{name: "empty query", want: wire.MsgEmptyQuery, answer: enc(&pgproto3.EmptyQueryResponse{}, idle)},
		{name: "asked message missing", want: wire.MsgEmptyQuery, answer: enc(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, idle),
			err: "no message"},
		{name: "error", answer: enc(&pgproto3.ErrorResponse{Severity: "ERROR", Code: "25001", Message: "in a block"}, idle), err: "25001"},
		{name: "in a transaction", answer: enc(&pgproto3.CommandComplete{CommandTag: []byte("BEGIN")},
			&pgproto3.ReadyForQuery{TxStatus: 'T'}), err: "not idle"},
		{name: "malformed ParameterStatus", answer: append([]byte("S\x00\x00\x00\x09abcde"), enc(idle)...), err: errBadParameterStatus.Error()},
		{name: "closed", close: true, err: "EOF"},
		{name: "silent", err: "timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			near, far := tcpPair(t)
			sc := &serverConn{conn: near, params: []wire.Param{{Name: "TimeZone", Value: "UTC"}}}
			go func() {
				// Read the query, then answer.
				_, _, _ = wire.ReadMessage(far, nil, 1<<10)
				if len(tc.answer) > 0 {
					_, _ = far.Write(tc.answer)
				}
				if tc.close {
					_ = far.Close()
				}
			}()
			err := sc.query(encodeQuery("DISCARD ALL"), tc.want, time.Now().Add(300*time.Millisecond))
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("query: %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("query: %v, want an error with %q", err, tc.err)
			}
			if tc.name == "reset" {
				if v, _ := paramValue(sc.params, "TimeZone"); v != "Asia/Tokyo" {
					t.Fatalf("params %v", sc.params)
				}
			}
		})
	}
}
