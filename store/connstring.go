package store

import (
	"errors"
	"io/fs"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// connStringExample is what a valid DATABASE_URL looks like, for error messages.
const connStringExample = "postgres://USER:PASSWORD@HOST:5432/DATABASE?sslmode=require, or keyword=value pairs such as host=HOST port=5432 dbname=DATABASE user=USER"

// safeScheme matches a URL scheme short and plain enough to quote back: it
// cannot hold a password, which only follows the "://".
var safeScheme = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]{0,19}$`)

// connStringProblem says what is wrong with a DATABASE_URL that pgx could not
// parse, and what would be valid, without quoting any part of it that could
// hold a secret. pgx's own errors quote the string (its password masked, but
// host, user and other parameters shown), so they are not used.
func connStringProblem(s string, err error) string {
	var pathErr *fs.PathError
	if errors.As(err, &pathErr) {
		// A file path is not a secret, and says which file to fix.
		return "cannot read the file " + strconv.Quote(pathErr.Path) + " that sslrootcert, sslcert or sslkey names: " + pathErr.Err.Error()
	}
	if scheme, _, ok := strings.Cut(s, "://"); ok {
		lower := strings.ToLower(scheme)
		if lower != "postgres" && lower != "postgresql" {
			quoted := ""
			if safeScheme.MatchString(scheme) {
				quoted = ", not " + strconv.Quote(scheme+"://")
			}
			return "the URL scheme must be postgres:// or postgresql://" + quoted + " (for example " + connStringExample + ")"
		}
		u, err := url.Parse(s)
		if err != nil && strings.Contains(err.Error(), "invalid port") {
			return "the port must be a number from 1 to 65535"
		}
		if err != nil {
			return "not a valid URL: percent-encode special characters (@ : / ? # % and spaces) in the user name and password (for example " + connStringExample + ")"
		}
		for _, hp := range strings.Split(u.Host, ",") {
			if i := strings.LastIndex(hp, ":"); i >= 0 && !strings.HasSuffix(hp, "]") {
				if n, err := strconv.Atoi(hp[i+1:]); err != nil || n < 1 || n > 65535 {
					return "the port must be a number from 1 to 65535"
				}
			}
		}
		if m := u.Query().Get("sslmode"); m != "" && !sslModes[m] {
			return "sslmode must be one of disable, allow, prefer, require, verify-ca, verify-full"
		}
		return "pgx cannot parse this URL; check its syntax, quoting and port (for example " + connStringExample + ")"
	}
	if !strings.Contains(s, "=") {
		return "not a PostgreSQL connection string: use a URL, " + connStringExample
	}
	return "pgx cannot parse these keyword=value pairs; check the port, sslmode, quoting (values with spaces go in single quotes) and any certificate files (for example " + connStringExample + ")"
}
