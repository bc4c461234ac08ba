// Package freeport picks loopback TCP ports for servers that tests and the
// demo start, stop and start again on the same port.
//
// It owns one rule: ports come from below the kernel's ephemeral range.
// A port the kernel hands out for bind(":0") is also what it hands out as
// the local port of outgoing connections, so a server stopped for a moment
// (a killed node, a stopped etcd member) could find its port taken by some
// client's connection when it restarts. Ports below the range are only ever
// taken by an explicit bind.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// lowest port handed out; the ephemeral range starts above it (32768 by
// default on Linux).
const lowest = 10000

// Pick returns a port on 127.0.0.1 that was free a moment ago and is
// outside the ephemeral range. Another process may still take it before
// the caller binds it; callers retry on a bind failure.
func Pick() (int, error) {
	hi := ephemeralLow() - 1
	if hi-lowest >= 1000 {
		for range 200 {
			port := lowest + rand.IntN(hi-lowest+1)
			if l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err == nil {
				l.Close()
				return port, nil
			}
		}
	}
	// A kernel whose ephemeral range leaves no room below it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Distinct returns n different ports from Pick.
func Distinct(n int) ([]int, error) {
	seen := map[int]bool{}
	var out []int
	for len(out) < n {
		p, err := Pick()
		if err != nil {
			return nil, err
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out, nil
}

// ephemeralLow reads the start of the kernel's ephemeral port range.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return n
}
