package wire_test

import (
	"bytes"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pharos-ha/pharos/wire"
)

func encodeSASLInitial(t testing.TB, mech string, data []byte) []byte {
	t.Helper()
	msg, err := (&pgproto3.SASLInitialResponse{AuthMechanism: mech, Data: data}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

func TestParseSASLInitialResponse(t *testing.T) {
	valid := encodeSASLInitial(t, "SCRAM-SHA-256", []byte("y,,n=,r=abc"))
	for _, tc := range []struct {
		name     string
		in       []byte
		wantOK   bool
		wantMech string
		wantData string
	}{
		{"scram with y flag", valid, true, "SCRAM-SHA-256", "y,,n=,r=abc"},
		{"followed by more bytes", append(append([]byte{}, valid...), 'S', 0, 0, 0, 4), true, "SCRAM-SHA-256", "y,,n=,r=abc"},
		{"no data (length -1)", []byte{'p', 0, 0, 0, 14, 'S', 'C', 'R', 'A', 'M', 0, 0xff, 0xff, 0xff, 0xff}, true, "SCRAM", ""},
		{"other message type", append([]byte{'Q'}, valid[1:]...), false, "", ""},
		{"truncated", valid[:len(valid)-3], false, "", ""},
		{"data length beyond the message", []byte{'p', 0, 0, 0, 14, 'S', 'C', 'R', 'A', 'M', 0, 0, 0, 0, 9}, false, "", ""},
		{"negative data length", []byte{'p', 0, 0, 0, 14, 'S', 'C', 'R', 'A', 'M', 0, 0xff, 0xff, 0xff, 0xfe}, false, "", ""},
		{"unterminated mechanism", []byte{'p', 0, 0, 0, 9, 'S', 'C', 'R', 'A', 'M'}, false, "", ""},
		{"length below 4", []byte{'p', 0, 0, 0, 3, 0}, false, "", ""},
		{"header only", []byte{'p', 0, 0}, false, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mech, data, ok := wire.ParseSASLInitialResponse(tc.in)
			if ok != tc.wantOK || mech != tc.wantMech || string(data) != tc.wantData {
				t.Errorf("got (%q, %q, %v), want (%q, %q, %v)", mech, data, ok, tc.wantMech, tc.wantData, tc.wantOK)
			}
		})
	}
}

func FuzzParseSASLInitialResponse(f *testing.F) {
	f.Add(encodeSASLInitial(f, "SCRAM-SHA-256", []byte("n,,n=,r=x")))
	f.Add(encodeSASLInitial(f, "SCRAM-SHA-256-PLUS", []byte("p=tls-server-end-point,,n=,r=x")))
	f.Add([]byte{'p', 0, 0, 0, 4})
	f.Fuzz(func(t *testing.T, in []byte) {
		mech, data, ok := wire.ParseSASLInitialResponse(in)
		if !ok {
			return
		}
		// Whatever parses must re-encode to a prefix of the input.
		out := encodeSASLInitial(t, mech, data)
		if data == nil {
			return // pgproto3 encodes nil data as length 0, the wire said -1
		}
		if !bytes.HasPrefix(in, out) {
			t.Fatalf("parsed (%q, %q) re-encodes to %x, input %x", mech, data, out, in)
		}
	})
}
