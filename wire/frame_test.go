package wire_test

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pharos-ha/pharos/wire"
)

// backendStream is a realistic backend → client stream: an extended-query
// round trip, an error in a transaction, notices, parameter status and all
// three ReadyForQuery statuses.
func backendStream(tb testing.TB) stream {
	tb.Helper()
	big := bytes.Repeat([]byte("0123456789abcdef"), 300) // 4800-byte value
	return buildStream(tb,
		&pgproto3.ParameterStatus{Name: "server_version", Value: "18.1"},
		&pgproto3.BackendKeyData{ProcessID: 4321, SecretKey: key(32)},
		&pgproto3.ReadyForQuery{TxStatus: 'I'},
		&pgproto3.ParseComplete{},
		&pgproto3.BindComplete{},
		&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{
			{Name: []byte("id"), TableOID: 16384, TableAttributeNumber: 1, DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1},
			{Name: []byte("payload"), TableOID: 16384, TableAttributeNumber: 2, DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1},
		}},
		&pgproto3.DataRow{Values: [][]byte{[]byte("1"), []byte("one")}},
		&pgproto3.DataRow{Values: [][]byte{[]byte("2"), nil}},
		&pgproto3.DataRow{Values: [][]byte{[]byte("3"), big}},
		&pgproto3.DataRow{Values: [][]byte{}},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 4")},
		&pgproto3.ReadyForQuery{TxStatus: 'T'},
		&pgproto3.NoticeResponse{Severity: "WARNING", SeverityUnlocalized: "WARNING", Code: "01000", Message: "careful"},
		&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "42P01", Message: `relation "nope" does not exist`, Position: 15},
		&pgproto3.ReadyForQuery{TxStatus: 'E'},
		&pgproto3.EmptyQueryResponse{},
		&pgproto3.CommandComplete{CommandTag: []byte("ROLLBACK")},
		&pgproto3.ReadyForQuery{TxStatus: 'I'},
		&pgproto3.NoData{},
		&pgproto3.CommandComplete{CommandTag: []byte("BEGIN")},
		&pgproto3.ReadyForQuery{TxStatus: 'T'},
	)
}

// shortStream is small enough to try every one- and two-cut split.
func shortStream(tb testing.TB) stream {
	tb.Helper()
	return buildStream(tb,
		&pgproto3.ParseComplete{},
		&pgproto3.DataRow{Values: [][]byte{[]byte("x")}},
		&pgproto3.ReadyForQuery{TxStatus: 'T'},
		&pgproto3.BindComplete{},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
		&pgproto3.ReadyForQuery{TxStatus: 'E'},
		&pgproto3.ReadyForQuery{TxStatus: 'I'},
	)
}

// frontendStream is a client → server extended query pipeline ending in
// Sync and Terminate, both of which have no body.
func frontendStream(tb testing.TB) stream {
	tb.Helper()
	return buildStream(tb,
		&pgproto3.Query{String: "SELECT 1"},
		&pgproto3.Parse{Name: "s1", Query: "SELECT $1::int", ParameterOIDs: []uint32{23}},
		&pgproto3.Bind{PreparedStatement: "s1", ParameterFormatCodes: []int16{0}, Parameters: [][]byte{[]byte("42")}},
		&pgproto3.Describe{ObjectType: 'P'},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
		&pgproto3.Flush{},
		&pgproto3.Sync{},
		&pgproto3.Terminate{},
	)
}

