package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"cloud.google.com/go/compute/metadata"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/oauth2"
)

// iamLoginScope is the OAuth2 scope a Cloud SQL IAM database login token needs.
// It is narrower than sqlservice.admin, which the tutorial requested.
const iamLoginScope = "https://www.googleapis.com/auth/sqlservice.login"

// Config is everything needed to open a Store. Build it with [ConfigFromEnv]
// or by hand; the zero value of every optional field selects its documented default.
type Config struct {
	// ConnString is a pgx connection string (URL or keyword/value). When set it
	// is used as it is and Host, Port, Database, User, Password and SSLMode are ignored.
	ConnString string

	Host     string // DB_HOST: the Private Service Connect endpoint IP (or any host).
	Port     int    // DB_PORT: default 5432.
	Database string // DB_NAME.
	// User is the database role. In IAM mode it is the service account email
	// without ".gserviceaccount.com"; when empty it is derived from the
	// metadata server's default service account.
	User     string
	Password string // DB_PASSWORD: switches from IAM to password authentication.

	// IAMAuth sends a fresh OAuth2 access token as the password of every new
	// physical connection.
	IAMAuth bool
	// SSLMode is a libpq sslmode. IAM mode defaults to "require" and refuses
	// modes that could send the token in plaintext.
	SSLMode  string
	RootCert string // DB_ROOT_CERT: CA file for verify-ca / verify-full.

	MaxConns       int32         // DB_MAX_CONNS: default 4 per instance.
	ConnectTimeout time.Duration // DB_CONNECT_TIMEOUT: default 5s.
	QueryTimeout   time.Duration // DB_QUERY_TIMEOUT: default 5s; every statement has this deadline.
	// Migrate applies schema migrations on open (DB_MIGRATE, default true). With
	// it off, Open only checks that the schema is current and usable.
	Migrate bool
	// Pooler is DB_POOLER: PoolerNone (default, a direct connection) or
	// PoolerTransaction, for a transaction-mode pooler such as PgBouncer in
	// front of the database. It applies to DATABASE_URL and DB_* alike.
	Pooler Pooler

	// ReplayOnly is for a store that only adds messages, such as the one
	// `go run ./cmd/pscmessages deadletters replay` uses as the dead-letter operator
	// (default false; no environment variable): Open checks
	// [grants.Replay] instead of [grants.Functions], and the writer
	// never runs the cleanup of expired idempotency keys, which updates
	// messages and deletes keys; the functions' writers do that. Update and
	// Delete then fail with permission denied unless the role may do more.
	ReplayOnly bool

	// Edits is set where Messages serves PUT, PATCH and DELETE
	// (HTTP_ROUTES=all; default false): Open then also requires
	// [grants.Edits], so a role granted only what creating and reading
	// need is refused at once, naming the missing grant, instead of on the
	// first edit.
	Edits bool

	// TokenSource overrides Google default credentials in IAM mode.
	TokenSource oauth2.TokenSource

	// Logger gets what the store does on its own, with no caller to tell:
	// a failed cleanup of expired idempotency keys. Default: slog.Default().
	// The functions pass their own, so the line is structured like theirs.
	Logger *slog.Logger
}

// DefaultMaxConns is the size of an instance's pool when neither
// DB_MAX_CONNS nor pool_max_conns in DATABASE_URL sets one.
const DefaultMaxConns = 4

// Defaults of the other optional settings, as Config's fields state them.
const (
	defaultPort           = 5432
	defaultConnectTimeout = 5 * time.Second
	defaultQueryTimeout   = 5 * time.Second
)

// ConfigError reports an invalid setting. Var names the environment variable
// so an operator knows what to fix; the value itself is never included.
type ConfigError struct {
	Var string
	Msg string

	file bool // a file the settings name cannot be read
}

func (e *ConfigError) Error() string { return e.Var + ": " + e.Msg }

// ErrNotConfigured is returned by ConfigFromEnv when no database is configured at all.
var ErrNotConfigured = &ConfigError{Var: "DB_HOST", Msg: "no database configured: set DB_HOST (with DB_NAME) or DATABASE_URL"}

