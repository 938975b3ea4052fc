// Package localpgtest ties throwaway PostgreSQL clusters and PgBouncers from
// package localpg to a test's lifetime. It is apart from localpg so that the
// runner, which links localpg to start a local database, does not link
// package testing.
package localpgtest

import (
	"context"
	"testing"
	"time"

	"example.com/pscmessages/store/localpg"
)

// Start starts a cluster for the duration of t and destroys it in
// t.Cleanup. When PostgreSQL is not installed it fails the test with the
// install hint rather than skipping: a skipped database test passes silently.
func Start(t testing.TB, opts localpg.Options) *localpg.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	c, err := localpg.Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() && opts.Log == nil {
			t.Logf("localpg: tail of %s:\n%s", c.LogFile(), c.LogTail())
		}
		if err := c.Destroy(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// StartBouncer starts a PgBouncer for the duration of t and stops it in
// t.Cleanup. When pgbouncer is not installed the test fails, naming the
// package to install; it is never skipped.
func StartBouncer(t testing.TB, opts localpg.BouncerOptions) *localpg.Bouncer {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	b, err := localpg.StartBouncer(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("localpg: tail of %s:\n%s", b.LogFile(), b.LogTail())
		}
		if err := b.Destroy(); err != nil {
			t.Error(err)
		}
	})
	return b
}
