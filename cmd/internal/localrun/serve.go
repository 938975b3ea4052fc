package localrun

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	function "example.com/pscmessages"
	"example.com/pscmessages/store/localpg"
)

// runServe serves the functions as functions-framework-go does on Cloud Run
// (function.Service.Handler), on its own http.Server so that it has timeouts and a
// graceful shutdown. With FUNCTION_TARGET set it serves that one function at
// every path; without it, Messages answers at / and IngestPubSub at
// /IngestPubSub. On SIGTERM or Ctrl-C it stops accepting, lets the requests in
// flight finish, closes the pool, then stops the local PostgreSQL. ext, when
// not nil, adds its flags and is started once the functions are served.
func runServe(ctx context.Context, args []string, ext Extension) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	fresh := fs.Bool("fresh", false, "delete the local PostgreSQL data folder before starting")
	line := "[serve] [-fresh]"
	if ext != nil {
		ext.AddFlags(fs)
		line += " " + ext.Usage()
	} else {
		fs.Var(pubsubElsewhere{}, "pubsub", "Pub/Sub delivery is go run ./cmd/pscpubsub's (this runner links no Pub/Sub client)")
	}
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: go run ./cmd/%s %s\n\n"+
			"Serves the functions on HOST:PORT (default 127.0.0.1:8080). With no DATABASE_URL or DB_HOST\n"+
			"it starts a local PostgreSQL from this machine's binaries, whose data folder is kept across\n"+
			"runs (LOCAL_PGDATA, default %s; -fresh deletes it first).\n", program, line, defaultPGData())
		fs.PrintDefaults()
	}
	fs.Parse(args)

	if err := checkServeEnv(os.Getenv); err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	// Every setting the functions read, read once here and checked before
	// anything starts. Without DATABASE_URL or DB_HOST the database is the
	// local PostgreSQL started below, which WithDatabaseURL then names.
	cfg, err := function.ConfigFromEnv(envAsServed(os.Getenv))
	if err == nil {
		err = cfg.Check()
	}
	if err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}

	target := os.Getenv("FUNCTION_TARGET")
	if err := function.CheckTarget(target); err != nil {
		return err
	}
	// Bind first: a port that is taken fails at once, before a database is
	// started, and the address printed below is already accepting.
	addr := net.JoinHostPort(envOr("HOST", "127.0.0.1"), envOr("PORT", "8080"))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("cannot listen on %s (set PORT to a free port): %w", addr, err)
	}
	defer ln.Close()

	// Deferred in this order, so on the way out the pool closes (pending
	// writes finish) before the local PostgreSQL stops.
	ownDatabase := os.Getenv("DATABASE_URL") != "" || os.Getenv("DB_HOST") != ""
	if !ownDatabase {
		cluster, err := startLocalPostgres(ctx, *fresh)
		if err != nil {
			return err
		}
		cfg = cfg.WithDatabaseURL(localURL(cluster))
		// Registered until the server is stopped.
		defer onAbort(func() { abortLocalPostgres(cluster) })()
		defer func() {
			if err := cluster.Stop(context.Background()); err != nil {
				fmt.Fprintln(os.Stderr, "stopping local PostgreSQL:", err)
			}
		}()
	}
	fn := function.New(cfg, os.Stdout)
	if err := fn.Check(); err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	defer fn.Close()
	if ownDatabase {
		fmt.Println(describeDatabase(ctx, os.Getenv))
	}
	handler, err := fn.Handler(target)
	if err != nil {
		return err
	}

	srv := newLocalServer(handler)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	base := "http://" + ln.Addr().String()
	if target == "" || target == "Messages" {
		fmt.Println(editsLine(cfg.Edits()))
	}
	if target != "" {
		fmt.Printf("serving %s at %s/\n", target, base)
	} else {
		fmt.Printf("serving Messages at %s/ and IngestPubSub at %s/IngestPubSub\n", base, base)
	}
	stopExt := func() {}
	if ext != nil {
		if stopExt, err = ext.Start(ctx, base); err != nil {
			srv.Close()
			return err
		}
	} else if emu := os.Getenv("PUBSUB_EMULATOR_HOST"); emu != "" {
		fmt.Printf("PUBSUB_EMULATOR_HOST=%s is set, but this runner does not pull Pub/Sub: go run ./cmd/pscpubsub serves the functions and delivers the topic to IngestPubSub\n", emu)
	}
	select {
	case err := <-errc:
		stopExt()
		return fmt.Errorf("serving on %s: %w", addr, err)
	case <-ctx.Done():
	}
	fmt.Println("shutting down: finishing the requests in flight")
	// What the extension has in flight finishes first, while the server
	// and pool are up.
	stopExt()
	return drain(srv, shutdownTimeout)
}

