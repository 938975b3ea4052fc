//go:build e2e

package localpg

// Planting a folder owned by another user needs root, so these tests are
// in the end-to-end tier, which CI runs as root; run as another user they
// fail rather than skip.

import (
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"
)

// otherUser returns nobody's uid and gid.
func otherUser(t *testing.T) (int, int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("planting a folder owned by another user needs root (chown): run the e2e tier as root, as CI does")
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("these tests need an OS user nobody: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return uid, gid
}

// A data directory another user made, with a cluster's PG_VERSION and an
// owner file linked to our file: Start must not take it for its own cluster,
// or it would truncate our file through the link.
func TestStartRefusesADataDirAnotherUserMade(t *testing.T) {
	uid, gid := otherUser(t)
	v := newVictim(t)
	dir := filepath.Join(plantBase(t), "pgdata")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(v.path, filepath.Join(dir, ownerFile)); err != nil {
		t.Fatal(err)
	}
	chownAll(t, uid, gid, dir, filepath.Join(dir, "PG_VERSION"), filepath.Join(dir, ownerFile))

	c, err := Start(plantContext(t), Options{Dir: dir})
	if err == nil {
		c.Destroy()
	}
	v.check(t)
	wantUnsafe(t, err, dir, "is owned by uid "+strconv.Itoa(uid))
	if err := CheckInUse(dir); err == nil {
		t.Error("CheckInUse accepted the planted folder")
	}
	if err := RemoveUnused(dir); err == nil {
		t.Error("RemoveUnused deleted the planted folder")
	}
}

// The folder above the data directory, made by another user before us
// (the runner's default, $TMPDIR/pscmessages-UID, has a guessable name).
func TestStartRefusesAParentAnotherUserMade(t *testing.T) {
	uid, gid := otherUser(t)
	parent := filepath.Join(plantBase(t), "pscmessages-"+strconv.Itoa(os.Getuid()))
	if err := os.Mkdir(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	chownAll(t, uid, gid, parent)
	dir := filepath.Join(parent, "pgdata")

	c, err := Start(plantContext(t), Options{Dir: dir})
	if err == nil {
		c.Destroy()
	}
	if _, err := os.Lstat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Start made %s in the planted folder (%v)", dir, err)
	}
	wantUnsafe(t, err, parent, "is owned by uid "+strconv.Itoa(uid))
}

// The folder above the data directory is a link another user planted to a
// folder of ours: Start must not create the data directory through it.
func TestStartRefusesAParentLinkAnotherUserMade(t *testing.T) {
	uid, gid := otherUser(t)
	target := t.TempDir()
	parent := filepath.Join(plantBase(t), "pscmessages-"+strconv.Itoa(os.Getuid()))
	if err := os.Symlink(target, parent); err != nil {
		t.Fatal(err)
	}
	chownAll(t, uid, gid, parent)

	c, err := Start(plantContext(t), Options{Dir: filepath.Join(parent, "pgdata")})
	if err == nil {
		c.Destroy()
	}
	if entries, _ := os.ReadDir(target); len(entries) > 0 {
		t.Errorf("Start wrote %s through the planted link", entries[0].Name())
	}
	wantUnsafe(t, err, parent, "is owned by uid "+strconv.Itoa(uid))
}

// serve -fresh on a data directory that is a link to a folder of ours:
// RemoveUnused and Start refuse the link and never delete the contents of
// the folder it points to.
func TestRemoveUnusedNeverFollowsADataDirLink(t *testing.T) {
	for _, planter := range []string{"us", "another user"} {
		t.Run("planted by "+planter, func(t *testing.T) {
			target := t.TempDir()
			kept := filepath.Join(target, "kept")
			if err := os.WriteFile(kept, []byte("mine"), 0o600); err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(plantBase(t), "pgdata")
			if err := os.Symlink(target, dir); err != nil {
				t.Fatal(err)
			}
			if planter != "us" {
				uid, gid := otherUser(t)
				chownAll(t, uid, gid, dir)
			}
			err := RemoveUnused(dir)
			if _, err := os.Stat(kept); err != nil {
				t.Errorf("RemoveUnused deleted what the link pointed to: %v", err)
			}
			wantUnsafe(t, err, dir, "is a symbolic link")
			c, err := Start(plantContext(t), Options{Dir: dir})
			if err == nil {
				c.Destroy()
			}
			wantUnsafe(t, err, dir, "is a symbolic link")
		})
	}
}
