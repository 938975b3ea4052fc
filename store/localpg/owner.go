package localpg

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
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
	f, err := os.OpenFile(filepath.Join(c.Dir, ownerFile), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
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
	if err := c.owner.Truncate(0); err != nil {
		return err
	}
	_, err := c.owner.WriteAt([]byte(fmt.Sprintf("pid=%d\nport=%d\n", os.Getpid(), c.port)), 0)
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

// CheckInUse returns an *InUseError when a live process other than ours
// uses the cluster in dir, for callers about to change dir (such as
// deleting it) without starting it.
func CheckInUse(dir string) error {
	f, err := os.Open(filepath.Join(dir, ownerFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	defer f.Close() // also releases the lock if we got it
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
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
