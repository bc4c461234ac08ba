// Package etcdlocal runs real etcd servers in-process
// (go.etcd.io/etcd/server/v3/embed) on loopback for the tests and the demo.
//
// It owns the lifecycle of an embedded etcd cluster of one or more members:
// choosing free loopback ports, the data directories, starting the members
// and waiting until they serve, stopping a member and starting it again on
// the same data directory and the same ports (so existing clients reconnect),
// physical compaction, and handing out quiet clients.
//
// It must not know about pharos: not its keys, leases or elections, not the
// proxy, not the agent. It runs etcd and stops what it started.
//
// Each member's advertised client and peer ports are small TCP forwarders
// in front of the ports etcd serves on, so that StopMember can cut clients
// and peers off at once, as the death of an etcd process would, instead of
// etcd's graceful stop keeping open streams alive for seconds, and so that
// Close leaves no connection, and no goroutine, behind.
//
// The members run inside the calling process with fsync disabled
// (embed.Config.UnsafeNoFsync): data survives StopMember/StartMember, which
// close the server cleanly, but not a crash of the process. Auto-compaction
// is off; compact with Cluster.Compact. etcd's own logging is discarded; this
// package logs member state changes to the injected *slog.Logger.
package etcdlocal
