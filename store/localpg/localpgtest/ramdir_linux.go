package localpgtest

import (
	"os"
	"syscall"
)

// ramParent is where Run keeps the test binary's temporary files: /dev/shm
// when it is a tmpfs with room for them, "" otherwise.
func ramParent() string {
	const (
		tmpfsMagic = 0x01021994
		room       = 1 << 30 // a few clusters at once, with their logs, and a margin
	)
	var st syscall.Statfs_t
	if err := syscall.Statfs("/dev/shm", &st); err != nil || st.Type != tmpfsMagic {
		return ""
	}
	if uint64(st.Bavail)*uint64(st.Bsize) < room {
		return ""
	}
	if fi, err := os.Stat("/dev/shm"); err != nil || fi.Mode()&os.ModeSticky == 0 {
		return "" // others could replace what we make there
	}
	return "/dev/shm"
}
