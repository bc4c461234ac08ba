package proxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/pharos-ha/pharos/internal/pglocal"
	"github.com/pharos-ha/pharos/router"
)

func TestEndpointsReachTheRightServer(t *testing.T) {
	p := startProxy(t, proxyOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name         string
		ep           router.Endpoint
		wantRecovery bool
		wantReadOnly string
	}{
		{"rw reaches the primary", router.RW, false, "off"},
		{"ro reaches the replica read-only", router.RO, true, "on"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := p.connect(t, tc.ep, pglocal.UserSCRAM, "")
			var inRecovery bool
			var readOnly string
			if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')").Scan(&inRecovery, &readOnly); err != nil {
				t.Fatal(err)
			}
			if inRecovery != tc.wantRecovery || readOnly != tc.wantReadOnly {
				t.Errorf("in recovery %v, read only %s; want %v, %s", inRecovery, readOnly, tc.wantRecovery, tc.wantReadOnly)
			}
		})
	}
}