func TestFramerStreams(t *testing.T) {
	tests := []struct {
		name       string
		s          stream
		wantMsgs   int
		wantStatus byte
	}{
		{name: "backend", s: backendStream(t), wantMsgs: 21, wantStatus: 'T'},
		{name: "short backend", s: shortStream(t), wantMsgs: 7, wantStatus: 'I'},
		{name: "frontend", s: frontendStream(t), wantMsgs: 9, wantStatus: 0},
	}
	for _, tt := range tests {
		s := tt.s
		check := func(t *testing.T, f *wire.Framer) {
			t.Helper()
			if f.Messages() != uint64(tt.wantMsgs) || !f.AtBoundary() || f.TxStatus() != tt.wantStatus {
				t.Fatalf("Messages, AtBoundary, TxStatus = %d, %v, %q; want %d, true, %q",
					f.Messages(), f.AtBoundary(), f.TxStatus(), tt.wantMsgs, tt.wantStatus)
			}
		}
		t.Run(tt.name+"/whole", func(t *testing.T) {
			var f wire.Framer
			if err := f.Feed(s.data); err != nil {
				t.Fatal(err)
			}
			check(t, &f)
		})
		t.Run(tt.name+"/byte by byte", func(t *testing.T) {
			var f wire.Framer
			s.checkFramer(t, &f, 0, "initial")
			for i := range s.data {
				if err := f.Feed(s.data[i : i+1]); err != nil {
					t.Fatalf("Feed byte %d: %v", i, err)
				}
				s.checkFramer(t, &f, i+1, "byte by byte")
			}
			check(t, &f)
		})
		t.Run(tt.name+"/empty chunks in between", func(t *testing.T) {
			var f wire.Framer
			for i := range s.data {
				if err := f.Feed(nil); err != nil {
					t.Fatal(err)
				}
				if err := f.Feed(s.data[i : i+1]); err != nil {
					t.Fatal(err)
				}
				if err := f.Feed([]byte{}); err != nil {
					t.Fatal(err)
				}
			}
			check(t, &f)
		})
		t.Run(tt.name+"/random chunks", func(t *testing.T) {
			rng := rand.New(rand.NewPCG(20240601, 42))
			for round := range 50 {
				var f wire.Framer
				maxChunk := 1 + rng.IntN(64)
				if round%5 == 0 {
					maxChunk = 1 + rng.IntN(8000)
				}
				for off := 0; off < len(s.data); {
					n := min(1+rng.IntN(maxChunk), len(s.data)-off)
					if err := f.Feed(s.data[off : off+n]); err != nil {
						t.Fatalf("round %d: Feed [%d:%d]: %v", round, off, off+n, err)
					}
					off += n
					s.checkFramer(t, &f, off, "random chunks")
				}
				check(t, &f)
			}
		})
		t.Run(tt.name+"/chunks split at each boundary", func(t *testing.T) {
			var f wire.Framer
			bounds := append(append([]int(nil), s.starts[1:]...), len(s.data))
			prev := 0
			for _, b := range bounds {
				if err := f.Feed(s.data[prev:b]); err != nil {
					t.Fatal(err)
				}
				s.checkFramer(t, &f, b, "message by message")
				prev = b
			}
			check(t, &f)
		})
	}
}

func TestFramerEverySplit(t *testing.T) {
	s := shortStream(t)
	n := len(s.data)
	if n > 200 {
		t.Fatalf("short stream is %d bytes; keep it short", n)
	}
	for i := 0; i <= n; i++ {
		var f wire.Framer
		if err := f.Feed(s.data[:i]); err != nil {
			t.Fatalf("split %d: first Feed: %v", i, err)
		}
		s.checkFramer(t, &f, i, "first of two chunks")
		if err := f.Feed(s.data[i:]); err != nil {
			t.Fatalf("split %d: second Feed: %v", i, err)
		}
		s.checkFramer(t, &f, n, "two chunks")
	}
	// Every pair of cuts, three chunks.
	for i := 0; i <= n; i++ {
		for j := i; j <= n; j++ {
			var f wire.Framer
			for _, c := range [][2]int{{0, i}, {i, j}, {j, n}} {
				if err := f.Feed(s.data[c[0]:c[1]]); err != nil {
					t.Fatalf("cuts %d,%d: Feed %v: %v", i, j, c, err)
				}
				s.checkFramer(t, &f, c[1], "three chunks")
			}
		}
	}
}

