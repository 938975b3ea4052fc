package localpg

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// postmasterPID reads the postmaster's pid from the first line of
// postmaster.pid.
func postmasterPID(dir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	pid, err := strconv.Atoi(string(bytes.TrimSpace(line)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("bad pid in %s/postmaster.pid: %q", dir, line)
	}
	return pid, nil
}

// killTree SIGKILLs the postmaster and its children and waits until they are
// dead. The children go too: until the last one exits, the shared memory is
// in use and a new postmaster refuses to start. Children are found in /proc;
// elsewhere they are left to exit on noticing the postmaster's death.
func killTree(pid int) error {
	// Frozen, the postmaster cannot fork while we list its children.
	if err := syscall.Kill(pid, syscall.SIGSTOP); err == syscall.ESRCH {
		return nil // died by itself
	} else if err != nil {
		return fmt.Errorf("postmaster %d: %w", pid, err)
	}
	pids := append(children(pid), pid)
	for _, p := range pids {
		syscall.Kill(p, syscall.SIGKILL)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range pids {
		for alive(p) {
			if time.Now().After(deadline) {
				return fmt.Errorf("process %d survived SIGKILL", p)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return nil
}

// children lists the processes whose parent is pid, from /proc.
func children(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var kids []int
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if _, ppid, ok := procStat(p); ok && ppid == pid {
			kids = append(kids, p)
		}
	}
	return kids
}

// alive reports whether pid runs. A zombie counts as dead: it holds no
// shared memory, and it may never be reaped if our init does not reap.
func alive(pid int) bool {
	if state, _, ok := procStat(pid); ok {
		return state != 'Z' && state != 'X'
	}
	return syscall.Kill(pid, 0) == nil
}

// procStat returns the state and parent pid of a process from
// /proc/<pid>/stat.
func procStat(pid int) (state byte, ppid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	// "pid (comm) state ppid ...", where comm may hold spaces and parens.
	i := bytes.LastIndexByte(b, ')')
	f := bytes.Fields(b[i+1:])
	if i < 0 || len(f) < 2 || len(f[0]) != 1 {
		return 0, 0, false
	}
	ppid, err = strconv.Atoi(string(f[1]))
	return f[0][0], ppid, err == nil
}
