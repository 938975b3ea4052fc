package localpg

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// These tests plant what another local user could put at a data
// directory's path before localpg runs, and check that localpg writes,
// chmods, chowns and deletes nothing through it. The other user is nobody:
// planting a file of theirs needs root.

// plantBase is a world-traversable folder of ours to plant things in, as
// /tmp is.
func plantBase(t *testing.T) string {
	t.Helper()
	base, err := os.MkdirTemp("", "planted-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	return base
}

// victim is a file only we may read or write, which a planted link points
// at. check fails the test if its content, mode or owner changed.
type victim struct {
	path string
	data []byte
	mode os.FileMode
}

func newVictim(t *testing.T) victim {
	t.Helper()
	dir := t.TempDir()
	v := victim{path: filepath.Join(dir, "secret"), data: []byte("only the owner may change this\n"), mode: 0o640}
	if err := os.WriteFile(v.path, v.data, v.mode); err != nil {
		t.Fatal(err)
	}
	return v
}

func (v victim) check(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(v.path)
	if err != nil {
		t.Fatalf("the victim file: %v", err)
	}
	fi, err := os.Stat(v.path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, v.data) {
		t.Errorf("the victim file was rewritten through a planted link: %q", b)
	}
	if fi.Mode().Perm() != v.mode {
		t.Errorf("the victim file's mode changed through a planted link: %v, want %v", fi.Mode().Perm(), v.mode)
	}
	if uid := fileOwner(fi); uid != os.Geteuid() {
		t.Errorf("the victim file was given to uid %d through a planted link", uid)
	}
}

func chownAll(t *testing.T, uid, gid int, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if err := os.Lchown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
}

func plantContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// wantUnsafe fails the test unless err is an *UnsafeDirError about path
// that says problem.
func wantUnsafe(t *testing.T, err error, path, problem string) {
	t.Helper()
	var unsafe *UnsafeDirError
	if !errors.As(err, &unsafe) {
		t.Fatalf("got %v, want an *UnsafeDirError about %s", err, path)
	}
	if unsafe.Path != path || !strings.Contains(err.Error(), problem) {
		t.Fatalf("got %q, want it to name %s and say %q", err, path, problem)
	}
}

// A folder above the data directory that others may write to, and that is
// not sticky, lets them swap what it holds after every check.
func TestStartRefusesAParentOthersCanWrite(t *testing.T) {
	parent := filepath.Join(plantBase(t), "shared")
	if err := os.Mkdir(parent, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(parent, 0o777); err != nil {
		t.Fatal(err)
	}
	c, err := Start(plantContext(t), Options{Dir: filepath.Join(parent, "pgdata")})
	if err == nil {
		c.Destroy()
	}
	wantUnsafe(t, err, parent, "is writable by group or others (mode 0777)")
}

// ourDataDir is a data directory that passes the ownership rules, with a
// PG_VERSION, as a reused cluster's: only the links planted in it can trip
// Start up.
func ourDataDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(plantBase(t), "pgdata")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Links in a data directory that passes the ownership rules (the server's
// user, postgres when we are root, owns it and can plant them) are never
// followed either: not for the owner file, which Start truncated, nor for
// postgresql.conf, which it rewrote, chmodded 0600 and gave to postgres.
func TestStartNeverWritesThroughALinkInTheDataDir(t *testing.T) {
	for _, name := range []string{ownerFile, "postgresql.conf"} {
		t.Run(name, func(t *testing.T) {
			v := newVictim(t)
			dir := ourDataDir(t)
			link := filepath.Join(dir, name)
			if err := os.Symlink(v.path, link); err != nil {
				t.Fatal(err)
			}
			c, err := Start(plantContext(t), Options{Dir: dir})
			if err == nil {
				c.Destroy()
			}
			v.check(t)
			wantUnsafe(t, err, link, "is a symbolic link")
		})
	}
}

// A hard link to our file in the data directory would be truncated and
// rewritten just as a symbolic one.
func TestStartNeverWritesThroughAHardLink(t *testing.T) {
	v := newVictim(t)
	dir := ourDataDir(t)
	link := filepath.Join(dir, "postgresql.conf")
	if err := os.Link(v.path, link); err != nil {
		t.Fatalf("%v (the victim and the data directory must be on one file system)", err)
	}
	c, err := Start(plantContext(t), Options{Dir: dir})
	if err == nil {
		c.Destroy()
	}
	v.check(t)
	wantUnsafe(t, err, link, "has other hard links")
}

// The folders localpg creates are private: 0700, or 0711 when we are root
// so that the server's user can pass through, and the data directory
// belongs to the server's user.
func TestStartCreatesPrivateFolders(t *testing.T) {
	parent := filepath.Join(plantBase(t), "pscmessages-"+strconv.Itoa(os.Getuid()))
	dir := filepath.Join(parent, "pgdata")
	c, err := Start(plantContext(t), Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Destroy()
	want := os.FileMode(0o700)
	if os.Geteuid() == 0 {
		want = 0o711
	}
	fi, err := os.Lstat(parent)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != want || fileOwner(fi) != os.Geteuid() {
		t.Errorf("%s: mode %v, uid %d; want %v and ours", parent, fi.Mode().Perm(), fileOwner(fi), want)
	}
	fi, err = os.Lstat(dir)
	if err != nil {
		t.Fatal(err)
	}
	server := os.Geteuid()
	if c.cred != nil {
		server = int(c.cred.Uid)
	}
	if fi.Mode().Perm() != 0o700 || fileOwner(fi) != server {
		t.Errorf("%s: mode %v, uid %d; want 0700 and uid %d", dir, fi.Mode().Perm(), fileOwner(fi), server)
	}
}