func TestFramerConcatenatedStreams(t *testing.T) {
	// The same stream twice in a row: state carries over correctly.
	s := backendStream(t)
	twice := buildStream(t)
	for range 2 {
		base := len(twice.data)
		for _, st := range s.starts {
			twice.starts = append(twice.starts, base+st)
		}
		twice.types = append(twice.types, s.types...)
		twice.data = append(twice.data, s.data...)
	}
	var f wire.Framer
	rng := rand.New(rand.NewPCG(7, 7))
	for off := 0; off < len(twice.data); {
		n := min(1+rng.IntN(300), len(twice.data)-off)
		if err := f.Feed(twice.data[off : off+n]); err != nil {
			t.Fatal(err)
		}
		off += n
		twice.checkFramer(t, &f, off, "concatenated")
	}
}

func TestFramerTxStatusSplitAtStatusByte(t *testing.T) {
	// ReadyForQuery split right after its header, the status byte alone in
	// the next chunk: the status must only change once that byte arrives.
	tests := []struct {
		name   string
		before byte
		status byte
	}{
		{name: "idle to in transaction", before: 'I', status: 'T'},
		{name: "in transaction to failed", before: 'T', status: 'E'},
		{name: "failed to idle", before: 'E', status: 'I'},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var f wire.Framer
			first := mustEncode(t, &pgproto3.ReadyForQuery{TxStatus: tt.before})
			rfq := mustEncode(t, &pgproto3.ReadyForQuery{TxStatus: tt.status})
			if err := f.Feed(append(first, rfq[:wire.HeaderLen]...)); err != nil {
				t.Fatal(err)
			}
			if f.TxStatus() != tt.before || f.AtBoundary() || f.Messages() != 2 {
				t.Fatalf("after header: TxStatus %q AtBoundary %v Messages %d", f.TxStatus(), f.AtBoundary(), f.Messages())
			}
			if err := f.Feed(rfq[wire.HeaderLen:]); err != nil {
				t.Fatal(err)
			}
			if f.TxStatus() != tt.status || !f.AtBoundary() {
				t.Fatalf("after status byte: TxStatus %q AtBoundary %v", f.TxStatus(), f.AtBoundary())
			}
		})
	}
}

func TestFramerZeroValue(t *testing.T) {
	var f wire.Framer
	if !f.AtBoundary() || f.Messages() != 0 || f.TxStatus() != 0 {
		t.Fatalf("zero Framer: AtBoundary %v Messages %d TxStatus %q", f.AtBoundary(), f.Messages(), f.TxStatus())
	}
	if err := f.Feed(nil); err != nil || !f.AtBoundary() {
		t.Fatalf("Feed(nil) = %v, AtBoundary %v", err, f.AtBoundary())
	}
}

