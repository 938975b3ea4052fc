// Package localpg runs throwaway PostgreSQL clusters for tests and for the
// local runner.
//
// A cluster is an ordinary data directory plus a postmaster started with
// pg_ctl. It listens on 127.0.0.1 only, on a port of its own, and has no Unix
// socket, so it never collides with a system cluster on the same machine.
package localpg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Options configures a cluster. The zero value is a fast trust-auth cluster in
// a temporary directory on a free port: any local user can connect to it as
// superuser while it runs, which is acceptable only for the throwaway
// clusters of tests. Anything that lives longer sets Password or
// PasswordFile.
type Options struct {
	// Dir is the data directory; "" means a new temporary directory that
	// Destroy removes. A Dir must be private (see datadir.go): folders above
	// it owned by root or the caller and not writable by others unless
	// sticky, Dir itself a real directory of the caller's or the server
	// user's; Start creates the missing ones and refuses, with an
	// *UnsafeDirError, what someone else could have planted. A Dir that already holds a cluster (PG_VERSION exists)
	// is reused, not re-initialised, so the local runner keeps its data
	// across runs; a postmaster a crashed run left running in it is stopped
	// first. Running as root, the server runs as OS user postgres, which
	// must be able to traverse every parent of Dir.
	Dir string
	// Port is the TCP port on 127.0.0.1. 0 picks a free one at every
	// Start; Cluster.Start keeps it while it stays free.
	Port int
	// Password, if set, becomes the password of superuser postgres and host
	// connections must authenticate with scram-sha-256; "" means trust.
	Password string
	// PasswordFile, if set and Password is not, is a pgpass file holding the
	// superuser password: read at every Start, created (mode 0600, owned by
	// the caller) with a random password when missing. Clients connect with
	// it as their passfile, so the password appears in no URL, argument or
	// environment variable. Like Password, it makes host connections use
	// scram-sha-256.
	PasswordFile string
	// TLS makes the server accept TLS with a certificate for 127.0.0.1,
	// ::1 and localhost, signed by a throwaway CA stored in Cluster.CAFile.
	// Plain connections keep working.
	TLS bool
	// Durable keeps PostgreSQL's crash-safety defaults. Without it, fsync,
	// synchronous_commit and full_page_writes are off: tests run much
	// faster, and a cluster that loses data in a crash is simply recreated.
	Durable bool
	// Settings are extra postgresql.conf settings, such as max_connections.
	// They are applied last, so they override localpg's own; do not use them
	// for port or listen_addresses.
	Settings map[string]string
	// BinDir holds initdb, pg_ctl and postgres; "" means FindBinDir().
	BinDir string
	// Log receives the server log; nil means file server.log in the data
	// directory. Either way the log stays out of our stdout.
	Log io.Writer
	// Template, when set, is copied into a Dir that holds no cluster
	// instead of running initdb; nil means initdb. It must come from the
	// same BinDir.
	Template *Template
}

// Files that localpg owns in the data directory. They are rewritten at every
// Start, so edits to them do not stick.
const (
	confFile = "localpg.conf" // included at the end of postgresql.conf
	caFile   = "localpg-ca.crt"
	certFile = "localpg-server.crt"
	keyFile  = "localpg-server.key"
	logFile  = "server.log"
)

const (
	host      = "127.0.0.1"
	superuser = "postgres"
)

// Cluster is a PostgreSQL cluster started by Start. Its methods are safe for
// concurrent use.
type Cluster struct {
	// Dir is the data directory. Read-only.
	Dir string
	// CAFile is the PEM file of the CA that signed the server certificate,
	// for clients' sslrootcert; "" without TLS. Read-only.
	CAFile string

	opts    Options
	cred    *syscall.Credential // OS user the server runs as; nil = ours
	tempDir string              // removed by Destroy; "" when the caller chose Dir

	mu      sync.Mutex
	port    int
	running bool
	owner   *os.File      // the flocked ownerFile while we use the cluster; see lockOwner
	logDone chan struct{} // closed once the server's output is copied to opts.Log

	admin admin // Exec's connection
}

