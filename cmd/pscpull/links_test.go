package main

import (
	"strings"
	"testing"

	"example.com/pscmessages/cmd/internal/linkcheck"
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
	bad, err := linkcheck.Forbidden(".", "", linkedNowhere)
	if err != nil {
		t.Fatal(err)
	}
	if len(bad) > 0 {
		t.Errorf("the pull ingester links %s; the local bridge's fakes belong in cmd/pscpubsub, test helpers in _test.go files or packages only tests import", strings.Join(bad, ", "))
	}
}
