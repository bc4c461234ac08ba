package pglocal

import "github.com/pharos-ha/pharos/internal/freeport"

// KeepDataEnv, set to 1, keeps a cluster's base directory after Close.
const KeepDataEnv = "PHAROS_KEEP_PGDATA"

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago,
// outside the ephemeral range (see package freeport). Another process may
// take it before the caller binds it; NewCluster retries on a bind failure.
func FreePort() (int, error) { return freeport.Pick() }
