package localpg

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// loadOrCreatePassword returns the superuser password kept in the pgpass
// file path, creating the file with a new random password when it is
// missing or holds none. The file is mode 0600 and belongs to the calling
// user (not to the server user), so psql and pgx can use it as their
// passfile and no one else on the machine can read it.
func loadOrCreatePassword(path string) (string, error) {
	if pw, err := readPassword(path); err == nil && pw != "" {
		// Tighten a file someone loosened: psql ignores a passfile others
		// can read, and so should everyone.
		f, err := openNoFollow(path, os.O_RDONLY, 0)
		if err != nil {
			return "", err
		}
		defer f.Close()
		if err := f.Chmod(0o600); err != nil {
			return "", err
		}
		return pw, nil
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	pw := hex.EncodeToString(b[:]) // no ':' or '\' to escape in pgpass
	var lines strings.Builder
	lines.WriteString("# Written by localpg: the superuser password of the cluster beside it. Keep it 0600.\n")
	for _, h := range []string{host, "localhost"} {
		fmt.Fprintf(&lines, "%s:*:*:%s:%s\n", h, superuser, pw)
	}
	if err := replaceNoFollow(path, []byte(lines.String()), 0o600, -1, -1); err != nil {
		return "", err
	}
	return pw, nil
}

// readPassword returns the password of the superuser's line in a pgpass
// file written by loadOrCreatePassword.
func readPassword(path string) (string, error) {
	f, err := openNoFollow(path, os.O_RDONLY, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.SplitN(sc.Text(), ":", 5)
		if len(fields) == 5 && fields[0] == host && fields[3] == superuser {
			return fields[4], nil
		}
	}
	return "", sc.Err()
}