// Start creates the cluster if Dir holds none, configures it from opts and
// starts it. It returns once the server accepts connections, or when ctx is
// done.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	if err := checkSettings(opts.Settings); err != nil {
		return nil, err
	}
	if opts.BinDir == "" {
		if opts.BinDir, err = FindBinDir(); err != nil {
			return nil, err
		}
	}
	opts.Settings = maps.Clone(opts.Settings) // the caller keeps the map
	c := &Cluster{Dir: opts.Dir, opts: opts, port: opts.Port}
	if os.Geteuid() == 0 {
		if c.cred, err = serverUser(); err != nil {
			return nil, err
		}
	}
	if c.Dir == "" {
		if c.tempDir, err = os.MkdirTemp("", "localpg-"); err != nil {
			return nil, fmt.Errorf("localpg: %w", err)
		}
		c.Dir = filepath.Join(c.tempDir, "data")
	} else if c.Dir, err = filepath.Abs(c.Dir); err != nil {
		return nil, fmt.Errorf("localpg: %w", err)
	}
	defer func() {
		if err != nil {
			c.Destroy()
		}
	}()
	if err := prepareDataDir(c.Dir, c.cred); err != nil {
		return nil, err
	}

	if err := c.initdb(ctx); err != nil {
		return nil, err
	}
	if opts.PasswordFile != "" && opts.Password == "" {
		if c.opts.Password, err = loadOrCreatePassword(opts.PasswordFile); err != nil {
			return nil, fmt.Errorf("localpg: password file: %w", err)
		}
	}
	if opts.TLS {
		if err := c.writeTLS(); err != nil {
			return nil, fmt.Errorf("localpg: TLS files: %w", err)
		}
	}
	if err := c.writeHBA(); err != nil {
		return nil, fmt.Errorf("localpg: %w", err)
	}
	if c.opts.Password != "" {
		if err := c.setPassword(ctx); err != nil {
			return nil, err
		}
	}
	c.mu.Lock()
	err = c.startLocked(ctx)
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Start starts the cluster again after Stop or Kill, on the same port if it
// is still free, so that clients' URLs stay valid.
func (c *Cluster) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.lockOwner(); err != nil {
		return err
	}
	return c.startLocked(ctx)
}

// Stop shuts the server down (pg_ctl stop -m fast: clients are disconnected,
// data is kept) and gives up ownership of Dir. Stopping a stopped cluster
// does nothing.
func (c *Cluster) Stop(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.stopLocked(ctx); err != nil {
		return err
	}
	c.unlockOwner()
	return nil
}

// Abort stops the server at once (pg_ctl stop -m immediate: no checkpoint,
// so the next Start runs crash recovery; with Options.Durable no committed
// transaction is lost). Unlike the other methods it does not wait for one
// under way, so a process that must end now can call it while Stop or
// Destroy runs; afterwards only Stop or Destroy may be called.
func (c *Cluster) Abort(ctx context.Context) error {
	if err := c.pgctlStop(ctx, "immediate"); err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	return nil
}

// StopCommand is a shell command that stops the server, for a user to run
// when this process could not stop it.
func (c *Cluster) StopCommand() string {
	cmd := shellQuote(filepath.Join(c.opts.BinDir, "pg_ctl")) + " stop -m fast -D " + shellQuote(c.Dir)
	if c.cred != nil {
		cmd = "su postgres -s /bin/sh -c " + shellQuote(cmd)
	}
	return cmd
}

// shellQuote quotes s as one word for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Kill simulates a crash: it SIGKILLs the postmaster and its children, so the
// next Start runs crash recovery. Without Options.Durable, recent commits may
// be lost, as in a real crash with fsync off.
func (c *Cluster) Kill() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.killLocked()
}

