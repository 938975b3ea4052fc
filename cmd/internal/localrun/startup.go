package localrun

import (
	"strconv"
	"strings"

	"example.com/pscmessages/store"
)

// localOnlyIgnored are the DB_* settings that only mean something with
// DB_HOST: without DB_HOST or DATABASE_URL the runner starts its own
// PostgreSQL and would silently ignore them.
var localOnlyIgnored = []string{"DB_NAME", "DB_USER", "DB_PASSWORD", "DB_PORT", "DB_SSLMODE", "DB_ROOT_CERT"}

// checkServeEnv refuses, before anything starts, the settings of `go run
// ./cmd/pscmessages` that can never work, so the user reads one line naming the variable
// instead of a server that answers every request with an error. The
// function's own settings are checked by function.ConfigFromEnv.
func checkServeEnv(getenv func(string) string) error {
	if v := getenv("PORT"); v != "" {
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err != nil || n < 1 || n > 65535 {
			return &store.ConfigError{Var: "PORT", Msg: "must be a port number from 1 to 65535 (default 8080)"}
		}
	}
	if getenv("DATABASE_URL") != "" || getenv("DB_HOST") != "" {
		return nil
	}
	// The runner is about to start a local PostgreSQL and set DATABASE_URL
	// to it itself: say so, rather than let a later error name DATABASE_URL,
	// which the user never set.
	if v := strings.TrimSpace(getenv("DB_IAM_AUTH")); v != "" {
		if b, err := strconv.ParseBool(v); err != nil || b {
			return &store.ConfigError{Var: "DB_IAM_AUTH", Msg: "IAM database authentication needs a Cloud SQL instance, but neither DATABASE_URL nor DB_HOST is set, " +
				"so go run ./cmd/" + program + " would start its own local PostgreSQL, which takes no IAM tokens. Unset DB_IAM_AUTH to use the local database, " +
				"or point at the instance with DB_HOST and DB_NAME (IAM is then the default) or with DATABASE_URL=postgres://USER@HOST:5432/DATABASE?sslmode=require"}
		}
	}
	for _, name := range localOnlyIgnored {
		if getenv(name) != "" {
			return &store.ConfigError{Var: name, Msg: "is set but DB_HOST is not, so it would be ignored: go run ./cmd/" + program + " starts its own local PostgreSQL when neither DB_HOST nor DATABASE_URL is set. " +
				"Set DB_HOST (the database server's address) to use " + name + ", or unset " + name + " to use the local database"}
		}
	}
	return nil
}
