package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// testingImportersAllowed are the packages outside this module that the
// runner may link although they import package testing: pstest, the
// in-process Pub/Sub emulator behind `serve -pubsub`, needs Google's
// internal testutil. Nothing of this module may be among them: test
// helpers belong in _test.go files or in packages only tests import
// (store/localpg/localpgtest).
var testingImportersAllowed = []string{"cloud.google.com/go/internal/testutil"}

// TestRunnerDoesNotLinkTestHelpers lists what the runner links and fails
// on every package that imports testing, except the allowed ones above.
// Linking testing registers its flags and drags test machinery into the
// binary users run.
func TestRunnerDoesNotLinkTestHelpers(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list the runner's dependencies: %v", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", exitDetail(err))
	}
	var bad []string
	for line := range strings.Lines(string(out)) {
		pkg, imports, _ := strings.Cut(strings.TrimSpace(line), " ")
		if slices.Contains(strings.Fields(imports), "testing") && !slices.Contains(testingImportersAllowed, pkg) {
			bad = append(bad, pkg)
		}
	}
	if len(bad) > 0 {
		t.Errorf("the runner links packages that import testing: %s; move their test helpers to _test.go files or a package only tests import", strings.Join(bad, ", "))
	}
}

// exitDetail adds a failed command's stderr to its error.
func exitDetail(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return err.Error() + ": " + string(ee.Stderr)
	}
	return err.Error()
}

// TestRunnerPassesSettingsDown: no command of the runner hands settings to
// the function by changing its own environment; each reads its settings
// once and passes them (function.ConfigFromEnv, function.New).
func TestRunnerPassesSettingsDown(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(src), "\n") {
			if strings.Contains(line, "os.Setenv(") && !strings.HasPrefix(strings.TrimSpace(line), "//") {
				t.Errorf("%s:%d sets the environment: %s", f, i+1, strings.TrimSpace(line))
			}
		}
	}
}