func TestFramerErrors(t *testing.T) {
	valid := mustEncode(t, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")})
	tests := []struct {
		name        string
		maxBodyLen  int
		data        []byte
		wantTooBig  bool
		wantContain string
	}{
		{name: "length 0", data: header('D', 0), wantContain: "invalid message length 0"},
		{name: "length 3", data: header('D', 3), wantContain: "invalid message length 3"},
		{name: "length -1", data: header('Z', 0xffffffff), wantContain: "invalid message length -1"},
		{name: "length math.MinInt32", data: header('Z', 0x80000000), wantContain: "invalid message length"},
		{name: "length 3 after a valid message", data: append(slices.Clone(valid), header('C', 3)...), wantContain: "invalid message length 3"},
		{
			name: "body over MaxBodyLen", maxBodyLen: 100,
			data: append(header('D', 4+101), make([]byte, 101)...), wantTooBig: true, wantContain: "over the limit of 100",
		},
		{
			name: "body over MaxBodyLen after valid messages", maxBodyLen: 100,
			data: append(slices.Clone(valid), header('d', 4+1000)...), wantTooBig: true,
		},
		{name: "length 0x7fffffff with default limit", data: header('D', 0x7fffffff), wantTooBig: true},
		{name: "one past MaxProtocolBodyLen with default limit", data: header('D', wire.MaxProtocolBodyLen+5), wantTooBig: true},
		{
			name: "MaxBodyLen above the protocol limit is clamped", maxBodyLen: math.MaxInt,
			data: header('D', 0x7fffffff), wantTooBig: true, wantContain: "over the limit of 1073741818",
		},
		{name: "negative MaxBodyLen means the protocol limit", maxBodyLen: -1, data: header('D', 0x7fffffff), wantTooBig: true},
	}
	feeds := []struct {
		name string
		feed func(f *wire.Framer, data []byte) error
	}{
		{name: "whole", feed: func(f *wire.Framer, data []byte) error { return f.Feed(data) }},
		{name: "byte by byte", feed: func(f *wire.Framer, data []byte) error {
			for i := range data {
				if err := f.Feed(data[i : i+1]); err != nil {
					return err
				}
			}
			return nil
		}},
		{name: "header split 2+rest", feed: func(f *wire.Framer, data []byte) error {
			cut := len(data) - 3
			if err := f.Feed(data[:cut]); err != nil {
				return err
			}
			return f.Feed(data[cut:])
		}},
	}
	for _, tt := range tests {
		for _, fd := range feeds {
			t.Run(tt.name+"/"+fd.name, func(t *testing.T) {
				f := wire.Framer{MaxBodyLen: tt.maxBodyLen}
				err := fd.feed(&f, tt.data)
				if err == nil {
					t.Fatalf("Feed accepted %x", tt.data)
				}
				var pe *wire.ProtocolError
				if !errors.As(err, &pe) || pe.Code != wire.CodeProtocolViolation {
					t.Fatalf("err = %v (%T), want *ProtocolError with code 08P01", err, err)
				}
				if got := errors.Is(err, wire.ErrMessageTooLarge); got != tt.wantTooBig {
					t.Errorf("errors.Is(err, ErrMessageTooLarge) = %v, want %v (err %q)", got, tt.wantTooBig, err)
				}
				if !strings.Contains(err.Error(), tt.wantContain) {
					t.Errorf("err %q does not mention %q", err, tt.wantContain)
				}
			})
		}
	}
}

func TestFramerLimits(t *testing.T) {
	tests := []struct {
		name       string
		maxBodyLen int
		length     uint32 // length word
		wantErr    bool
	}{
		{name: "body exactly MaxBodyLen", maxBodyLen: 100, length: 104},
		{name: "body one over MaxBodyLen", maxBodyLen: 100, length: 105, wantErr: true},
		{name: "empty body under tiny limit", maxBodyLen: 1, length: 4},
		{name: "body exactly MaxProtocolBodyLen", length: wire.MaxProtocolBodyLen + 4},
		{name: "body one over MaxProtocolBodyLen", length: wire.MaxProtocolBodyLen + 5, wantErr: true},
		{name: "length word 0x40000003", length: 0x40000003, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := wire.Framer{MaxBodyLen: tt.maxBodyLen}
			err := f.Feed(header('D', tt.length))
			if (err != nil) != tt.wantErr {
				t.Fatalf("Feed = %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				if !errors.Is(err, wire.ErrMessageTooLarge) || protocolErrorCode(err) != wire.CodeProtocolViolation {
					t.Errorf("err = %v, want ErrMessageTooLarge with 08P01", err)
				}
				return
			}
			if f.Messages() != 1 || f.AtBoundary() != (tt.length == 4) {
				t.Errorf("Messages %d AtBoundary %v", f.Messages(), f.AtBoundary())
			}
		})
	}
}