// pubsubElsewhere is serve's -pubsub in the runner that links no Pub/Sub
// client: setting it says which command has it.
type pubsubElsewhere struct{}

func (pubsubElsewhere) String() string   { return "" }
func (pubsubElsewhere) IsBoolFlag() bool { return true }
func (pubsubElsewhere) Set(v string) error {
	if on, err := strconv.ParseBool(v); err == nil && !on {
		return nil
	}
	return errors.New("Pub/Sub delivery is in go run ./cmd/pscpubsub, which serves the same functions and pulls the topic into IngestPubSub")
}

// Timeouts of the local server. Cloud Run's front end bounds what reaches a
// deployed function; locally nothing else does, so a client that trickles a
// body (or never finishes its headers) would hold a connection and a
// goroutine forever.
const (
	// readHeaderTimeout bounds the request line and headers.
	readHeaderTimeout = 5 * time.Second
	// readTimeout bounds the whole request, body included: ample for the
	// largest delivery (maxDeliveryBytes) over loopback.
	readTimeout = 15 * time.Second
	// writeTimeout bounds a request from the end of its headers to the end
	// of its answer, so a client that never reads a large answer (a page of
	// messages) cannot hold a connection and a goroutine for ever. It covers
	// the longest legitimate request: its body (readTimeout), then a cold
	// pool open and a query (shutdownTimeout).
	writeTimeout = readTimeout + shutdownTimeout + 5*time.Second
	// idleTimeout closes a keep-alive connection with no request.
	idleTimeout = 60 * time.Second
	// shutdownTimeout bounds the drain on SIGTERM/Ctrl-C: the longest a
	// request may take is a cold pool open (30 s) plus a query.
	shutdownTimeout = 40 * time.Second
)

// newLocalServer is the local runner's http.Server around the functions.
func newLocalServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
	}
}

// drain stops accepting, waits up to timeout for the requests in flight to be
// answered, then cuts what is left. A cut request was never answered, so its
// client sees an error and retries; nothing it sent was acknowledged.
func drain(srv *http.Server, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		srv.Close()
		return fmt.Errorf("requests still running after %s were cut: %w", timeout, err)
	}
	return nil
}

// localDatabaseURL stands for the URL startLocalPostgres will set, for
// checking the other settings before the local PostgreSQL exists.
const localDatabaseURL = "postgres://postgres@127.0.0.1/postgres?sslmode=disable"

// envAsServed is getenv as the functions will see it: without DATABASE_URL or
// DB_HOST, the runner points DATABASE_URL at its own PostgreSQL.
func envAsServed(getenv func(string) string) func(string) string {
	if getenv("DATABASE_URL") != "" || getenv("DB_HOST") != "" {
		return getenv
	}
	return envWith(getenv, "DATABASE_URL", localDatabaseURL)
}

// envWith is getenv with name set to value.
func envWith(getenv func(string) string, name, value string) func(string) string {
	return func(n string) string {
		if n == name {
			return value
		}
		return getenv(n)
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// defaultPGData is outside the home folder because, run as root, the server
// runs as the postgres user, which cannot enter /root. Its name is easy to
// guess, so localpg creates it private and refuses it when someone else
// made it first (store/localpg/datadir.go).
func defaultPGData() string {
	return filepath.Join(os.TempDir(), "pscmessages-"+strconv.Itoa(os.Getuid()), "pgdata")
}

// abortTimeout bounds the immediate shutdown of the local PostgreSQL when a
// second interrupt ends the runner; it normally takes well under a second.
const abortTimeout = 10 * time.Second

// abortLocalPostgres stops the local PostgreSQL at once, for a runner ending
// on a second interrupt, or says in one line that it may still run and how
// to stop it. The server recovers at its next start, as after a crash; with
// its crash-safe settings no committed message is lost.
func abortLocalPostgres(c *localpg.Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), abortTimeout)
	defer cancel()
	if err := c.Abort(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "the local PostgreSQL in %s may still be running (%v); stop it with: %s\n", c.Dir, err, c.StopCommand())
		return
	}
	fmt.Fprintln(os.Stderr, "stopped the local PostgreSQL at once; it recovers at its next start")
}

