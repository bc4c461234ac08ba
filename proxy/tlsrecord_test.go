package proxy_test

import (
	"context"
	"encoding/binary"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/proxy"
	"github.com/pharos-ha/pharos/router"
)

// tapConn keeps a copy of every byte read from the server, TLS records
// included.
type tapConn struct {
	net.Conn
	mu  sync.Mutex
	got []byte
}

func (c *tapConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.got = append(c.got, p[:n]...)
	c.mu.Unlock()
	return n, err
}

// appDataRecords returns the payload lengths of the TLS application-data
// records (content type 23) in a raw server-to-client stream, after the 'S'
// answering the SSLRequest.
func appDataRecords(raw []byte) []int {
	var out []int
	if len(raw) > 0 && raw[0] == 'S' {
		raw = raw[1:]
	}
	for len(raw) >= 5 {
		n := int(binary.BigEndian.Uint16(raw[3:5]))
		if raw[0] == 23 {
			out = append(out, n)
		}
		if len(raw) < 5+n {
			break
		}
		raw = raw[5+n:]
	}
	return out
}

// TestClientTLSRecordSize: the proxy sends a result in full-size TLS records
// (16 KB) from a session's first byte, not in the records that crypto/tls's
// dynamic record sizing grows from ~1.2 KB over a connection's first 128 KB:
// those are more records for the client to read and open in every new
// session, and they cut results at points PostgreSQL's own 8 KB records never
// do. pgx's own suite failed through the proxy over TLS, and nowhere else, on
// exactly that (pgtype TestDriverBytes, which checks that pgx reuses its read
// buffer within 1,000 rows).
func TestClientTLSRecordSize(t *testing.T) {
	p := tlsProxy(t, proxy.TLSRequire, "", "")
	var mu sync.Mutex
	var taps []*tapConn
	cfg, err := pgx.ParseConfig(p.DSN(router.RW, pglocal.UserSCRAM, "sslmode=require"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		tc := &tapConn{Conn: c}
		mu.Lock()
		taps = append(taps, tc)
		mu.Unlock()
		return tc, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if !isTLS(conn) {
		t.Fatal("the connection is not TLS")
	}
	mu.Lock()
	tc := taps[len(taps)-1]
	mu.Unlock()
	tc.mu.Lock()
	before := len(appDataRecords(tc.got))
	tc.mu.Unlock()

	// 1,000 rows of 128 bytes each, as pgx's test: about 140 KB.
	const total = 1000 * 139
	rows, err := conn.Query(ctx, "SELECT repeat('x', 128) FROM generate_series(1, 1000)")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		n++
	}
	if err := rows.Err(); err != nil || n != 1000 {
		t.Fatalf("query: %d rows, %v", n, err)
	}
	tc.mu.Lock()
	recs := appDataRecords(tc.got)[before:]
	tc.mu.Unlock()
	sum := 0
	for _, r := range recs {
		sum += r
	}
	if sum < total {
		t.Fatalf("read %d bytes of application data in %d records, want at least %d", sum, len(recs), total)
	}
	// 16 KB records: 9 for the result, and the first reply (RowDescription)
	// may come alone; dynamic sizing took 19.
	if max := total/16384 + 3; len(recs) > max {
		t.Errorf("the result came in %d TLS records %v, want at most %d (full-size records)", len(recs), recs, max)
	}
}
