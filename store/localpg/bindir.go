package localpg

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// ErrNotInstalled reports that the PostgreSQL server binaries were not found.
// Callers that can use an existing server instead may test for it with
// errors.Is.
var ErrNotInstalled = errors.New("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: " +
	"install them (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql@15), " +
	"set PG_BINDIR to their directory, or set DATABASE_URL to use an existing server")

// FindBinDir returns the directory holding initdb, pg_ctl and postgres. It
// tries $PG_BINDIR, `pg_config --bindir`, the directory of initdb in $PATH,
// the newest /usr/lib/postgresql/*/bin (Debian keeps the server binaries out
// of $PATH) and /usr/local/pgsql/bin, in that order.
func FindBinDir() (string, error) {
	if dir := os.Getenv("PG_BINDIR"); dir != "" {
		if !hasServer(dir) {
			return "", fmt.Errorf("localpg: PG_BINDIR=%s: %w", dir, ErrNotInstalled)
		}
		return dir, nil
	}
	path := os.Getenv("PATH")
	if dir, ok := found.Load(path); ok && hasServer(dir.(string)) {
		return dir.(string), nil
	}
	var dirs []string
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		dirs = append(dirs, strings.TrimSpace(string(out)))
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		// Resolve links: pg_ctl and postgres may only be next to the target.
		if p, err = filepath.EvalSymlinks(p); err == nil {
			dirs = append(dirs, filepath.Dir(p))
		}
	}
	versions, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(versions, func(a, b string) int { return cmp.Compare(pgVersion(b), pgVersion(a)) })
	dirs = append(append(dirs, versions...), "/usr/local/pgsql/bin")
	for _, dir := range dirs {
		if hasServer(dir) {
			found.Store(path, dir)
			return dir, nil
		}
	}
	return "", fmt.Errorf("localpg: %w", ErrNotInstalled)
}

// found is the directory the search found, by $PATH: the search runs
// pg_config, on Debian a script that starts several processes, and a test
// binary may start dozens of clusters. It is checked again before use, and
// a failed search is not kept, so binaries installed later are found.
var found sync.Map

// pgVersion parses the version in /usr/lib/postgresql/<version>/bin, such as
// 9.6 or 15, so that 15 sorts after 9.6.
func pgVersion(binDir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(binDir)), 64)
	return v
}

func hasServer(dir string) bool {
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}