// localPasswordFile is the pgpass file, inside the data folder, that holds
// the local cluster's superuser password.
const localPasswordFile = "localpg.pgpass"

// startLocalPostgres starts (or reuses) a local cluster; localURL is the
// URL the function reaches it by.
//
// The cluster listens on 127.0.0.1 with scram-sha-256 for every connection
// and a random superuser password kept in a 0600 pgpass file of the
// developer's: other users of the machine cannot log in (with trust, any of
// them could, and run COPY ... TO PROGRAM as the developer). A password,
// rather than a socket in a private folder, keeps the plain TCP URL that
// every subcommand, pgbench and psql already use; the pgpass file keeps the
// password out of URLs, arguments and the environment.
//
// A data folder in use by another live runner is refused, naming its PID and
// port, rather than shared: that runner stops its server when it exits.
func startLocalPostgres(ctx context.Context, fresh bool) (*localpg.Cluster, error) {
	dir := envOr("LOCAL_PGDATA", defaultPGData())
	if fresh {
		// Checked and deleted under the owner lock: a runner that takes
		// the folder meanwhile is refused, not left without its data.
		if err := localpg.RemoveUnused(dir); err != nil {
			return nil, inUse(dir, err)
		}
	} else if err := localpg.CheckInUse(dir); err != nil {
		return nil, inUse(dir, err)
	}
	passfile := filepath.Join(dir, localPasswordFile)
	cluster, err := localpg.Start(ctx, localpg.Options{Dir: dir, Durable: true, PasswordFile: passfile})
	if errors.Is(err, localpg.ErrNotInstalled) {
		return nil, fmt.Errorf("no database configured and no PostgreSQL binaries found.\n%w", err)
	}
	var busy *localpg.InUseError
	if errors.As(err, &busy) {
		return nil, inUse(dir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("starting local PostgreSQL in %s: %w", dir, unsafeDir(err))
	}
	fmt.Printf("no DATABASE_URL or DB_HOST: started local PostgreSQL on 127.0.0.1:%d, data in %s (kept across runs; -fresh deletes it)\n", cluster.Port(), dir)
	fmt.Printf("connect with: psql %s\n", shellQuote(psqlConninfo(cluster.Port(), passfile)))
	return cluster, nil
}

// localURL is the URL of the local cluster's superuser database, its
// password in the cluster's pgpass file.
func localURL(c *localpg.Cluster) string {
	return c.URL("postgres", "", "postgres", "passfile="+filepath.Join(c.Dir, localPasswordFile))
}

// unsafeDir adds to a *localpg.UnsafeDirError what a developer can do.
func unsafeDir(err error) error {
	var unsafe *localpg.UnsafeDirError
	if errors.As(err, &unsafe) {
		return fmt.Errorf("%w.\nRemove it if it is not yours, or set LOCAL_PGDATA to a folder of your own", err)
	}
	return err
}

// inUse turns a *localpg.InUseError into what a developer can act on.
func inUse(dir string, err error) error {
	var busy *localpg.InUseError
	if !errors.As(err, &busy) {
		return unsafeDir(err)
	}
	where := "its server still starting"
	if busy.Port > 0 {
		where = fmt.Sprintf("PostgreSQL on 127.0.0.1:%d", busy.Port)
	}
	return fmt.Errorf("the local PostgreSQL in %s belongs to another runner, PID %d (%s); it was left alone.\n"+
		"Use that runner, stop it, or give this one its own folder: LOCAL_PGDATA=$(mktemp -d) (or set DATABASE_URL)", dir, busy.PID, where)
}

// psqlConninfo is a libpq connection string for the local cluster.
func psqlConninfo(port int, passfile string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres passfile=%s", port, conninfoValue(passfile))
}

// conninfoValue quotes v for a libpq keyword=value string when it needs it.
func conninfoValue(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n'\\") {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// shellQuote quotes s as one word for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// editsLine says at start whether Messages lets callers change and remove
// messages, so that whoever runs it sees which contract they are serving
// before the first 405 (or the first unwanted DELETE) surprises them.
func editsLine(edits bool) string {
	if edits {
		return "edits on: PUT, PATCH and DELETE /messages/{id} change and remove messages (HTTP_ROUTES=all)"
	}
	return "edits off: PUT, PATCH and DELETE /messages/{id} answer 405 (HTTP_ROUTES=all serves them)"
}
