package main

import (
	"context"
	"strings"
	"testing"
)

// TestHelpShowsTheFlags: -h prints the usage line (flags, no command word)
// and every flag, and is no error.
func TestHelpShowsTheFlags(t *testing.T) {
	var out strings.Builder
	if err := run(context.Background(), []string{"-h"}, &out); err != nil {
		t.Fatalf("-h: %v", err)
	}
	for _, want := range []string{"go run ./cmd/pscpull -subscription S", "-subscription", "-topic", "-project",
		"-max-outstanding-messages", "-max-outstanding-bytes", "-streams", "-drain-timeout"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("-h does not show %q:\n%s", want, out.String())
		}
	}
}

// TestSubscriptionIsRequired: without -subscription (or PUBSUB_SUBSCRIPTION)
// the command stops before it connects anywhere.
func TestSubscriptionIsRequired(t *testing.T) {
	t.Setenv("PUBSUB_SUBSCRIPTION", "")
	var out strings.Builder
	err := run(context.Background(), []string{"-topic", "T"}, &out)
	if err == nil || !strings.Contains(err.Error(), "-subscription is required") {
		t.Fatalf("got %v, want -subscription is required", err)
	}
}

// TestTakesFlagsOnly: a word before the flags (`pscpull pull -subscription S`)
// is refused by name, rather than silently ending flag parsing and leaving
// every flag after it unset.
func TestTakesFlagsOnly(t *testing.T) {
	var out strings.Builder
	err := run(context.Background(), []string{"pull", "-subscription", "S"}, &out)
	if err == nil || !strings.Contains(err.Error(), "flags only") {
		t.Fatalf("got %v, want an error saying pscpull takes flags only", err)
	}
}
