// Package faultnet owns Relay, a TCP relay on loopback that can partition
// the link it carries: chaos tests put one between a single client and its
// server (an agent and etcd, say) to cut that client off while everyone
// else still reaches the server directly.
//
// A cut is meant to look like a network partition, not like a crash: no
// connection is closed or reset, bytes simply stop arriving, so each side
// learns of the cut only through its own timeouts. Restore ends the
// partition by closing every connection held during it, so clients
// reconnect through the relay as they would after their own timeouts.
//
// It relays bytes and nothing else. It must not know the protocols it
// carries (etcd, gRPC, PostgreSQL) nor what runs at either end.
package faultnet