// Destroy stops the cluster and removes its directory if Start created it.
// A caller-chosen Dir is kept.
func (c *Cluster) Destroy() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.stopLocked(ctx); err != nil {
		if kerr := c.killLocked(); kerr != nil {
			return errors.Join(err, kerr)
		}
	}
	c.unlockOwner()
	c.admin.close()
	if c.tempDir != "" {
		if err := os.RemoveAll(c.tempDir); err != nil {
			return fmt.Errorf("localpg: %w", err)
		}
		c.tempDir = ""
	}
	return nil
}

// Port returns the server's TCP port.
func (c *Cluster) Port() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.port
}

// Host returns the address the server listens on, "127.0.0.1". It is not
// "localhost", which may resolve to ::1 first.
func (c *Cluster) Host() string { return host }

// URL returns a connection URL for the cluster, with sslmode=disable unless
// params (each "key=value", e.g. "sslmode=verify-full" or
// "sslrootcert="+c.CAFile) say otherwise.
func (c *Cluster) URL(user, password, database string, params ...string) string {
	return buildURL(c.Port(), user, password, database, params...)
}

func buildURL(port int, user, password, database string, params ...string) string {
	q := url.Values{"sslmode": {"disable"}}
	for _, p := range params {
		k, v, _ := strings.Cut(p, "=")
		q.Set(k, v)
	}
	u := url.URL{
		Scheme:   "postgres",
		Host:     net.JoinHostPort(host, strconv.Itoa(port)),
		Path:     "/" + database,
		RawPath:  "/" + url.PathEscape(database), // so that a "/" in a name survives
		RawQuery: q.Encode(),
	}
	switch {
	case password != "":
		u.User = url.UserPassword(user, password)
	case user != "":
		u.User = url.User(user)
	}
	return u.String()
}

// SuperuserURL returns the URL of database as superuser postgres.
func (c *Cluster) SuperuserURL(database string) string {
	return c.URL(superuser, c.opts.Password, database)
}

// Exec runs sql as superuser on database postgres, for setting up roles and
// databases. Without args, sql may hold several statements. It runs on the
// cluster's administration connection (see admin), so sql must leave no
// session state behind (SET, an open transaction).
func (c *Cluster) Exec(ctx context.Context, sql string, args ...any) error {
	return c.admin.exec(ctx, c.SuperuserURL("postgres"), sql, args...)
}

// CreateDatabase creates database name, owned by the superuser.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) error {
	return c.CopyDatabase(ctx, name, "template1")
}

// CopyDatabase creates database name as a copy of database template, which
// nobody may be connected to. From PostgreSQL 15 on it asks for the
// FILE_COPY strategy: the files are copied as they are, with a checkpoint
// before and after, instead of every block being written through the WAL,
// which costs the server several times the CPU for the small databases
// tests make. Older servers know only that way and get no strategy.
func (c *Cluster) CopyDatabase(ctx context.Context, name, template string) error {
	create := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize() + " TEMPLATE " + pgx.Identifier{template}.Sanitize()
	err := c.Exec(ctx, create+" STRATEGY FILE_COPY")
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42601" && strings.Contains(pgErr.Message, "strategy") {
		return c.Exec(ctx, create)
	}
	return err
}

// initdb creates the cluster unless Dir already holds one, in which case it
// stops a postmaster that a crashed run may have left behind. It never stops
// the server of a live process: Dir's owner lock (lockOwner) is taken first,
// and a live owner makes it fail with *InUseError.
func (c *Cluster) initdb(ctx context.Context) error {
	if _, err := os.Lstat(filepath.Join(c.Dir, "PG_VERSION")); err == nil {
		if err := c.lockOwner(); err != nil {
			return err
		}
		if c.run(ctx, "pg_ctl", "status", "-D", c.Dir) == nil {
			if err := c.pgctlStop(ctx, "fast"); err != nil {
				return fmt.Errorf("localpg: stopping the server left running in %s: %w", c.Dir, err)
			}
		}
		return c.includeConf()
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("localpg: %w", err)
	}
	// prepareDataDir made Dir, private and the server user's.
	// Authentication is set up by writeHBA and setPassword, which also
	// handle reused clusters.
	if t := c.opts.Template; t != nil {
		if t.binDir != c.opts.BinDir {
			return fmt.Errorf("localpg: the template was made by %s, not by %s", t.binDir, c.opts.BinDir)
		}
		if err := copyTemplate(t, c.Dir, c.cred); err != nil {
			return err
		}
	} else if err := c.run(ctx, "initdb", initdbArgs(c.Dir, c.opts.Durable)...); err != nil {
		if c.cred != nil {
			return fmt.Errorf("localpg: %w (running as root, the server runs as OS user postgres, which must be able to traverse every parent of %s)", err, c.Dir)
		}
		return fmt.Errorf("localpg: %w", err)
	}
	// After initdb, which wants an empty directory.
	if err := c.lockOwner(); err != nil {
		return err
	}
	return c.includeConf()
}

