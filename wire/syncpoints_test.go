package wire_test

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pharos-ha/pharos/wire"
)

func encodeAll(t *testing.T, msgs ...interface{ Encode([]byte) ([]byte, error) }) []byte {
	t.Helper()
	var out []byte
	for _, m := range msgs {
		var err error
		if out, err = m.Encode(out); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func TestSyncPoints(t *testing.T) {
	for _, tc := range []struct {
		name     string
		frontend bool
		stream   []byte
		want     uint64
	}{
		{"simple query", true, encodeAll(t, &pgproto3.Query{String: "SELECT 1"}), 1},
		{"extended batch with one sync", true, encodeAll(t,
			&pgproto3.Parse{Query: "SELECT 1"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}), 1},
		{"pipeline of two syncs and a query", true, encodeAll(t,
			&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{},
			&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{},
			&pgproto3.Query{String: "SELECT 2"}), 3},
		{"function call", true, encodeAll(t, &pgproto3.FunctionCall{Function: 1}), 1},
		{"copy data and terminate are not sync points", true, encodeAll(t,
			&pgproto3.CopyData{Data: []byte("x")}, &pgproto3.CopyDone{}, &pgproto3.Terminate{}), 0},
		{"server: two ReadyForQuery", false, encodeAll(t,
			&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'},
			&pgproto3.ParameterStatus{Name: "a", Value: "b"}, &pgproto3.ReadyForQuery{TxStatus: 'T'}), 2},
		{"server: ParameterStatus is not a Sync", false, encodeAll(t, &pgproto3.ParameterStatus{Name: "a", Value: "b"}), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			whole := wire.Framer{Frontend: tc.frontend}
			if err := whole.Feed(tc.stream); err != nil {
				t.Fatal(err)
			}
			bytewise := wire.Framer{Frontend: tc.frontend}
			for i := range tc.stream {
				if err := bytewise.Feed(tc.stream[i : i+1]); err != nil {
					t.Fatal(err)
				}
			}
			if whole.SyncPoints() != tc.want || bytewise.SyncPoints() != tc.want {
				t.Errorf("sync points whole %d, byte by byte %d; want %d", whole.SyncPoints(), bytewise.SyncPoints(), tc.want)
			}
		})
	}
}
