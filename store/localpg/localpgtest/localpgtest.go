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

// template is the test binary's one initdb, made at the first Start after
// Setup and removed by Setup's teardown.
var template struct {
	sync.Mutex
	enabled bool
	t       *localpg.Template
}

// shared holds the clusters of Shared, by kind, from their first use to
// Setup's teardown.
var shared struct {
	sync.Mutex
	clusters map[sharedKind]*localpg.Cluster
}

// sharedKind is what tells one shared cluster from another: the options
// that change how clients log in or what a crash keeps.
type sharedKind struct {
	password     string
	tls, durable bool
}

// Run runs the tests between Setup and its teardown: a TestMain with nothing
// else to prepare calls os.Exit(localpgtest.Run(m)).
func Run(m *testing.M) int {
	teardown := Setup()
	defer teardown()
	return m.Run()
}

// RunWithCluster runs the tests beside one cluster that they share, started
// with opts after Setup (so a copy of the template, as the clusters of
// Start are) and stored in *c: a TestMain whose tests share a cluster calls
// os.Exit(localpgtest.RunWithCluster(m, opts, &cluster)). When the cluster
// cannot start, no test runs and the binary fails: a database test that
// skipped would pass silently.
func RunWithCluster(m *testing.M, opts localpg.Options, c **localpg.Cluster) int {
	teardown := Setup()
	defer teardown()
	cluster, err := StartShared(context.Background(), opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: cannot start a throwaway PostgreSQL cluster:", err)
		return 1
	}
	defer func() {
		if err := cluster.Destroy(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}()
	*c = cluster
	return m.Run()
}

// Setup prepares the test binary's throwaway clusters; the returned teardown
// undoes it once the tests ran. A TestMain that starts a cluster for the
// whole package calls Setup first, so that this cluster benefits too.
// Without Setup, each Start runs initdb and clusters live in TMPDIR.
//
// From Setup on, every Start copies one localpg.Template made at the first
// one. And unless TMPDIR is set, Setup points TMPDIR at a private folder in
// a RAM file system (/dev/shm on Linux, when it has room): clusters,
// templates, t.TempDir and the children tests start then write no disk.
// Throwaway clusters run with fsync off and are deleted after the test, so
// a disk buys them nothing, while writing their files through a disk file
// system's page cache was much of the tests' CPU.
func Setup() (teardown func()) {
	var undo []func()
	if os.Getenv("TMPDIR") == "" {
		if parent := ramParent(); parent != "" {
			if dir, err := os.MkdirTemp(parent, "pscmessages-test-"); err == nil {
				if os.Geteuid() == 0 {
					// The server then runs as OS user postgres, which must
					// pass through, as through /tmp, without listing it.
					os.Chmod(dir, 0o711)
				}
				os.Setenv("TMPDIR", dir)
				undo = append(undo, func() {
					os.Unsetenv("TMPDIR")
					os.RemoveAll(dir)
				})
			}
		}
	}
	template.Lock()
	template.enabled = true
	template.Unlock()
	return func() {
		shared.Lock()
		for _, c := range shared.clusters {
			if err := c.Destroy(); err != nil {
				fmt.Fprintln(os.Stderr, err)
			}
		}
		shared.clusters = nil
		shared.Unlock()
		template.Lock()
		template.enabled = false
		if template.t != nil {
			if err := template.t.Remove(); err != nil {
				fmt.Fprintln(os.Stderr, err)
			}
			template.t = nil
		}
		template.Unlock()
		for _, f := range undo {
			f()
		}
	}
}

// sharedTemplate returns Setup's template, making it at the first call;
// nil outside Setup and teardown.
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

// StartShared starts a cluster for a test binary's TestMain to share among
// its tests, after Setup: a copy of the template unless opts names one or a
// BinDir. The caller destroys it.
func StartShared(ctx context.Context, opts localpg.Options) (*localpg.Cluster, error) {
	if opts.Template == nil {
		tmpl, err := sharedTemplate(ctx, opts.BinDir)
		if err != nil {
			return nil, err
		}
		opts.Template = tmpl
	}
	return localpg.Start(ctx, opts)
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

// Shared returns the test binary's cluster started with opts, which may set
// only Password, TLS and Durable: the first call of each kind starts it, and
// Setup's teardown (the end of Run or RunWithCluster) destroys it. Tests that
// need a login, TLS or durability of their own, but not a server of their
// own, share it instead of starting one each, since a cluster's start and
// stop cost more than most such tests. Its tests must use databases and
// roles of their own and change nothing server-wide (a setting, the
// superuser's password, the server's state). Outside Setup the test fails.
func Shared(t testing.TB, opts localpg.Options) *localpg.Cluster {
	t.Helper()
	kind := sharedKind{password: opts.Password, tls: opts.TLS, durable: opts.Durable}
	if opts.Dir != "" || opts.Port != 0 || opts.PasswordFile != "" || opts.Settings != nil ||
		opts.BinDir != "" || opts.Log != nil || opts.Template != nil {
		t.Fatal("localpgtest.Shared: only Password, TLS and Durable may be set; start a cluster of the test's own with Start")
	}
	template.Lock()
	enabled := template.enabled
	template.Unlock()
	if !enabled {
		t.Fatal("localpgtest.Shared needs the test binary's TestMain to call localpgtest.Run or RunWithCluster")
	}
	shared.Lock()
	defer shared.Unlock()
	if c := shared.clusters[kind]; c != nil {
		return c
	}
	// The cluster outlives this test: its start is not bound to the test's context.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := StartShared(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if shared.clusters == nil {
		shared.clusters = map[sharedKind]*localpg.Cluster{}
	}
	shared.clusters[kind] = c
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
