// Package layering holds tests, built on `go list`, of which packages may
// import which. It has no code of its own.
package layering

import (
	"bytes"
	"encoding/json"
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/pharos-ha/pharos"

// harness are the packages that run PostgreSQL, etcd, agents and faults
// for tests and the demo; production code must not build on them.
var harness = []string{
	module + "/internal/pglocal",
	module + "/internal/etcdlocal",
	module + "/internal/localha",
	module + "/internal/faultnet",
	module + "/internal/pgproc/pgproctest",
}

// harnessFiles are the production files that may import the harness:
// the demo command's own wiring, which starts an embedded etcd and
// supervised agents on purpose.
var harnessFiles = map[string]bool{
	"cmd/pharos/demo.go": true,
}

type pkg struct {
	ImportPath string
	Dir        string
	GoFiles    []string
	Imports    []string
	Deps       []string
}

// modulePackages lists the module's packages as `go list` sees them
// (non-test files only), with their imports and dependencies.
func modulePackages(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", module+"/...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatalf("go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) == 0 {
		t.Fatal("go list found no packages")
	}
	return pkgs
}

// fileImports returns the import paths of one Go file.
func fileImports(t *testing.T, path string) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
	if err != nil {
		t.Fatal(err)
	}
	var imps []string
	for _, s := range f.Imports {
		p, err := strconv.Unquote(s.Path.Value)
		if err != nil {
			t.Fatal(err)
		}
		imps = append(imps, p)
	}
	return imps
}

func isHarness(path string) bool { return slices.Contains(harness, path) }

// TestProductionDoesNotImportHarness: no production package imports
// pglocal, etcdlocal, localha, faultnet or pgproctest, directly or
// through another package, except the files in harnessFiles.
func TestProductionDoesNotImportHarness(t *testing.T) {
	pkgs := modulePackages(t)
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pkgs {
		if isHarness(p.ImportPath) || len(p.GoFiles) == 0 {
			continue // the harness itself; test-only packages
		}
		allowed := false
		for _, f := range p.GoFiles {
			rel, err := filepath.Rel(root, filepath.Join(p.Dir, f))
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range fileImports(t, filepath.Join(p.Dir, f)) {
				if !isHarness(imp) {
					continue
				}
				if harnessFiles[filepath.ToSlash(rel)] {
					allowed = true
					continue
				}
				t.Errorf("%s imports the test harness %s", rel, imp)
			}
		}
		if allowed {
			// The demo's wiring brings the harness with it; the
			// package's other imports are checked as packages of their
			// own.
			continue
		}
		for _, d := range p.Deps {
			if isHarness(d) && !slices.Contains(p.Imports, d) {
				t.Errorf("%s depends on the test harness %s through %s", p.ImportPath, d, via(pkgs, p, d))
			}
		}
	}
}

// via names the direct imports of p that bring dep in.
func via(pkgs []pkg, p pkg, dep string) string {
	var names []string
	for _, q := range pkgs {
		if slices.Contains(p.Imports, q.ImportPath) && (q.ImportPath == dep || slices.Contains(q.Deps, dep)) {
			names = append(names, strings.TrimPrefix(q.ImportPath, module+"/"))
		}
	}
	return strings.Join(names, ", ")
}

// find returns the module package at path (relative to the module),
// failing when go list did not list it: a rule about a package that moved
// away would otherwise hold vacuously.
func find(t *testing.T, pkgs []pkg, path string) pkg {
	t.Helper()
	for _, p := range pkgs {
		if p.ImportPath == module+"/"+path && len(p.GoFiles) > 0 {
			return p
		}
	}
	t.Fatalf("package %s is not in the module (or has no files): update the rule", path)
	return pkg{}
}

// dependsOn lists p's dependencies that are prefix or below it.
func dependsOn(p pkg, prefix string) []string {
	var hits []string
	for _, d := range p.Deps {
		if d == prefix || strings.HasPrefix(d, prefix+"/") {
			hits = append(hits, d)
		}
	}
	return hits
}

// TestPureCoreHasNoIO: the decision core reads no etcd, runs no program,
// opens no socket and speaks no PostgreSQL protocol; it is a function of
// its inputs.
func TestPureCoreHasNoIO(t *testing.T) {
	core := find(t, modulePackages(t), "haagent/core")
	for _, banned := range []string{"go.etcd.io", "os/exec", "net/http", "github.com/jackc/pgx"} {
		if hits := dependsOn(core, banned); len(hits) > 0 {
			t.Errorf("the pure core (haagent/core) depends on %s: %v", banned, hits)
		}
	}
	// Sockets; net/netip and net/url are values, not I/O.
	if slices.Contains(core.Deps, "net") {
		t.Errorf("the pure core (haagent/core) depends on net")
	}
	// The list is a real dependency list: the core does use the records.
	if !slices.Contains(core.Deps, module+"/internal/cluster") {
		t.Errorf("haagent/core's dependencies %v lack internal/cluster: the list is not what this test assumes", core.Deps)
	}
}

// TestProxyDoesNotKnowTheAgent: the proxy follows what the agent
// publishes in etcd, never its code.
func TestProxyDoesNotKnowTheAgent(t *testing.T) {
	pkgs := modulePackages(t)
	for _, path := range []string{"proxy", "router", "wire"} {
		if hits := dependsOn(find(t, pkgs, path), module+"/haagent"); len(hits) > 0 {
			t.Errorf("%s depends on the agent: %v", path, hits)
		}
	}
}

// TestAgentDoesNotKnowTheCLI: the agent reads and writes the cluster's
// operator state through internal/clusterstate, which ctl also uses; it
// never builds on the CLI's rendering package or the command.
func TestAgentDoesNotKnowTheCLI(t *testing.T) {
	pkgs := modulePackages(t)
	for _, path := range []string{"haagent", "haagent/core", "internal/clusterstate"} {
		p := find(t, pkgs, path)
		for _, banned := range []string{module + "/internal/ctl", module + "/cmd"} {
			if hits := dependsOn(p, banned); len(hits) > 0 {
				t.Errorf("%s depends on %s: %v", path, strings.TrimPrefix(banned, module+"/"), hits)
			}
		}
	}
}

// TestRecordsArePure: internal/cluster, the records and the rules both
// the agent's pure core and ctl apply to them (switchover eligibility, the
// dynamic configuration's meaning), touches no etcd client, program or
// socket, so that the core may import it.
func TestRecordsArePure(t *testing.T) {
	p := find(t, modulePackages(t), "internal/cluster")
	for _, banned := range []string{"go.etcd.io", "os/exec", "net/http", "github.com/jackc/pgx"} {
		if hits := dependsOn(p, banned); len(hits) > 0 {
			t.Errorf("internal/cluster depends on %s: %v", banned, hits)
		}
	}
	if slices.Contains(p.Deps, "net") {
		t.Errorf("internal/cluster depends on net")
	}
}
