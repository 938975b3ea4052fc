package localpg

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ownerFile, in the data directory, names the process that uses the
// cluster and the port its server listens on. That process holds an
// exclusive flock on the file for as long as it uses the cluster, so
// liveness needs no guessing from a PID that may have been reused: the
// kernel drops the lock when the process dies, however it dies.
const ownerFile = "localpg.owner"

// InUseError reports that the data directory belongs to another live
// process: Start refuses it rather than stop that process's server.
type InUseError struct {
	Dir  string
	PID  int // the owner's process id
	Port int // its server's port; 0 while it is still starting
}

func (e *InUseError) Error() string {
	port := "its server still starting"
	if e.Port > 0 {
		port = fmt.Sprintf("server on 127.0.0.1:%d", e.Port)
	}
	return fmt.Sprintf("localpg: %s is in use by process %d (%s); stop that process, or use another data directory", e.Dir, e.PID, port)
}

// lockOwner takes the owner lock of c.Dir, or returns an *InUseError naming
// the live process that holds it. A holder in our own process (another
// Cluster on the same Dir, as tests simulating a crashed run do) does not
// count: the caller then proceeds without the lock, as before owners
// existed.
func (c *Cluster) lockOwner() error {
	if c.owner != nil {
		return nil
	}
	f, err := openNoFollow(filepath.Join(c.Dir, ownerFile), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	if err := flockBriefly(f, syscall.LOCK_EX); err != nil {
		defer f.Close()
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("localpg: locking %s: %w", f.Name(), err)
		}
		pid, port := readOwner(f)
		if pid == os.Getpid() {
			return nil
		}
		return &InUseError{Dir: c.Dir, PID: pid, Port: port}
	}
	c.owner = f
	if err := c.writeOwner(); err != nil {
		c.unlockOwner()
		return fmt.Errorf("localpg: %w", err)
	}
	return nil
}

// writeOwner records our PID and the current port in the owner file.
func (c *Cluster) writeOwner() error {
	if c.owner == nil {
		return nil
	}
	return writeOwnerFile(c.owner, c.port)
}

// writeOwnerFile replaces the owner file's content with this process's PID
// and port (0 while no server runs).
func writeOwnerFile(f *os.File, port int) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	_, err := f.WriteAt([]byte(fmt.Sprintf("pid=%d\nport=%d\n", os.Getpid(), port)), 0)
	return err
}

// unlockOwner releases the lock. The file stays: it is only read while
// someone holds the lock.
func (c *Cluster) unlockOwner() {
	if c.owner != nil {
		c.owner.Close()
		c.owner = nil
	}
}

func readOwner(f *os.File) (pid, port int) {
	if _, err := f.Seek(0, 0); err != nil {
		return 0, 0
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		n, _ := strconv.Atoi(v)
		switch k {
		case "pid":
			pid = n
		case "port":
			port = n
		}
	}
	return pid, port
}

// lockWait bounds how long flockBriefly waits for a lock that someone else
// holds: another runner's CheckInUse holds it for a moment, and a runner
// must not take that for a live owner (the file then still names the last,
// possibly dead, owner). A real owner holds it for its whole life, so
// waiting only delays the refusal, by at most lockWait.
const (
	lockWait     = time.Second
	lockWaitStep = 20 * time.Millisecond
)

// flockBriefly takes the flock how (LOCK_EX or LOCK_SH) on f, retrying on
// EWOULDBLOCK for up to lockWait; it returns EWOULDBLOCK if the lock is
// still held then. A holder in our own process is not waited for: the
// callers treat it as ours.
func flockBriefly(f *os.File, how int) error {
	deadline := time.Now().Add(lockWait)
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			return err
		}
		if pid, _ := readOwner(f); pid == os.Getpid() {
			return err
		}
		time.Sleep(lockWaitStep)
	}
}

// CheckInUse returns an *InUseError when a live process other than ours
// uses the cluster in dir, for callers about to change dir without
// starting it. It takes a shared lock, so two checks never see each other
// as an owner, and waits briefly (lockWait) for a lock held only for a
// moment. Its answer can be out of date at once: to delete dir, use
// RemoveUnused, which holds the lock across the deletion.
func CheckInUse(dir string) error {
	if err := checkExisting(dir); err != nil {
		return unlessMissing(err)
	}
	f, err := openNoFollow(filepath.Join(dir, ownerFile), os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	defer f.Close() // also releases the lock if we got it
	err = flockBriefly(f, syscall.LOCK_SH)
	if err == nil {
		return nil
	}
	if !errors.Is(err, syscall.EWOULDBLOCK) {
		return fmt.Errorf("localpg: locking %s: %w", f.Name(), err)
	}
	if pid, port := readOwner(f); pid != os.Getpid() {
		return &InUseError{Dir: dir, PID: pid, Port: port}
	}
	return nil
}

// testHookRemoveLocked, when set (by tests only), runs in RemoveUnused while
// it holds the owner lock, before it deletes anything.
var testHookRemoveLocked func()

// RemoveUnused deletes dir, a cluster's data directory, unless a live
// process other than ours uses it (*InUseError). It holds dir's owner lock
// from that check until the directory is gone, recording our PID in the
// owner file, so a runner that starts on dir meanwhile is refused rather
// than having its live data deleted under it (a check, then a separate
// delete, left that window open). A dir that does not exist is no error.
func RemoveUnused(dir string) error {
	// Never through a symbolic link, nor in a folder someone else could
	// have planted: either would delete what its maker chose.
	if err := checkExisting(dir); err != nil {
		return unlessMissing(err)
	}
	f, err := openNoFollow(filepath.Join(dir, ownerFile), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	defer f.Close()
	if err := flockBriefly(f, syscall.LOCK_EX); err != nil {
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("localpg: locking %s: %w", f.Name(), err)
		}
		if pid, port := readOwner(f); pid != os.Getpid() {
			return &InUseError{Dir: dir, PID: pid, Port: port}
		}
		// Held by a Cluster of our own process (tests simulating a
		// crashed run): as before, ours to delete.
	} else {
		if err := writeOwnerFile(f, 0); err != nil {
			return fmt.Errorf("localpg: %w", err)
		}
	}
	if testHookRemoveLocked != nil {
		testHookRemoveLocked()
	}
	if err := removeContents(dir, ownerFile); err != nil {
		return err
	}
	// The owner file goes last, still locked: a runner that opened it
	// meanwhile is refused; one that comes after finds no folder.
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	return nil
}

// checkExisting applies the data directory rules (datadir.go) to dir, an
// existing or missing data directory named by a caller.
func checkExisting(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	cred, err := serverCred()
	if err != nil {
		return err
	}
	return checkExistingDataDir(abs, cred)
}

// unlessMissing is err, or nil when it says that something is missing.
func unlessMissing(err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// removeContents deletes what the folder dir holds, but keep, through an
// os.Root: nothing it deletes is reached through a symbolic link, even one
// that replaced dir after it was checked.
func removeContents(dir, keep string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	defer root.Close()
	opened, err := root.Stat(".")
	if err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	if named, err := os.Lstat(dir); err != nil || !os.SameFile(opened, named) {
		return &UnsafeDirError{Path: dir, Problem: "changed while it was being checked"}
	}
	entries, err := fs.ReadDir(root.FS(), ".")
	if err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	for _, e := range entries {
		if e.Name() == keep {
			continue
		}
		if err := root.RemoveAll(e.Name()); err != nil {
			return fmt.Errorf("localpg: %w", err)
		}
	}
	return nil
}