// ConfigFromEnv reads the configuration from environment variables through
// getenv (os.Getenv in production, a map in tests).
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	c := Config{
		ConnString: getenv("DATABASE_URL"),
		Host:       getenv("DB_HOST"),
		Database:   getenv("DB_NAME"),
		User:       getenv("DB_USER"),
		Password:   getenv("DB_PASSWORD"),
		SSLMode:    getenv("DB_SSLMODE"),
		RootCert:   getenv("DB_ROOT_CERT"),
		Port:       defaultPort,
		Migrate:    true,
	}
	var err error
	if c.Port, err = intVar(getenv, "DB_PORT", defaultPort, 1, 65535); err != nil {
		return Config{}, err
	}
	maxConns, err := intVar(getenv, "DB_MAX_CONNS", 0, 1, 1000)
	if err != nil {
		return Config{}, err
	}
	c.MaxConns = int32(maxConns)
	if c.ConnectTimeout, err = durationVar(getenv, "DB_CONNECT_TIMEOUT", defaultConnectTimeout); err != nil {
		return Config{}, err
	}
	if c.QueryTimeout, err = durationVar(getenv, "DB_QUERY_TIMEOUT", defaultQueryTimeout); err != nil {
		return Config{}, err
	}
	if c.Migrate, err = boolVar(getenv, "DB_MIGRATE", true); err != nil {
		return Config{}, err
	}
	if c.Pooler, err = poolerFromEnv(getenv); err != nil {
		return Config{}, err
	}

	switch {
	case c.ConnString != "":
		if c.IAMAuth, err = boolVar(getenv, "DB_IAM_AUTH", false); err != nil {
			return Config{}, err
		}
	case c.Host != "":
		c.IAMAuth = c.Password == ""
		if c.Database == "" {
			return Config{}, &ConfigError{Var: "DB_NAME", Msg: "required when DB_HOST is set"}
		}
		if !c.IAMAuth && c.User == "" {
			return Config{}, &ConfigError{Var: "DB_USER", Msg: "required with DB_PASSWORD"}
		}
	default:
		return Config{}, ErrNotConfigured
	}
	if err := c.validate(); err != nil {
		return Config{}, err
	}
	// Parse the connection settings now, so that a malformed DATABASE_URL
	// or a plaintext sslmode with IAM stops a process at start instead of
	// failing every request. Nothing here touches the network. Files (a CA
	// certificate) are read by [Config.Check] and Open, so a configuration
	// can be validated where its files are not mounted.
	var ce *ConfigError
	if _, err := c.poolConfig(); err != nil && !(errors.As(err, &ce) && ce.file) {
		return Config{}, err
	}
	return c, nil
}

// Check parses the connection settings as Open will, reading the
// certificate files they name. A local runner calls it at start, so that an
// unreadable DB_ROOT_CERT stops it at once. It touches the network only in
// IAM mode without DB_USER, to ask whether there is a metadata server to
// name the service account (see checkIAMUser).
func (c Config) Check() error {
	if _, err := c.poolConfig(); err != nil {
		return err
	}
	return c.checkIAMUser(context.Background())
}

// checkIAMUser refuses IAM mode without DB_USER where no metadata server
// can name the service account (off Google Cloud, with no
// GCE_METADATA_HOST): every login would fail the same way, for ever.
func (c Config) checkIAMUser(ctx context.Context) error {
	if !c.IAMAuth || c.ConnString != "" || c.User != "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// The client's own check, not the package's: that one is memoized for
	// the process, and would not see a GCE_METADATA_HOST set later.
	if metadata.NewClient(nil).OnGCEWithContext(ctx) {
		return nil
	}
	return &ConfigError{Var: "DB_USER", Msg: "required with IAM authentication off Google Cloud: there is no metadata server " +
		"to name the service account; set it to the IAM database user (the service account email without .gserviceaccount.com)"}
}

// plaintextModes may send a password without TLS.
var plaintextModes = map[string]bool{"disable": true, "allow": true, "prefer": true}

var sslModes = map[string]bool{"disable": true, "allow": true, "prefer": true, "require": true, "verify-ca": true, "verify-full": true}

// validate checks the combinations that would be insecure or cannot work.
func (c *Config) validate() error {
	if c.SSLMode != "" && !sslModes[c.SSLMode] {
		return &ConfigError{Var: "DB_SSLMODE", Msg: "must be one of disable, allow, prefer, require, verify-ca, verify-full"}
	}
	if c.ConnString == "" {
		if c.IAMAuth && plaintextModes[c.SSLMode] {
			return &ConfigError{Var: "DB_SSLMODE", Msg: "IAM authentication sends an access token as the password and needs require, verify-ca or verify-full"}
		}
		if (c.SSLMode == "verify-ca" || c.SSLMode == "verify-full") && c.RootCert == "" {
			return &ConfigError{Var: "DB_ROOT_CERT", Msg: "required with DB_SSLMODE=" + c.SSLMode + " (the server CA certificate file)"}
		}
	}
	if c.MaxConns < 0 {
		return &ConfigError{Var: "DB_MAX_CONNS", Msg: "must be positive"}
	}
	return nil
}

