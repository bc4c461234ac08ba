// Package haagent is the per-node HA agent: it bootstraps the node, holds
// or follows the leadership in etcd, promotes, demotes, re-points and
// rewinds the local PostgreSQL.
//
// It is the driver around the pure decision core (package core: Decide, a
// function of an Observation, and Memory.Apply): it observes, and owns the
// executors that carry out Decide's plan. It must not know the proxy: the
// proxy follows what the agent publishes in etcd. See design.md beside
// this file for the state diagram.
//
// # Files, by job
//
//   - agent.go: the Agent, its configuration and Run (goroutine owners).
//   - loop.go: the round (observe, publish, Decide, execute), wake-ups.
//   - lease.go: joining, and the lease type that owns the keep-alive
//     goroutine and says when etcd last acknowledged a renewal.
//   - observe.go, publish.go: the Observation a round builds, the member
//     record it writes.
//   - execute.go: one Action at a time, its Result applied to Memory;
//     bootstrap.go, clone.go, switchover.go, syncstandby.go: the steps
//     with more than a few lines each.
//   - dcs.go: etcd transactions on the leader's create revision.
//   - postgres.go and beside it conf.go (renderConf, pure), conffiles.go
//     (writing the files), process.go (pg_ctl, waiting for a dead
//     postmaster), queries.go (SQL on the local server), copy.go
//     (pg_basebackup, pg_rewind).
//   - auth.go (require_auth, passfile, role verifiers), callbacks.go,
//     guard.go (watchdog), progress.go (live records of long steps),
//     api.go (the REST API's backend).
//
// # The loop
//
// Each round observes (one consistent etcd read, one query of the local
// server or pg_controldata when it is down), publishes this member's record,
// calls Decide, and executes the plan in order with a deadline per step,
// stopping at the first failure. Rounds run every loop_wait and at once when
// something changes: any key under the cluster prefix (a watch), the
// postmaster's death (checked every 50 ms), a lease problem, or a plan that
// changed the state.
//
// # Timing and what it tolerates
//
// One lease per agent carries both its member record and, on the leader,
// the leader key. A separate goroutine renews it with an explicit
// keep-alive every loop_wait, each bounded by retry_timeout, and remembers
// the send time of the last one etcd acknowledged. etcd cannot expire the
// lease before that time + ttl. The leader fences itself (fast shutdown,
// escalated to SIGKILL after safety_margin/2) once ttl − safety_margin has
// passed since then, so its PostgreSQL stops accepting writes at least
// safety_margin/2 before any other member can take the key.
//
// The watchdog, when armed, has the timeout ttl − safety_margin and is fed
// only after a renewal etcd acknowledged within safety_margin of its send:
// it counts from the feed, the lease from no earlier than the send, so it
// fires before the lease can expire, by safety_margin minus that round
// trip (most of it on a healthy etcd), and a replica still has to notice,
// win the election and promote. That is for the agent that no longer runs
// its loop and so cannot fence itself.
//
// Validate requires 2·loop_wait + retry_timeout ≤ ttl − safety_margin: after
// its last good renewal the leader makes at least two more attempts, the
// first of which may hang for retry_timeout, before it must fence.
//
// Defaults: ttl 4 s, loop_wait 1 s, retry_timeout 1 s, safety_margin 1 s:
//
//   - Renewals may fail for up to ttl − safety_margin = 3 s without a
//     failover. That covers an etcd leader election with etcd's default
//     1 s election timeout (typically 1–2 s of unavailability; etcd also
//     extends every lease on a new etcd leader) and an fsync stall of an
//     etcd member below about 2 s. A longer stall demotes the primary
//     (write unavailability, never two primaries); raise ttl on disks or
//     networks known to stall longer.
//   - Node loss: the lease expires ttl after the last renewal, i.e. 3–4 s
//     after the node dies; replicas learn it from the watch within
//     milliseconds, compare positions (waiting at most 500 ms for a peer
//     that has not published since the leader vanished), and the winner
//     promotes (a few hundred ms). Expected write outage ≈ ttl + 0.5 s.
//   - A stopping agent stops PostgreSQL first, then deletes the key: the
//     replicas elect at once instead of waiting for the lease.
//   - A PostgreSQL crash under a live agent is noticed within 50 ms and
//     restarted in place (crash recovery) while the agent keeps the key; if
//     it is still down after crash_restart_timeout (5 s), the key is
//     released.
//
// Patroni's defaults (ttl 30 s, loop_wait 10 s) wait for the loop to notice a
// vanished leader; here the watch does, so loop_wait only paces renewals
// and housekeeping and can be short without more etcd load than a
// keep-alive and a member record per second per node.
//
// Its Go API carries no stability promise: pharos ships a binary, and
// these packages change with it.
package haagent
