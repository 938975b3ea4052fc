package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// linkedNowhere are packages the deployed ingester must not link: package
// testing (which registers its flags and drags test machinery into a
// production binary) and pstest, the in-process fake Pub/Sub of the local
// bridge in cmd/pscpubsub, which imports testing.
var linkedNowhere = []string{"testing", "cloud.google.com/go/pubsub/v2/pstest"}

// TestIngesterLinksNeitherTestingNorPstest lists what `go build
// ./cmd/pscpull` links, the binary cloudbuild.yaml deploys, and fails on
// package testing, pstest and every package that imports them.
func TestIngesterLinksNeitherTestingNorPstest(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list what the command links: %v", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", ".").Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("go list -deps: %v: %s", err, ee.Stderr)
		}
		t.Fatalf("go list -deps: %v", err)
	}
	var bad []string
	for line := range strings.Lines(string(out)) {
		pkg, imports, _ := strings.Cut(strings.TrimSpace(line), " ")
		if slices.Contains(linkedNowhere, pkg) {
			bad = append(bad, pkg)
			continue
		}
		for _, imp := range strings.Fields(imports) {
			if slices.Contains(linkedNowhere, imp) {
				bad = append(bad, pkg+" (imports "+imp+")")
			}
		}
	}
	if len(bad) > 0 {
		t.Errorf("the pull ingester links %s; the local bridge's fakes belong in cmd/pscpubsub, test helpers in _test.go files or packages only tests import", strings.Join(bad, ", "))
	}
}
