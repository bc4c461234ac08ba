package pgproc

import (
	"slices"
	"testing"
)

func TestIsSecretEnv(t *testing.T) {
	for kv, want := range map[string]bool{
		"PHAROS_SUPERUSER_PASSWORD=x": true, "PHAROS_REPLICATION_PASSWORD=": true, "PHAROS_API_TOKEN=t": true,
		"PHAROS_ETCD_PASSWORD": true, "PHAROS_MONITOR_PASSWORD=x=y": true,
		"PHAROS_CLUSTER=main": false, "PHAROS_PG_BINDIR=/usr": false, "PGPASSWORD=x": false,
		"MY_PHAROS_API_TOKEN=x": false, "PATH=/PHAROS_X_PASSWORD": false,
	} {
		if got := IsSecretEnv(kv); got != want {
			t.Errorf("IsSecretEnv(%q) = %v, want %v", kv, got, want)
		}
	}
}

func TestChildEnvHoldsNoSecret(t *testing.T) {
	t.Setenv("PHAROS_REPLICATION_PASSWORD", "repl-secret")
	t.Setenv("PHAROS_CLUSTER", "main")
	env := ChildEnv()
	if slices.Contains(env, "PHAROS_REPLICATION_PASSWORD=repl-secret") {
		t.Error("ChildEnv passes the replication password on")
	}
	if !slices.Contains(env, "PHAROS_CLUSTER=main") {
		t.Error("ChildEnv dropped a variable that is no secret")
	}
}
