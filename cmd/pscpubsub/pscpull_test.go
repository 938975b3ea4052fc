package main

// The pull ingester is a command of its own, cmd/pscpull, so that the binary
// deployed links no pstest; the tests here that compare it with the bridge
// or run it against the official emulator start it built.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// pscpull is the ingester built once per test binary, in a folder
// TestMain removes.
var pscpull struct {
	once      sync.Once
	dir, path string
	err       error
}

// pscpullBinary builds ./cmd/pscpull (once) and returns its path.
func pscpullBinary(t testing.TB) string {
	t.Helper()
	pscpull.once.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			pscpull.err = err
			return
		}
		if pscpull.dir, err = os.MkdirTemp("", "pscpull-"); err != nil {
			pscpull.err = err
			return
		}
		path := filepath.Join(pscpull.dir, "pscpull")
		out, err := exec.Command(goTool, "build", "-o", path, "example.com/pscmessages/cmd/pscpull").CombinedOutput()
		if err != nil {
			// Every test that asks is told why, not only the first.
			pscpull.err = fmt.Errorf("go build ./cmd/pscpull: %v\n%s", err, out)
			return
		}
		pscpull.path = path
	})
	if pscpull.err != nil {
		t.Fatalf("building the pull ingester: %v", pscpull.err)
	}
	return pscpull.path
}

// removePscpull removes what pscpullBinary built, if anything.
func removePscpull() {
	if pscpull.dir != "" {
		os.RemoveAll(pscpull.dir)
	}
}