// initdbArgs are initdb's arguments for a cluster in dir.
func initdbArgs(dir string, durable bool) []string {
	args := []string{"-D", dir, "-U", superuser, "--encoding=UTF8", "--locale=C", "--auth=trust"}
	if !durable {
		args = append(args, "--no-sync")
	}
	return args
}

// includeConf makes postgresql.conf include confFile, whatever created the
// cluster. Being last, the include overrides what comes before it, while
// ALTER SYSTEM (postgresql.auto.conf) still wins.
func (c *Cluster) includeConf() error {
	const line = "include_if_exists = '" + confFile + "'"
	p := filepath.Join(c.Dir, "postgresql.conf")
	conf, err := readNoFollow(p)
	if err == nil && !bytes.Contains(conf, []byte(line)) {
		err = c.writeFile("postgresql.conf", slices.Concat(conf, []byte("\n"+line+"\n")), 0o600)
	}
	if err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	return nil
}

// writeConf writes confFile; it runs at every start because the port may
// change.
func (c *Cluster) writeConf() error {
	set := map[string]string{
		"listen_addresses": host,
		"port":             strconv.Itoa(c.port),
		// A socket would share /var/run/postgresql, and its per-port lock
		// file, with the system cluster.
		"unix_socket_directories": "",
	}
	if !c.opts.Durable {
		set["fsync"], set["synchronous_commit"], set["full_page_writes"] = "off", "off", "off"
	}
	if c.opts.TLS {
		// Relative paths are relative to the data directory.
		set["ssl"], set["ssl_cert_file"], set["ssl_key_file"] = "on", certFile, keyFile
	}
	maps.Copy(set, c.opts.Settings)
	var b strings.Builder
	b.WriteString("# Written by localpg at every start; use Options.Settings instead of editing.\n")
	for _, k := range slices.Sorted(maps.Keys(set)) {
		// Quoting is valid for every type and spares us knowing the types.
		fmt.Fprintf(&b, "%s = '%s'\n", k, strings.NewReplacer(`\`, `\\`, `'`, `''`).Replace(set[k]))
	}
	return c.writeFile(confFile, []byte(b.String()), 0o600)
}

var settingName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)

// checkSettings rejects what writeConf cannot write as one line.
func checkSettings(s map[string]string) error {
	for k, v := range s {
		if !settingName.MatchString(k) || strings.ContainsAny(v, "\x00\r\n") {
			return fmt.Errorf("localpg: invalid setting %q = %q", k, v)
		}
	}
	return nil
}

// writeHBA allows host connections from loopback only, with trust or
// scram-sha-256. There is no "local" line since there is no socket.
func (c *Cluster) writeHBA() error {
	method := "trust"
	if c.opts.Password != "" {
		method = "scram-sha-256"
	}
	var b strings.Builder
	b.WriteString("# Written by localpg at every start; edits are overwritten.\n")
	for _, db := range []string{"all", "replication"} {
		for _, addr := range []string{"127.0.0.1/32", "::1/128"} {
			fmt.Fprintf(&b, "host %s all %s %s\n", db, addr, method)
		}
	}
	return c.writeFile("pg_hba.conf", []byte(b.String()), 0o600)
}

// setPassword sets the superuser password in single-user mode. With the
// server down, this works for new and reused clusters alike, whatever
// password the latter had.
func (c *Cluster) setPassword(ctx context.Context) error {
	cmd := c.command(ctx, "postgres", "--single", "-j", "-D", c.Dir, "postgres")
	// -j: a statement ends with ";" and an empty line, not at a newline.
	cmd.Stdin = strings.NewReader("SET password_encryption = 'scram-sha-256';\nALTER ROLE " +
		superuser + " PASSWORD " + quoteLiteral(c.opts.Password) + ";\n\n")
	out, err := cmd.CombinedOutput()
	if err == nil && bytes.Contains(out, []byte("ERROR:")) {
		err = errors.New("statement failed") // single-user mode exits 0 anyway
	}
	if err != nil {
		out = bytes.ReplaceAll(out, []byte(c.opts.Password), []byte("********"))
		return fmt.Errorf("localpg: setting the superuser password: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// quoteLiteral quotes s as an SQL string literal, like PostgreSQL's
// quote_literal, so it is right whatever standard_conforming_strings says.
func quoteLiteral(s string) string {
	q := "'" + strings.NewReplacer(`'`, `''`, `\`, `\\`).Replace(s) + "'"
	if strings.Contains(s, `\`) {
		q = "E" + q
	}
	return q
}

func (c *Cluster) startLocked(ctx context.Context) error {
	if c.running {
		return nil
	}
	for attempt := 1; ; attempt++ {
		auto := c.opts.Port == 0
		if auto && (c.port == 0 || !portFree(c.port)) {
			p, err := freePort()
			if err != nil {
				return fmt.Errorf("localpg: picking a port: %w", err)
			}
			c.port = p
		}
		err := c.launch(ctx)
		if err == nil {
			c.running = true
			if err := c.writeOwner(); err != nil {
				return fmt.Errorf("localpg: recording the port in %s: %w", ownerFile, err)
			}
			return nil
		}
		// Another process may have taken the port between our probe and
		// the server's bind. If it still holds it, retry on another one.
		if !auto || attempt == 3 || ctx.Err() != nil || portFree(c.port) {
			return err
		}
	}
}

// launch runs pg_ctl start and waits for a real connection to succeed. On
// failure it leaves no server behind.
func (c *Cluster) launch(ctx context.Context) (err error) {
	if err := c.writeConf(); err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	cmd := c.command(ctx, "pg_ctl", "start", "-D", c.Dir, "-w", "-t", pgctlTimeout(ctx), "-s")
	if c.opts.Log == nil {
		cmd.Args = append(cmd.Args, "-l", filepath.Join(c.Dir, logFile))
	} else {
		// Without -l, the server writes to pg_ctl's stdout for as long as
		// it runs. Hand it an *os.File so that exec does not wait for EOF.
		r, w, err := os.Pipe()
		if err != nil {
			return fmt.Errorf("localpg: %w", err)
		}
		defer w.Close()
		cmd.Stdout = w
		done := make(chan struct{})
		c.logDone = done
		go func() {
			defer close(done)
			defer r.Close()
			io.Copy(c.opts.Log, r)
		}()
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	defer func() {
		if err != nil {
			// pg_ctl may have timed out or been killed with a server
			// still starting.
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			c.pgctlStop(ctx, "immediate")
			c.waitLog(ctx)
		}
	}()
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if c.opts.Log == nil {
			msg += "\nserver log:\n" + c.LogTail()
		}
		return fmt.Errorf("localpg: pg_ctl start on port %d: %w: %s", c.port, err, msg)
	}
	if err := c.waitReady(ctx); err != nil {
		return fmt.Errorf("localpg: server on port %d does not accept connections: %w", c.port, err)
	}
	return nil
}

// waitReady connects until a connection succeeds. pg_ctl -w already waited
// for the server to report readiness; this proves clients get through.
func (c *Cluster) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		conn, err := pgx.Connect(ctx, buildURL(c.port, superuser, c.opts.Password, "postgres"))
		if err == nil {
			return conn.Close(ctx)
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) { // the server answered: retrying will not help
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (c *Cluster) stopLocked(ctx context.Context) error {
	if !c.running {
		return nil
	}
	if err := c.pgctlStop(ctx, "fast"); err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	c.running = false
	return c.waitLog(ctx)
}

// pgctlStop stops the server; a server that is not running is not an error.
func (c *Cluster) pgctlStop(ctx context.Context, mode string) error {
	err := c.run(ctx, "pg_ctl", "stop", "-D", c.Dir, "-m", mode, "-w", "-t", pgctlTimeout(ctx), "-s")
	var exit *exec.ExitError
	if err != nil && errors.As(c.run(ctx, "pg_ctl", "status", "-D", c.Dir), &exit) && exit.ExitCode() == 3 {
		return nil // pg_ctl status: 3 = not running
	}
	return err
}

func (c *Cluster) killLocked() error {
	if !c.running {
		return nil
	}
	pid, err := postmasterPID(c.Dir)
	if err == nil {
		err = killTree(pid)
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) { // no pid file: not running
		return fmt.Errorf("localpg: %w", err)
	}
	// The dead postmaster may linger as a zombie if nobody reaps it, and
	// the next postmaster would take the pid in postmaster.pid for a live
	// server.
	if err := os.Remove(filepath.Join(c.Dir, "postmaster.pid")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("localpg: %w", err)
	}
	c.running = false
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.waitLog(ctx)
}

// waitLog waits for the log copier, so that nothing writes to opts.Log once
// the server is down (a test's writer may not outlive its test).
func (c *Cluster) waitLog(ctx context.Context) error {
	if c.logDone == nil {
		return nil
	}
	select {
	case <-c.logDone:
		c.logDone = nil
		return nil
	case <-ctx.Done():
		return fmt.Errorf("localpg: waiting for the server log to close: %w", ctx.Err())
	}
}

// LogFile returns the path of the server's log.
func (c *Cluster) LogFile() string { return filepath.Join(c.Dir, logFile) }

// LogTail returns the end of the server's log, for error messages.
func (c *Cluster) LogTail() string {
	b, err := readNoFollow(filepath.Join(c.Dir, logFile))
	if err != nil {
		return err.Error()
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// command prepares a PostgreSQL program to run as the server user.
func (c *Cluster) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(c.opts.BinDir, name), args...)
	cmd.Dir = "/" // our working directory may be closed to the server user
	cmd.Env = serverEnv()
	cmd.WaitDelay = 5 * time.Second
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	return cmd
}

func (c *Cluster) run(ctx context.Context, name string, args ...string) error {
	out, err := c.command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	return nil
}

// writeFile writes a file in the data directory, owned by the server user,
// never through a symbolic link (see replaceNoFollow).
func (c *Cluster) writeFile(name string, data []byte, perm fs.FileMode) error {
	uid, gid := -1, -1
	if c.cred != nil {
		uid, gid = int(c.cred.Uid), int(c.cred.Gid)
	}
	return replaceNoFollow(filepath.Join(c.Dir, name), data, perm, uid, gid)
}

// serverUser returns the credentials of OS user postgres, which runs the
// server when we are root: initdb and postgres refuse to run as root.
func serverUser() (*syscall.Credential, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("localpg: running as root needs an OS user postgres to run the server as: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("localpg: user postgres: %w", err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("localpg: user postgres: %w", err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// serverEnv is our environment minus what would redirect the server (PGPORT,
// PGDATA, ...) or translate its messages.
func serverEnv() []string {
	env := []string{"LC_ALL=C"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") && !strings.HasPrefix(kv, "LC_") && !strings.HasPrefix(kv, "LANG") {
			env = append(env, kv)
		}
	}
	return env
}

// pgctlTimeout is pg_ctl's -t: the seconds left before ctx's deadline, so that
// pg_ctl gives up with a message rather than being killed; 60, pg_ctl's
// default, without a deadline.
func pgctlTimeout(ctx context.Context) string {
	d, ok := ctx.Deadline()
	if !ok {
		return "60"
	}
	return strconv.Itoa(max(1, int(time.Until(d).Seconds())))
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func portFree(port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}
