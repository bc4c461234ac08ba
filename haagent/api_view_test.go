package haagent

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/pharos-ha/pharos/internal/cluster"
)

// TestAPIClusterViewHidesParameters: the REST API's GET /cluster view,
// as the agent builds it from etcd, shows the dynamic configuration's
// PostgreSQL parameters only to a caller who authenticated.
func TestAPIClusterViewHidesParameters(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cli := testEtcd(t)
	keys, _ := cluster.NewKeys("view")
	const secret = "AKIAEXAMPLESECRET"
	if _, err := cli.Put(ctx, keys.Config(), `{"pause":true,"postgresql":{"parameters":{"archive_command":"aws s3 cp %p s3://b/%f --key `+secret+`"}}}`); err != nil {
		t.Fatal(err)
	}
	api := agentAPI{&Agent{dcs: &dcs{cli: cli, keys: keys, name: "n1"}}}
	view := func(authenticated bool) string {
		v, err := api.Cluster(ctx, authenticated)
		if err != nil {
			t.Fatal(err)
		}
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if got := view(false); strings.Contains(got, secret) || !strings.Contains(got, `"pause":true`) || !strings.Contains(got, `"parameters_hidden":true`) {
		t.Errorf("anonymous view: %s", got)
	}
	if got := view(true); !strings.Contains(got, secret) || strings.Contains(got, "parameters_hidden") {
		t.Errorf("authenticated view: %s", got)
	}
}
