package localpg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
)

// Template is a data directory initdb made once, which Start copies into
// each new cluster's Dir instead of running initdb again. initdb is most of
// what a throwaway cluster costs (it runs the server twice and writes every
// system catalog), and a test binary may start dozens; a copy of its output
// is the same cluster. A Template is safe for concurrent use by Starts.
type Template struct {
	dir     string // the data directory initdb made
	tempDir string // removed by Remove
	binDir  string
	cred    *syscall.Credential
}

// NewTemplate runs initdb into a new temporary directory, with the same
// arguments Start gives it. binDir "" means FindBinDir(); clusters that
// copy the template must use the same BinDir. Remove deletes it.
func NewTemplate(ctx context.Context, binDir string) (_ *Template, err error) {
	if binDir == "" {
		if binDir, err = FindBinDir(); err != nil {
			return nil, err
		}
	}
	t := &Template{binDir: binDir}
	if os.Geteuid() == 0 {
		if t.cred, err = serverUser(); err != nil {
			return nil, err
		}
	}
	if t.tempDir, err = os.MkdirTemp("", "localpg-template-"); err != nil {
		return nil, fmt.Errorf("localpg: %w", err)
	}
	defer func() {
		if err != nil {
			t.Remove()
		}
	}()
	t.dir = filepath.Join(t.tempDir, "data")
	if err := prepareDataDir(t.dir, t.cred); err != nil {
		return nil, err
	}
	c := &Cluster{Dir: t.dir, opts: Options{BinDir: binDir}, cred: t.cred}
	if err := c.run(ctx, "initdb", initdbArgs(t.dir, false)...); err != nil {
		return nil, fmt.Errorf("localpg: template: %w", err)
	}
	return t, nil
}

// Remove deletes the template. Clusters copied from it are not affected.
func (t *Template) Remove() error {
	if t.tempDir == "" {
		return nil
	}
	if err := os.RemoveAll(t.tempDir); err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	t.tempDir = ""
	return nil
}

// copyTemplate copies the template's data directory into dir, an empty data
// directory prepareDataDir accepted. Both sides are walked inside an
// os.Root, so a symbolic link planted in either (by the server's user, who
// owns both when we are root) can neither make us read a file outside the
// template nor write one outside dir. Files and folders get the server
// user's ownership and the template's modes. Runs of zero blocks are left
// as holes: initdb's first WAL segment is mostly zeros.
func copyTemplate(t *Template, dir string, cred *syscall.Credential) error {
	src, err := os.OpenRoot(t.dir)
	if err != nil {
		return fmt.Errorf("localpg: template: %w", err)
	}
	defer src.Close()
	dst, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	defer dst.Close()
	uid, gid := -1, -1
	if cred != nil {
		uid, gid = int(cred.Uid), int(cred.Gid)
	}
	var dirs []string // created folders, chowned last so each stays ours while filled
	err = fs.WalkDir(src.FS(), ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || name == "." {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case fi.IsDir():
			if err := dst.Mkdir(name, fi.Mode().Perm()); err != nil {
				return err
			}
			dirs = append(dirs, name)
			return nil
		case fi.Mode().IsRegular():
			return copyFileSparse(src, dst, name, fi, uid, gid)
		default:
			return fmt.Errorf("%s: not a file or folder", name)
		}
	})
	if err == nil && uid >= 0 {
		for _, name := range slices.Backward(dirs) {
			if err = dst.Lchown(name, uid, gid); err != nil {
				break
			}
		}
	}
	if err != nil {
		return fmt.Errorf("localpg: copying the template into %s: %w", dir, err)
	}
	return nil
}

// copyBlock is PostgreSQL's page size, the unit in which zeros are skipped.
const copyBlock = 8192

var zeroBlock [copyBlock]byte

func copyFileSparse(src, dst *os.Root, name string, fi fs.FileInfo, uid, gid int) error {
	in, err := src.OpenFile(name, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := dst.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, fi.Mode().Perm())
	if err != nil {
		return err
	}
	buf := make([]byte, 16*copyBlock)
	var off int64
	for {
		n, rerr := io.ReadFull(in, buf)
		// Write each run of non-zero blocks with one call.
		for start := 0; start < n; {
			end := start
			for end < n && !bytes.Equal(buf[end:min(end+copyBlock, n)], zeroBlock[:min(copyBlock, n-end)]) {
				end = min(end+copyBlock, n)
			}
			if end > start {
				if _, err := out.WriteAt(buf[start:end], off+int64(start)); err != nil {
					out.Close()
					return err
				}
			}
			start = min(end+copyBlock, n)
		}
		off += int64(n)
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			out.Close()
			return rerr
		}
	}
	err = out.Truncate(off) // a trailing hole
	if err == nil && uid >= 0 {
		err = out.Chown(uid, gid)
	}
	return errors.Join(err, out.Close())
}
