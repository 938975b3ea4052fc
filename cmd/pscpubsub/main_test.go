package main

import (
	"strings"
	"testing"
)

// TestHelpListsThePubSubCommands: `go run ./cmd/pscpubsub help` lists serve
// and publish, -h shows serve's Pub/Sub flags, and the runner's operator
// commands and the pull ingester are other commands'.
func TestHelpListsThePubSubCommands(t *testing.T) {
	stdout, stderr, code := runMain(t, nil, "help")
	if code != 0 {
		t.Fatalf("help: exit %d\n%s%s", code, stdout, stderr)
	}
	for _, want := range []string{"  serve ", "  publish ", "go run ./cmd/pscpubsub", "deliver a Pub/Sub topic"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("help does not show %q:\n%s", want, stdout)
		}
	}
	for _, other := range []string{"  migrate ", "  deadletters "} {
		if strings.Contains(stdout, other) {
			t.Errorf("help lists %q, which is go run ./cmd/pscmessages':\n%s", other, stdout)
		}
	}
	if strings.Contains(stdout, "  pull ") {
		t.Errorf("help lists pull, which is go run ./cmd/pscpull:\n%s", stdout)
	}
	if _, stderr, _ := runMain(t, nil, "-h"); !strings.Contains(stderr, "-pubsub-concurrency") || !strings.Contains(stderr, "-fresh") {
		t.Errorf("-h does not show serve's flags:\n%s", stderr)
	}
}
