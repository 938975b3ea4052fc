package localpg

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// A data directory holds a superuser's password, the server's configuration
// and its data, and localpg writes into it, as root too. Whoever can put
// something at its path first can make localpg write through a symbolic
// link of theirs, or take their folder for ours. So localpg uses a data
// directory only when it is private, the way ssh and tmux check the folders
// they keep secrets in:
//
//   - Every folder above it is owned by root or by us, and is not writable
//     by group or others unless it is sticky, as /tmp is (others cannot
//     rename or delete what we own in it). A symbolic link on the way is
//     followed only if root or we own it. Missing folders are created mode
//     0700, or 0711 when we are root: the server then runs as OS user
//     postgres, which must pass through them.
//   - The data directory itself is a real directory, never a symbolic link,
//     owned by us or by the server's OS user (postgres when we are root, who
//     owns the cluster's files by design), and not writable by group or
//     others. A missing one is created mode 0700 and given to the server's
//     user.
//
// Once that holds, no one but us, root and the server's user can change what
// the path names. Files localpg creates, changes or reads in it are still
// opened without following a symbolic link (openNoFollow), checked to be
// plain files with one name, and changed through the open file only, so the
// server's user cannot redirect root's writes either.

// UnsafeDirError reports a data directory, or a folder above it, that
// someone other than us, root or the server's user could have made or
// could change. localpg refuses it rather than write there.
type UnsafeDirError struct {
	Path    string
	Problem string
}

func (e *UnsafeDirError) Error() string {
	return fmt.Sprintf("localpg: refusing %s: it %s", e.Path, e.Problem)
}

// maxLinks bounds the symbolic links followed above a data directory, as
// the kernel's own limit does (ELOOP).
const maxLinks = 40

// prepareDataDir makes sure dir, an absolute clean path, is a private data
// directory (see above), creating it and the folders above it when missing.
// cred is the server's OS user; nil means ours.
func prepareDataDir(dir string, cred *syscall.Credential) error {
	parent, err := safeParent(dir, true)
	if err != nil {
		return err
	}
	if cred != nil {
		if err := addTraverse(parent); err != nil {
			return err
		}
	}
	return checkDataDir(filepath.Join(parent, filepath.Base(dir)), cred, true)
}

// checkExistingDataDir is prepareDataDir without creating anything: it
// returns fs.ErrNotExist when dir or a folder above it is missing.
func checkExistingDataDir(dir string, cred *syscall.Credential) error {
	parent, err := safeParent(dir, false)
	if err != nil {
		return err
	}
	return checkDataDir(filepath.Join(parent, filepath.Base(dir)), cred, false)
}

// safeParent checks every folder above dir, creating missing ones when
// create is set, and returns the folder holding dir with the symbolic links
// on the way resolved.
func safeParent(dir string, create bool) (string, error) {
	if !filepath.IsAbs(dir) {
		return "", fmt.Errorf("localpg: data directory %q is not an absolute path", dir)
	}
	me := os.Geteuid()
	dirMode := fs.FileMode(0o700)
	if me == 0 {
		dirMode = 0o711
	}
	todo := splitPath(filepath.Dir(dir))
	cur, links := "/", 0
	for len(todo) > 0 {
		next := filepath.Join(cur, todo[0])
		fi, err := os.Lstat(next)
		if errors.Is(err, fs.ErrNotExist) && create {
			if err := os.Mkdir(next, dirMode); err != nil && !errors.Is(err, fs.ErrExist) {
				return "", fmt.Errorf("localpg: %w", err)
			}
			continue // look again at what is there now, whoever made it
		}
		if err != nil {
			return "", fmt.Errorf("localpg: %w", err)
		}
		uid := fileOwner(fi)
		if uid != 0 && uid != me {
			return "", &UnsafeDirError{Path: next, Problem: "is owned by " + describeUser(uid) + ", not by you or root: another user may have put it there"}
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			if links++; links > maxLinks {
				return "", &UnsafeDirError{Path: dir, Problem: "goes through too many symbolic links"}
			}
			target, err := os.Readlink(next)
			if err != nil {
				return "", fmt.Errorf("localpg: %w", err)
			}
			if filepath.IsAbs(target) {
				cur = "/"
			}
			todo = append(splitPath(target), todo[1:]...)
			continue
		case !fi.IsDir():
			return "", &UnsafeDirError{Path: next, Problem: "is not a folder"}
		case fi.Mode().Perm()&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0:
			return "", &UnsafeDirError{Path: next, Problem: fmt.Sprintf("is writable by group or others (mode %04o) and not sticky: anyone may replace what it holds; chmod go-w it", fi.Mode().Perm())}
		}
		cur, todo = next, todo[1:]
	}
	return cur, nil
}

