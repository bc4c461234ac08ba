// Package bench owns load generation and reporting for `pharos bench`: it
// drives PostgreSQL endpoints as an ordinary client would (pgx connections,
// nothing else) and compares them side by side.
//
// It is a black-box client. It must not import or know the internals of the
// proxy, router, wire or agent packages: a target is a name and a
// connection string, whether it is PostgreSQL itself, pharos, or anything
// else that speaks the protocol. That keeps the comparison honest — the
// proxy gets no help the baseline does not get.
//
// Layout:
//
//   - target.go: targets, protocol modes, workloads and client counts, and
//     their flag parsers.
//   - histogram.go: a fixed-bucket log-linear latency histogram, allocation
//     free on Record, mergeable across clients and rounds.
//   - stats.go: median and the target rotation order; pure.
//   - report.go: the result model, its summary (medians, ratios) and the text
//     and JSON renderings; pure.
//   - throughput.go: the throughput benchmark's configuration, its cases
//     and the rounds that rotate the targets; engine.go: the engine that
//     opens connections, holds the start barrier, runs the clients under an
//     errgroup and collects results.
//   - switch.go: the route-switch measurement (`pharos bench switch`).
//   - failover.go: the write probe around a fault (`pharos bench failover`):
//     numbered writes, reconnecting on error, read back from the final
//     primary; failoverreport.go: its report and the text and JSON
//     renderings.
//   - checker.go: the pure judge of a write history: acknowledged writes
//     missing afterwards, outages, recovery; splitbrain.go: the pure judge
//     of direct per-node writes: spans in which two nodes accepted writes.
//   - summary.go: the Markdown report of a results directory (`make
//     bench`), built from its JSON files alone; chart.go: its hand-written
//     SVG charts.
//
// Method. Targets are measured in alternation, not one after the other: for
// each round, for each protocol mode, every target gets one run of the same
// duration, and the order of targets is rotated each round so no target
// always runs first (right after another target warmed the machine, or while
// it is still cooling down). Each run opens its client connections first,
// primes each with one untimed query (which also prepares the statement in
// extended mode) and only then starts the clock for all clients at once, so
// connection setup is never part of the measured window. A run's
// throughput is its completed queries divided by the time from the start
// barrier to the end of the last query; a client starts no new query once
// the run's duration has passed. The reported throughput is the median over
// rounds (robust to one noisy round); the latency percentiles come from the
// merged histogram of all rounds.
//
// Its Go API carries no stability promise: pharos ships a binary, and
// these packages change with it.
package bench
