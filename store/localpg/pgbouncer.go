package localpg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// BouncerOptions configures a PgBouncer in front of a Cluster. The zero value
// (with Upstream set) is a transaction-mode pooler with a server pool of 2
// per database and user, on a free loopback port, trusting every user listed
// in Users.
type BouncerOptions struct {
	// Upstream is the cluster the pooler forwards to. Required.
	Upstream *Cluster
	// PoolMode is PgBouncer's pool_mode; "" means "transaction", the mode
	// that scales many clients onto few server connections and breaks
	// session state.
	PoolMode string
	// DefaultPoolSize is default_pool_size: server connections per
	// database and user pair. 0 means 2, small enough that concurrent
	// clients share server connections in every test.
	DefaultPoolSize int
	// MaxClientConn is max_client_conn; 0 means 2000.
	MaxClientConn int
	// Users may log in (auth_type trust still needs them in auth_file);
	// nil means just the superuser postgres.
	Users []string
	// Password is what the pooler logs in to the upstream with, for every
	// user: the cluster's Options.Password ("" for a trust cluster).
	// Clients log in to the pooler itself without one.
	Password string
	// Port is the TCP port on 127.0.0.1; 0 picks a free one at the first
	// start and keeps it across Stop and Start.
	Port int
	// Binary is the pgbouncer executable; "" means FindPgBouncer().
	Binary string
}

// Bouncer is a PgBouncer process started by StartBouncer. Its methods are
// safe for concurrent use.
type Bouncer struct {
	// dir holds pgbouncer.ini, the auth file and the log.
	dir string

	opts BouncerOptions
	cred *syscall.Credential

	mu   sync.Mutex
	port int
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// FindPgBouncer returns the path of the pgbouncer executable: on PATH, or in
// the sbin directories where Debian's package puts it.
func FindPgBouncer() (string, error) {
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer", "/usr/local/bin/pgbouncer"} {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	return "", errors.New("localpg: pgbouncer not found: install it (apt-get install pgbouncer, or brew install pgbouncer)")
}

// StartBouncer writes a configuration for opts and starts PgBouncer in the
// foreground. It returns once the pooler accepts TCP connections. The
// pooler connects to the upstream cluster only when a client needs a server
// connection, so it starts even while the cluster is down.
func StartBouncer(ctx context.Context, opts BouncerOptions) (_ *Bouncer, err error) {
	if opts.Upstream == nil {
		return nil, errors.New("localpg: BouncerOptions.Upstream is required")
	}
	if opts.PoolMode == "" {
		opts.PoolMode = "transaction"
	}
	if opts.DefaultPoolSize == 0 {
		opts.DefaultPoolSize = 2
	}
	if opts.MaxClientConn == 0 {
		opts.MaxClientConn = 2000
	}
	if len(opts.Users) == 0 {
		opts.Users = []string{superuser}
	}
	if opts.Binary == "" {
		if opts.Binary, err = FindPgBouncer(); err != nil {
			return nil, err
		}
	}
	b := &Bouncer{opts: opts, port: opts.Port}
	if os.Geteuid() == 0 {
		// PgBouncer refuses to run as root, like postgres.
		if b.cred, err = serverUser(); err != nil {
			return nil, err
		}
	}
	if b.dir, err = os.MkdirTemp("", "localpg-pgbouncer-"); err != nil {
		return nil, fmt.Errorf("localpg: %w", err)
	}
	defer func() {
		if err != nil {
			b.Destroy()
		}
	}()
	if err := os.Chmod(b.dir, 0o755); err != nil {
		return nil, fmt.Errorf("localpg: %w", err)
	}
	if b.cred != nil {
		if err := os.Chown(b.dir, int(b.cred.Uid), int(b.cred.Gid)); err != nil {
			return nil, fmt.Errorf("localpg: %w", err)
		}
	}
	if err := b.Start(ctx); err != nil {
		return nil, err
	}
	return b, nil
}

// Port returns the pooler's TCP port.
func (b *Bouncer) Port() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.port
}

