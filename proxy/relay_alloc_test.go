package proxy

import (
	"io"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"

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

// TestForwardDoesNotAllocate: the per-message path of both copiers
// allocates nothing, pooled or not, including a ParameterStatus the
// pooled connection already knows the value of.
func TestForwardDoesNotAllocate(t *testing.T) {
	s := &Server{bytesC2B: prometheus.NewCounter(prometheus.CounterOpts{Name: "c2b"}),
		bytesB2C: prometheus.NewCounter(prometheus.CounterOpts{Name: "b2c"})}
	fromClient := encodeAll(t, &pgproto3.Parse{Query: "SELECT $1"}, &pgproto3.Bind{Parameters: [][]byte{[]byte("1")}},
		&pgproto3.Execute{}, &pgproto3.Sync{})
	var rows []interface{ Encode([]byte) ([]byte, error) }
	for range 50 {
		rows = append(rows, &pgproto3.DataRow{Values: [][]byte{[]byte("42"), []byte("some text")}})
	}
	rows = append(rows, &pgproto3.ParameterStatus{Name: "TimeZone", Value: "UTC"}, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 50")},
		&pgproto3.ReadyForQuery{TxStatus: 'I'})
	fromServer := encodeAll(t, rows...)
	for _, pooled := range []bool{false, true} {
		sess := &session{srv: s}
		c := &clientToBackend{sess: sess, backend: io.Discard, pooled: pooled, cleanEnd: true}
		c.f.Frontend = true
		sc := &serverConn{params: []wire.Param{{Name: "TimeZone", Value: "UTC"}}}
		b := &backendToClient{sess: sess, client: io.Discard, sc: sc}
		if pooled {
			b.f.Capture, b.f.Captured = wire.MsgParameterStatus, sc.captured
		}
		allocs := testing.AllocsPerRun(200, func() {
			if !c.forward(fromClient) || !b.forward(fromServer[:100]) || !b.forward(fromServer[100:]) {
				panic("forward stopped")
			}
		})
		if allocs != 0 {
			t.Errorf("pooled %v: %v allocations per round trip, want 0", pooled, allocs)
		}
		if sc.lostParam || len(sc.params) != 1 {
			t.Errorf("pooled %v: params %v lost %v", pooled, sc.params, sc.lostParam)
		}
	}
}