// splitPath splits p into its names, dropping empty ones and "."; ".."
// stays, for Join to apply against the folder reached so far.
func splitPath(p string) []string {
	var names []string
	for _, n := range strings.Split(p, "/") {
		if n != "" && n != "." {
			names = append(names, n)
		}
	}
	return names
}

// checkDataDir checks the data directory dir itself, whose parent
// safeParent accepted, creating it when missing and create is set.
func checkDataDir(dir string, cred *syscall.Credential, create bool) error {
	me, server := os.Geteuid(), os.Geteuid()
	if cred != nil {
		server = int(cred.Uid)
	}
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) && create {
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("localpg: %w", err)
		}
		fi, err = os.Lstat(dir)
	}
	if err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return &UnsafeDirError{Path: dir, Problem: "is a symbolic link: give the folder itself"}
	}
	if !fi.IsDir() {
		return &UnsafeDirError{Path: dir, Problem: "is not a folder"}
	}
	if uid := fileOwner(fi); uid != me && uid != server {
		owners := "you"
		if server != me {
			owners = "you or " + describeUser(server) + ", who runs the server"
		}
		return &UnsafeDirError{Path: dir, Problem: "is owned by " + describeUser(uid) + ", not by " + owners + ": another user may have put it there"}
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return &UnsafeDirError{Path: dir, Problem: fmt.Sprintf("is writable by group or others (mode %04o); chmod go-w it", fi.Mode().Perm())}
	}
	if !create || cred == nil || fileOwner(fi) == server {
		return nil
	}
	// Ours, and about to be initialised by the server's user.
	d, err := os.OpenFile(dir, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	defer d.Close()
	if err := d.Chown(server, int(cred.Gid)); err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	return nil
}

// addTraverse lets the server's user pass through parent, a folder we own
// that safeParent accepted, by adding search permission for group and
// others, keeping every other bit of its mode (sticky, setuid, setgid
// included). A folder that has them, or that we do not own (/tmp), is left
// as it is.
func addTraverse(parent string) error {
	d, err := os.OpenFile(parent, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	defer d.Close()
	fi, err := d.Stat()
	if err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	m := fi.Mode()
	if fileOwner(fi) != os.Geteuid() || m.Perm()&0o011 == 0o011 {
		return nil
	}
	keep := m & (fs.ModePerm | fs.ModeSticky | fs.ModeSetuid | fs.ModeSetgid)
	if err := d.Chmod(keep | 0o011); err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	return nil
}

// openNoFollow opens the file at path without following a symbolic link in
// its last name, and refuses anything but a plain file with one name: a hard
// link to someone else's file would otherwise be truncated, rewritten or
// chmodded through it.
func openNoFollow(path string, flag int, perm fs.FileMode) (*os.File, error) {
	f, err := os.OpenFile(path, flag|syscall.O_NOFOLLOW, perm)
	if errors.Is(err, syscall.ELOOP) {
		return nil, &UnsafeDirError{Path: path, Problem: "is a symbolic link, which localpg never follows"}
	}
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	problem := ""
	if !fi.Mode().IsRegular() {
		problem = "is not a plain file"
	} else if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
		problem = "has other hard links"
	}
	if problem != "" {
		f.Close()
		return nil, &UnsafeDirError{Path: path, Problem: problem}
	}
	return f, nil
}

// readNoFollow reads a file as openNoFollow opens it.
func readNoFollow(path string) ([]byte, error) {
	f, err := openNoFollow(path, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// replaceNoFollow replaces the content of the file at path, creating it when
// missing, and sets its mode to perm and, when uid >= 0, its owner to uid.
// Everything goes through the one open file.
func replaceNoFollow(path string, data []byte, perm fs.FileMode, uid, gid int) error {
	f, err := openNoFollow(path, os.O_WRONLY|os.O_CREATE, perm)
	if err != nil {
		return err
	}
	err = f.Truncate(0)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Chmod(perm) // creation's mode is cut by the umask, and an existing file keeps its own
	}
	if err == nil && uid >= 0 {
		err = f.Chown(uid, gid)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func fileOwner(fi fs.FileInfo) int {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid)
	}
	return -1
}

// describeUser is "uid N (name)", or "uid N" for an unknown user.
func describeUser(uid int) string {
	s := "uid " + strconv.Itoa(uid)
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		s += " (" + u.Username + ")"
	}
	return s
}

// serverCred is the OS user the server runs as, for functions that have no
// Cluster: nil (ours), or postgres when we are root (see serverUser).
func serverCred() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	return serverUser()
}
