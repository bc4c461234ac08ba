package clusterstate_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/pharos-ha/pharos/internal/cluster"
	"github.com/pharos-ha/pharos/internal/clusterstate"
)

// TestWithoutParameters: the view for readers without credentials keeps
// the topology and the HA settings, drops the PostgreSQL parameters (where
// archive_command secrets live), says so, and leaves the full view as it
// was.
func TestWithoutParameters(t *testing.T) {
	const secret = "aws s3 cp %p s3://bucket/%f --key AKIAEXAMPLESECRET"
	full := clusterstate.ClusterStatus{Prefix: "/pharos/c1/", Config: map[string]any{
		"pause": true,
		"postgresql": map[string]any{
			"parameters": map[string]any{"archive_command": secret, "work_mem": "64MB"},
			"use_slots":  true,
		},
	}, Dynamic: cluster.DynamicConfig{Pause: true}}
	hidden := full.WithoutParameters()
	b, err := json.Marshal(hidden)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "AKIAEXAMPLESECRET") || strings.Contains(string(b), "work_mem") {
		t.Errorf("parameters in the anonymous view: %s", b)
	}
	if !hidden.ParametersHidden || !hidden.Paused() || !strings.Contains(string(b), `"use_slots":true`) || !strings.Contains(string(b), `"parameters_hidden":true`) {
		t.Errorf("anonymous view lost more than the parameters, or does not say so: %s", b)
	}
	pg := full.Config["postgresql"].(map[string]any)
	if params, _ := pg["parameters"].(map[string]any); params["archive_command"] != secret || full.ParametersHidden {
		t.Errorf("the full view changed: %v", full.Config)
	}

	only := clusterstate.ClusterStatus{Config: map[string]any{"postgresql": map[string]any{"parameters": map[string]any{"x": "1"}}}}.WithoutParameters()
	if _, ok := only.Config["postgresql"]; ok || !only.ParametersHidden {
		t.Errorf("config with parameters only: %v, hidden %v", only.Config, only.ParametersHidden)
	}
	none := clusterstate.ClusterStatus{Config: map[string]any{"pause": false}}.WithoutParameters()
	if none.ParametersHidden {
		t.Error("a config without parameters reported as hidden")
	}
}