// TestFramerFeedDoesNotAllocate checks the documented promise: Feed never
// allocates, here over a 16 KiB chunk of DataRows.
func TestFramerFeedDoesNotAllocate(t *testing.T) {
	var data []byte
	row := &pgproto3.DataRow{Values: [][]byte{[]byte("42"), []byte("some text value"), nil, []byte("2024-06-01 12:00:00+00")}}
	for len(data) < 16<<10 {
		data = append(data, mustEncode(t, row)...)
	}
	data = append(data, mustEncode(t, &pgproto3.ReadyForQuery{TxStatus: 'I'})...)
	chunk := data[:16<<10] // ends mid-message: the framer carries state over
	var f wire.Framer
	allocs := testing.AllocsPerRun(100, func() {
		f = wire.Framer{}
		if err := f.Feed(chunk); err != nil {
			panic(err)
		}
		if err := f.Feed(data[16<<10:]); err != nil {
			panic(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Feed allocates %v times per 16 KiB chunk, want 0", allocs)
	}
	if !f.AtBoundary() || f.TxStatus() != 'I' {
		t.Errorf("AtBoundary %v TxStatus %q", f.AtBoundary(), f.TxStatus())
	}
	// Byte by byte too: carrying a split header must not allocate either.
	allocs = testing.AllocsPerRun(10, func() {
		f = wire.Framer{}
		for i := range 4096 {
			if err := f.Feed(data[i : i+1]); err != nil {
				panic(err)
			}
		}
	})
	if allocs != 0 {
		t.Errorf("byte-by-byte Feed allocates %v times, want 0", allocs)
	}
}

func BenchmarkFramerFeed(b *testing.B) {
	s := backendStream(b)
	b.SetBytes(int64(len(s.data)))
	b.ReportAllocs()
	var f wire.Framer
	for b.Loop() {
		if err := f.Feed(s.data); err != nil {
			b.Fatal(err)
		}
	}
}

// TestFramerCapture: every ParameterStatus reaches Captured whole, however
// the stream is cut into chunks, and nothing else does; one over
// MaxCaptureBody arrives as nil.
func TestFramerCapture(t *testing.T) {
	big := strings.Repeat("x", wire.MaxCaptureBody)
	stream := encodeAll(t,
		&pgproto3.ParameterStatus{Name: "TimeZone", Value: "UTC"},
		&pgproto3.DataRow{Values: [][]byte{[]byte("S not a status")}},
		&pgproto3.ParameterStatus{Name: "application_name", Value: ""},
		&pgproto3.CommandComplete{CommandTag: []byte("SET")},
		&pgproto3.ParameterStatus{Name: "search_path", Value: big},
		&pgproto3.ReadyForQuery{TxStatus: 'I'},
		&pgproto3.ParameterStatus{Name: "DateStyle", Value: "ISO, MDY"},
	)
	want := []string{"TimeZone=UTC", "application_name=", "<nil>", "DateStyle=ISO, MDY"}
	for _, size := range []int{1, 2, 3, 5, 7, 64, 4096, len(stream)} {
		t.Run(fmt.Sprintf("chunks of %d", size), func(t *testing.T) {
			var got []string
			f := wire.Framer{Capture: wire.MsgParameterStatus, Captured: func(msg []byte) {
				if msg == nil {
					got = append(got, "<nil>")
					return
				}
				name, value, err := wire.ParseParameterStatus(msg)
				if err != nil {
					t.Fatalf("captured %q: %v", msg, err)
				}
				got = append(got, name+"="+value)
			}}
			for i := 0; i < len(stream); i += size {
				if err := f.Feed(stream[i:min(i+size, len(stream))]); err != nil {
					t.Fatal(err)
				}
			}
			if !slices.Equal(got, want) {
				t.Fatalf("captured %q, want %q", got, want)
			}
		})
	}
}

// TestFramerCaptureDoesNotAllocate: once its buffer has grown, capturing
// allocates nothing.
func TestFramerCaptureDoesNotAllocate(t *testing.T) {
	stream := encodeAll(t, &pgproto3.ParameterStatus{Name: "TimeZone", Value: "Europe/Paris"},
		&pgproto3.ReadyForQuery{TxStatus: 'I'})
	n := 0
	f := wire.Framer{Capture: wire.MsgParameterStatus, Captured: func([]byte) { n++ }}
	allocs := testing.AllocsPerRun(100, func() {
		if err := f.Feed(stream[:3]); err != nil {
			panic(err)
		}
		if err := f.Feed(stream[3:]); err != nil {
			panic(err)
		}
	})
	if allocs != 0 || n == 0 {
		t.Errorf("capture allocates %v times (captured %d)", allocs, n)
	}
}
