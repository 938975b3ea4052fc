//go:build e2e

package main

import (
	"os/exec"
	"testing"
)

// TestEveryCommandBuilds: `go build ./cmd/...` builds every command (and
// so `go install ./cmd/...` installs them), into a folder of the test's.
// It is in the end-to-end tier: linking every command costs more CPU than
// the rest of the package's tests, while `go test ./...` already compiles
// each command.
func TestEveryCommandBuilds(t *testing.T) {
	goTool := goCommand(t)
	build := exec.Command(goTool, "build", "-o", t.TempDir(), "./cmd/...")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/...: %v\n%s", err, out)
	}
}