// URL returns a connection URL for database through the pooler, like
// Cluster.URL.
func (b *Bouncer) URL(user, password, database string, params ...string) string {
	return buildURL(b.Port(), user, password, database, params...)
}

// Start starts the pooler again after Stop, on the same port.
func (b *Bouncer) Start(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd != nil {
		return nil
	}
	if b.port == 0 {
		p, err := freePort()
		if err != nil {
			return fmt.Errorf("localpg: %w", err)
		}
		b.port = p
	}
	if err := b.writeConfig(); err != nil {
		return fmt.Errorf("localpg: writing pgbouncer.ini: %w", err)
	}
	// Not CommandContext: the pooler outlives ctx, which bounds only the start.
	cmd := exec.Command(b.opts.Binary, filepath.Join(b.dir, "pgbouncer.ini"))
	cmd.Dir = "/"
	cmd.Env = serverEnv()
	cmd.SysProcAttr = poolerProcAttr(b.cred)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("localpg: starting pgbouncer: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	addr := net.JoinHostPort(host, strconv.Itoa(b.port))
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-done:
			return fmt.Errorf("localpg: pgbouncer exited at start: %s", b.LogTail())
		case <-ctx.Done():
			cmd.Process.Kill()
			<-done
			return fmt.Errorf("localpg: pgbouncer did not listen on %s: %w: %s", addr, ctx.Err(), b.LogTail())
		case <-time.After(20 * time.Millisecond):
		}
	}
	b.cmd, b.done = cmd, done
	return nil
}

// Stop shuts the pooler down at once (SIGTERM: PgBouncer's immediate
// shutdown), dropping its client and server connections, as a crashed or
// redeployed pooler would. Stopping a stopped pooler does nothing.
func (b *Bouncer) Stop() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd == nil {
		return nil
	}
	b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.done:
	case <-time.After(10 * time.Second):
		b.cmd.Process.Kill()
		<-b.done
	}
	b.cmd, b.done = nil, nil
	return nil
}

// Destroy stops the pooler and removes its directory.
func (b *Bouncer) Destroy() error {
	b.Stop()
	if b.dir == "" {
		return nil
	}
	if err := os.RemoveAll(b.dir); err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	return nil
}

// writeConfig writes pgbouncer.ini and the auth file. The settings that
// matter for tests: no Unix socket (several poolers share a machine), trust
// towards a trust cluster, and server_login_retry of 1 s, so a restarted
// database is used again within a second (the default waits 15 s).
func (b *Bouncer) writeConfig() error {
	var users strings.Builder
	for _, u := range b.opts.Users {
		fmt.Fprintf(&users, "%q %q\n", u, b.opts.Password)
	}
	ini := fmt.Sprintf(`[databases]
* = host=%s port=%d

[pgbouncer]
listen_addr = %s
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = %s
default_pool_size = %d
max_client_conn = %d
server_login_retry = 1
ignore_startup_parameters = extra_float_digits
logfile = %s
`, host, b.opts.Upstream.Port(), host, b.port, filepath.Join(b.dir, "userlist.txt"),
		b.opts.PoolMode, b.opts.DefaultPoolSize, b.opts.MaxClientConn,
		filepath.Join(b.dir, "pgbouncer.log"))
	for name, data := range map[string]string{"userlist.txt": users.String(), "pgbouncer.ini": ini} {
		p := filepath.Join(b.dir, name)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			return err
		}
	}
	// The log is created by the pooler itself, as the server user.
	return nil
}

// LogFile returns the path of the pooler's log.
func (b *Bouncer) LogFile() string { return filepath.Join(b.dir, "pgbouncer.log") }

// LogTail returns the end of the pooler's log, for error messages.
func (b *Bouncer) LogTail() string {
	data, err := os.ReadFile(b.LogFile())
	if err != nil {
		return err.Error()
	}
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return string(data)
}
