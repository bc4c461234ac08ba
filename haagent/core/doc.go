// Package core is the agent's pure decision core: what one member of a
// pharos cluster should do next, given one round's view of etcd and of its
// own PostgreSQL.
//
// It owns the HA rules (Decide, a function of an Observation and the
// Rules), the Plan and Action vocabulary the driver executes, what a member
// remembers between rounds (Memory) and every change to it (Memory.Apply
// of an Observation or of a step's Result), the classification of pg_rewind
// failures, the timing arithmetic (Timing.Validate) and how member names
// become replication slots. Its scenario files in testdata/*.txt are the
// executable design (see ../design.md).
//
// Files: observation.go (what a round sees), memory.go (what a member
// remembers, and Memory.Apply), plan.go (actions and plans), decide.go
// (Decide and the branch by situation), leader.go, follower.go and
// election.go (the plan in each situation), config.go (Rules, Timing),
// rewindfail.go and slots.go.
//
// It must not know etcd, processes, files, the network or the clock: the
// driver (package haagent) observes, calls Decide and carries out the plan.
// A test on `go list -deps` keeps the etcd client and os/exec out of its
// imports.
//
// Its Go API carries no stability promise: pharos ships a binary, and
// these packages change with it.
package core
