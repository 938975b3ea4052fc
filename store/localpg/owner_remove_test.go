package localpg

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// deadOwner writes an owner file naming a process that is not running, as
// a runner that crashed leaves it.
func deadOwner(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, ownerFile)
	if err := os.WriteFile(p, []byte("pid=2147483646\nport=5999\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRemoveUnusedHoldsTheLockWhileDeleting pins `serve -fresh`: between the
// in-use check and the end of the deletion, a runner that tries to take the
// folder must be refused. Checking, releasing, then deleting let a runner
// start in between and lose its live data.
func TestRemoveUnusedHoldsTheLockWhileDeleting(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pgdata")
	if err := os.MkdirAll(filepath.Join(dir, "base"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	owner := deadOwner(t, dir)
	called := false
	testHookRemoveLocked = func() {
		called = true
		// What a starting runner's lockOwner does, on its own open file.
		f, err := os.OpenFile(owner, os.O_RDWR, 0)
		if err != nil {
			t.Errorf("owner file gone before the data: %v", err)
			return
		}
		defer f.Close()
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			t.Errorf("a runner could take the folder while -fresh was about to delete it (flock: %v)", err)
		}
		if pid, _ := readOwner(f); pid != os.Getpid() {
			t.Errorf("owner file names PID %d during the deletion, want ours (%d)", pid, os.Getpid())
		}
	}
	t.Cleanup(func() { testHookRemoveLocked = nil })
	if err := RemoveUnused(dir); err != nil {
		t.Fatal(err)
	}
	if !called {
		t.Fatal("RemoveUnused never held the lock")
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s still exists: %v", dir, err)
	}
	if err := RemoveUnused(dir); err != nil {
		t.Fatalf("RemoveUnused of a missing folder: %v", err)
	}
}

// TestCheckInUseIsNotFooledByAnotherCheck: two runners checking the same
// folder at once must not see each other as its owner. CheckInUse used to
// take the exclusive lock, so the other check failed and reported the last
// (dead) owner as live.
func TestCheckInUseIsNotFooledByAnotherCheck(t *testing.T) {
	dir := t.TempDir()
	owner := deadOwner(t, dir)
	f, err := os.Open(owner)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// The other runner's check, holding the lock as CheckInUse does.
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	if err := CheckInUse(dir); err != nil {
		t.Fatalf("CheckInUse during another check: %v", err)
	}
}
