package freeport

import (
	"net"
	"strconv"
	"testing"
)

func TestPickIsBelowTheEphemeralRangeAndFree(t *testing.T) {
	low := ephemeralLow()
	if low-1-lowest < 1000 {
		t.Skipf("ephemeral range starts at %d: no room below it, Pick falls back to the kernel's choice", low)
	}
	for range 20 {
		port, err := Pick()
		if err != nil {
			t.Fatal(err)
		}
		if port < lowest || port >= low {
			t.Fatalf("Pick = %d, want within [%d, %d)", port, lowest, low)
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			t.Fatalf("port %d from Pick: %v", port, err)
		}
		l.Close()
	}
}

func TestDistinct(t *testing.T) {
	ports, err := Distinct(8)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] {
			t.Fatalf("Distinct(8) = %v: %d twice", ports, p)
		}
		seen[p] = true
	}
	if len(ports) != 8 {
		t.Fatalf("Distinct(8) returned %d ports", len(ports))
	}
}