// poolConfig turns c into a pgxpool configuration. It never puts the password
// into a connection string, so a parse error cannot echo it.
func (c *Config) poolConfig() (*pgxpool.Config, error) {
	connString, source := c.ConnString, "DATABASE_URL"
	if connString == "" {
		source = "DB_HOST"
		sslmode := c.SSLMode
		if sslmode == "" {
			sslmode = "require"
		}
		u := url.URL{
			Scheme: "postgres",
			Host:   net.JoinHostPort(c.Host, strconv.Itoa(c.Port)),
			Path:   "/" + c.Database,
		}
		if c.User != "" {
			u.User = url.User(c.User)
		}
		q := url.Values{"sslmode": {sslmode}}
		if c.RootCert != "" {
			q.Set("sslrootcert", c.RootCert)
		}
		u.RawQuery = q.Encode()
		connString = u.String()
	}
	pc, err := pgxpool.ParseConfig(connString)
	if err != nil {
		// pgx's parse errors can quote fragments of the string, a password
		// included, so a DATABASE_URL error says no more than this.
		var pathErr *fs.PathError
		isFile := errors.As(err, &pathErr)
		if c.ConnString != "" {
			return nil, &ConfigError{Var: source, Msg: connStringProblem(c.ConnString, err), file: isFile}
		}
		if isFile {
			return nil, &ConfigError{Var: "DB_ROOT_CERT", Msg: "cannot read the CA file " + strconv.Quote(pathErr.Path) + ": " + pathErr.Err.Error(), file: true}
		}
		cause := err
		if inner := errors.Unwrap(err); inner != nil {
			cause = inner
		}
		// Built from DB_* without the password, so the cause cannot hold it.
		return nil, &ConfigError{Var: source, Msg: "invalid connection settings: " + cause.Error()}
	}
	cc := pc.ConnConfig
	if c.ConnString == "" && c.Password != "" {
		cc.Password = c.Password
	}
	if c.IAMAuth {
		if cc.TLSConfig == nil {
			return nil, &ConfigError{Var: source, Msg: "IAM authentication needs TLS: use sslmode=require, verify-ca or verify-full"}
		}
		for _, fb := range cc.Fallbacks {
			if fb.TLSConfig == nil {
				return nil, &ConfigError{Var: source, Msg: "sslmode allows a plaintext fallback, which would send the IAM token unencrypted: use require, verify-ca or verify-full"}
			}
		}
	}
	if err := c.applyPooler(pc, connString); err != nil {
		return nil, err
	}
	if c.ConnectTimeout > 0 {
		cc.ConnectTimeout = c.ConnectTimeout
	} else if cc.ConnectTimeout == 0 {
		cc.ConnectTimeout = defaultConnectTimeout
	}
	if c.MaxConns > 0 {
		pc.MaxConns = c.MaxConns
	} else if c.ConnString == "" || !strings.Contains(connString, "pool_max_conns") {
		pc.MaxConns = DefaultMaxConns
	}
	pc.MinConns = 0
	pc.MaxConnIdleTime = 5 * time.Minute
	pc.MaxConnLifetime = 30 * time.Minute
	pc.MaxConnLifetimeJitter = 5 * time.Minute
	pc.HealthCheckPeriod = 15 * time.Second
	pc.PingTimeout = cc.ConnectTimeout
	return pc, nil
}

func (c *Config) queryTimeout() time.Duration {
	if c.QueryTimeout > 0 {
		return c.QueryTimeout
	}
	return defaultQueryTimeout
}

func intVar(getenv func(string) string, name string, def, lo, hi int) (int, error) {
	v := getenv(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < lo || n > hi {
		return 0, &ConfigError{Var: name, Msg: fmt.Sprintf("must be an integer from %d to %d", lo, hi)}
	}
	return n, nil
}

func durationVar(getenv func(string) string, name string, def time.Duration) (time.Duration, error) {
	v := getenv(name)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil || d <= 0 {
		return 0, &ConfigError{Var: name, Msg: `must be a positive duration such as "5s" or "500ms"`}
	}
	return d, nil
}

func boolVar(getenv func(string) string, name string, def bool) (bool, error) {
	v := getenv(name)
	if v == "" {
		return def, nil
	}
	b, err := strconv.ParseBool(strings.TrimSpace(v))
	if err != nil {
		return false, &ConfigError{Var: name, Msg: "must be true or false"}
	}
	return b, nil
}
