package localrun

import (
	"context"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
)

// TestStartLocalPostgresKeepsParentMode pins that the runner does not reset
// the mode of a folder it did not create that holds LOCAL_PGDATA: with
// LOCAL_PGDATA=$(mktemp -d) that folder is /tmp, and chmod 0755 there (as
// root) dropped its sticky bit and write access for everyone else. Only the
// traverse bits the server's OS user needs may be added. An already
// cancelled context stops startLocalPostgres before initdb.
func TestStartLocalPostgresKeepsParentMode(t *testing.T) {
	tests := []struct {
		name string
		mode os.FileMode // as set before the run
		want os.FileMode // after it
	}{
		{"sticky world-writable like /tmp", 0o777 | os.ModeSticky, 0o777 | os.ModeSticky},
		{"private", 0o700, 0o711},
		{"private sticky setgid", 0o750 | os.ModeSticky | os.ModeSetgid, 0o751 | os.ModeSticky | os.ModeSetgid},
	}
	if os.Geteuid() != 0 {
		// The server runs as us: nothing needs to pass through.
		tests[1].want, tests[2].want = tests[1].mode, tests[2].mode
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			top, err := os.MkdirTemp("", "serve-perm-") // t.TempDir nests 0700 folders
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(top) })
			if err := os.Chmod(top, 0o755); err != nil {
				t.Fatal(err)
			}
			parent := filepath.Join(top, "parent")
			if err := os.Mkdir(parent, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(parent, tt.mode); err != nil {
				t.Fatal(err)
			}
			t.Setenv("LOCAL_PGDATA", filepath.Join(parent, "pgdata"))
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			if c, err := startLocalPostgres(ctx, false); err == nil {
				c.Destroy()
				t.Fatal("startLocalPostgres with a cancelled context succeeded")
			}
			fi, err := os.Stat(parent)
			if err != nil {
				t.Fatal(err)
			}
			got := fi.Mode() & (os.ModePerm | os.ModeSticky | os.ModeSetuid | os.ModeSetgid)
			if got != tt.want {
				t.Fatalf("mode of the folder holding LOCAL_PGDATA: got %v, want %v (set %v before)", got, tt.want, tt.mode)
			}
			if os.Geteuid() == 0 {
				// The server's OS user must still get through it.
				if _, err := user.Lookup("postgres"); err != nil {
					t.Fatalf("running as root needs the postgres OS user: %v", err)
				}
				if out, err := exec.Command("su", "postgres", "-s", "/bin/sh", "-c", `cd "$0"`, parent).CombinedOutput(); err != nil {
					t.Fatalf("postgres cannot traverse %s: %v\n%s", parent, err, out)
				}
			}
		})
	}
}

// TestStartLocalPostgresCreatesParent pins that a missing parent folder is
// created private: 0700, or 0711 as root, so that the server's OS user can
// pass through it but no one can list or change what it holds.
func TestStartLocalPostgresCreatesParent(t *testing.T) {
	parent := filepath.Join(t.TempDir(), "a", "b")
	t.Setenv("LOCAL_PGDATA", filepath.Join(parent, "pgdata"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if c, err := startLocalPostgres(ctx, false); err == nil {
		c.Destroy()
		t.Fatal("startLocalPostgres with a cancelled context succeeded")
	}
	fi, err := os.Stat(parent)
	if err != nil {
		t.Fatal(err)
	}
	want := os.FileMode(0o700)
	if os.Geteuid() == 0 {
		want = 0o711
	}
	if got := fi.Mode() & (os.ModePerm | os.ModeSticky); got != want {
		t.Fatalf("mode of the created folder: got %v, want %v", got, want)
	}
}

// plantedTMPDIR points TMPDIR, and so the default data folder, at a new
// sticky world-writable folder, as /tmp is, and returns it.
func plantedTMPDIR(t *testing.T) string {
	t.Helper()
	base, err := os.MkdirTemp("", "planted-tmp-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", base)
	t.Setenv("LOCAL_PGDATA", "")
	return base
}

// TestServeFreshNeverFollowsADataFolderLink: with the data folder a
// symbolic link to another folder, -fresh refuses it, naming the link, and
// never deletes the contents of the folder it points to.
func TestServeFreshNeverFollowsADataFolderLink(t *testing.T) {
	plantedTMPDIR(t)
	dir := defaultPGData()
	if err := os.Mkdir(filepath.Dir(dir), 0o700); err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	kept := filepath.Join(target, "kept")
	if err := os.WriteFile(kept, []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, dir); err != nil {
		t.Fatal(err)
	}
	c, err := startLocalPostgres(context.Background(), true)
	if err == nil {
		c.Destroy()
	}
	if _, serr := os.Stat(kept); serr != nil {
		t.Errorf("-fresh deleted what the data folder's link pointed to: %v", serr)
	}
	if err == nil || !strings.Contains(err.Error(), dir+": it is a symbolic link") {
		t.Fatalf("got %v, want a refusal of the link %s", err, dir)
	}
}
