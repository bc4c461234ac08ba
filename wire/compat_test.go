package wire_test

// Regression tests for behaviour that must match PostgreSQL's own
// startup-packet handling (ProcessStartupPacket in
// src/backend/tcop/backend_startup.c). Each of these failed against the
// first version of startup.go.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/pharos-ha/pharos/wire"
)

// TestStartupParamLastWins: PostgreSQL keeps the last value of a repeated
// "user" or "database" (each occurrence overwrites port->user_name /
// port->database_name). Param must report the same value, or the proxy
// sees a different role than the one the server authenticates.
func TestStartupParamLastWins(t *testing.T) {
	tests := []struct {
		name       string
		body       string
		param      string
		serverSees string
	}{
		{name: "user twice", body: "user\x00alice\x00database\x00app\x00user\x00postgres\x00\x00", param: "user", serverSees: "postgres"},
		{name: "database twice", body: "user\x00alice\x00database\x00app\x00database\x00postgres\x00\x00", param: "database", serverSees: "postgres"},
		{name: "user three times", body: "user\x00a\x00user\x00b\x00user\x00c\x00\x00", param: "user", serverSees: "c"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := wire.ParseStartupPacket(startupRaw(proto30, tt.body))
			if err != nil {
				t.Fatalf("ParseStartupPacket: %v", err)
			}
			if got, _ := p.Param(tt.param); got != tt.serverSees {
				t.Errorf("Param(%q) = %q, but PostgreSQL uses the last occurrence %q", tt.param, got, tt.serverSees)
			}
		})
	}
}

// TestStartupEmptyUserRejected: PostgreSQL rejects an empty user name like
// a missing one ("user_name == NULL || user_name[0] == '\0'" → 28000).
func TestStartupEmptyUserRejected(t *testing.T) {
	tests := []struct {
		name string
		body string
	}{
		{name: "empty user", body: "user\x00\x00database\x00app\x00\x00"},
		{name: "empty user only", body: "user\x00\x00\x00"},
		{name: "last user empty", body: "user\x00alice\x00user\x00\x00\x00"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := wire.ParseStartupPacket(startupRaw(proto30, tt.body))
			if got := protocolErrorCode(err); got != wire.CodeInvalidAuthSpec {
				t.Errorf("err = %v (code %q), want code %s as PostgreSQL answers", err, got, wire.CodeInvalidAuthSpec)
			}
		})
	}
}

// TestStartupPacketLimit: PostgreSQL subtracts the length word before
// comparing with MAX_STARTUP_PACKET_LENGTH (len -= 4; len >
// MAX_STARTUP_PACKET_LENGTH), so a whole packet may be 10004 bytes.
func TestStartupPacketLimit(t *testing.T) {
	tests := []struct {
		total   int
		wantErr bool
	}{
		{total: 10000},
		{total: 10001},
		{total: maxStartupTotal},
		{total: maxStartupTotal + 1, wantErr: true},
	}
	for _, tt := range tests {
		filler := strings.Repeat("v", tt.total-8-len("user\x00u\x00x\x00\x00\x00"))
		pkt := startupRaw(proto30, "user\x00u\x00x\x00"+filler+"\x00\x00")
		if len(pkt) != tt.total || int(binary.BigEndian.Uint32(pkt)) != tt.total {
			t.Fatalf("built a %d-byte packet, want %d", len(pkt), tt.total)
		}
		check := func(t *testing.T, err error) {
			t.Helper()
			if (err != nil) != tt.wantErr {
				t.Fatalf("%d-byte packet: err = %v, want error %v", tt.total, err, tt.wantErr)
			}
			if err != nil && protocolErrorCode(err) != wire.CodeProtocolViolation {
				t.Errorf("err = %v, want 08P01", err)
			}
		}
		t.Run(fmt.Sprintf("ParseStartupPacket/%d bytes", tt.total), func(t *testing.T) {
			_, err := wire.ParseStartupPacket(pkt)
			check(t, err)
		})
		t.Run(fmt.Sprintf("ReadStartupPacket/%d bytes", tt.total), func(t *testing.T) {
			r := bytes.NewReader(pkt)
			_, err := wire.ReadStartupPacket(r, nil)
			check(t, err)
			if tt.wantErr && r.Len() != len(pkt)-4 {
				t.Errorf("oversized packet: %d bytes read past the length word", len(pkt)-4-r.Len())
			}
		})
	}
}

// TestAppendStartupMessageRefusesNUL: a NUL inside a name or value would
// become a separator on the wire ("x\x00user\x00postgres" smuggles in a
// second user), and an empty name would end the list early.
func TestAppendStartupMessageRefusesNUL(t *testing.T) {
	tests := []struct {
		name   string
		params []wire.Param
	}{
		{name: "NUL in value", params: []wire.Param{{"user", "alice"}, {"application_name", "x\x00user\x00postgres"}}},
		{name: "NUL in name", params: []wire.Param{{"user", "alice"}, {"application_name\x00x\x00user", "postgres"}}},
		{name: "trailing NUL in value", params: []wire.Param{{"user", "alice\x00"}}},
		{name: "empty name", params: []wire.Param{{"user", "alice"}, {"", "v"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := []byte("keep")
			out, err := wire.AppendStartupMessage(slices.Clone(prefix), proto30, tt.params)
			if err == nil {
				p, perr := wire.ParseStartupPacket(out[len(prefix):])
				t.Fatalf("AppendStartupMessage(%q) accepted; parses back as %q (err %v)", tt.params, p.Params, perr)
			}
			if !bytes.Equal(out, prefix) {
				t.Errorf("refused append left %q in dst, want %q", out, prefix)
			}
		})
	}
}
