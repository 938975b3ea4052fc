// Package localpgtest ties throwaway PostgreSQL clusters and PgBouncers from
// package localpg to a test's lifetime. It is apart from localpg so that the
// runner, which links localpg to start a local database, does not link
// package testing.
package localpgtest

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"example.com/pscmessages/store/localpg"
)

// template is the test binary's one initdb, made at the first Start under
// Run and removed when Run returns.
var template struct {
	sync.Mutex
	enabled bool
	t       *localpg.Template
}

// Run runs the tests (m.Run) with one localpg.Template shared by every Start
// of the test binary, and removes it afterwards: a TestMain calls
// os.Exit(localpgtest.Run(m)). Without it, each Start runs initdb.
//
// Unless TMPDIR is set, Run also points TMPDIR at a private folder in a RAM
// file system (/dev/shm on Linux, when it has room) for the duration:
// clusters, their templates, t.TempDir and the children tests start then
// write no disk. Throwaway clusters run with fsync off and are deleted
// after the test, so a disk buys them nothing, while writing their files
// through a disk file system's page cache was much of the tests' CPU.
func Run(m *testing.M) int {
	if os.Getenv("TMPDIR") == "" {
		if parent := ramParent(); parent != "" {
			if dir, err := os.MkdirTemp(parent, "pscmessages-test-"); err == nil {
				if os.Geteuid() == 0 {
					// The server then runs as OS user postgres, which must
					// pass through, as through /tmp, without listing it.
					os.Chmod(dir, 0o711)
				}
				os.Setenv("TMPDIR", dir)
				defer func() {
					os.Unsetenv("TMPDIR")
					os.RemoveAll(dir)
				}()
			}
		}
	}
	template.Lock()
	template.enabled = true
	template.Unlock()
	code := m.Run()
	template.Lock()
	defer template.Unlock()
	template.enabled = false
	if template.t != nil {
		if err := template.t.Remove(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = max(code, 1)
		}
		template.t = nil
	}
	return code
}

// sharedTemplate returns Run's template, making it at the first call; nil
// outside Run.
func sharedTemplate(ctx context.Context, binDir string) (*localpg.Template, error) {
	template.Lock()
	defer template.Unlock()
	if !template.enabled || binDir != "" {
		return nil, nil
	}
	if template.t == nil {
		t, err := localpg.NewTemplate(ctx, "")
		if err != nil {
			return nil, err
		}
		template.t = t
	}
	return template.t, nil
}

// Start starts a cluster for the duration of t and destroys it in
// t.Cleanup. When PostgreSQL is not installed it fails the test with the
// install hint rather than skipping: a skipped database test passes silently.
// Under Run, a new cluster is a copy of the test binary's template.
func Start(t testing.TB, opts localpg.Options) *localpg.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if opts.Template == nil {
		tmpl, err := sharedTemplate(ctx, opts.BinDir)
		if err != nil {
			t.Fatal(err)
		}
		opts.Template = tmpl
	}
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
