package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/GoogleCloudPlatform/functions-framework-go/funcframework"

	function "example.com/pscmessages"
	"example.com/pscmessages/store/localpg"
)

// runServe serves the registered functions through functions-framework-go,
// so requests are handled exactly as on Cloud Run. With FUNCTION_TARGET set it
// serves that one function at every path; without it, Messages answers at /
// and IngestPubSub at /IngestPubSub.
func runServe(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	fresh := fs.Bool("fresh", false, "delete the local PostgreSQL data folder before starting")
	ps := addPubSubFlags(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: go run ./cmd [serve] [-fresh] [-pubsub [-pubsub-concurrency N]]\n\n"+
			"Serves the functions on HOST:PORT (default 127.0.0.1:8080). With no DATABASE_URL or DB_HOST\n"+
			"it starts a throwaway PostgreSQL from this machine's binaries (data kept in LOCAL_PGDATA,\n"+
			"default %s).\n", defaultPGData())
		fs.PrintDefaults()
	}
	fs.Parse(args)

	if os.Getenv("DATABASE_URL") == "" && os.Getenv("DB_HOST") == "" {
		cluster, err := startLocalPostgres(ctx, *fresh)
		if err != nil {
			return err
		}
		defer func() {
			if err := cluster.Stop(context.Background()); err != nil {
				fmt.Fprintln(os.Stderr, "stopping local PostgreSQL:", err)
			}
		}()
	}
	if err := function.CheckConfig(); err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	defer function.Close()

	target := os.Getenv("FUNCTION_TARGET")
	if target == "" {
		// The framework serves each function only at /Name; the legacy
		// contract lives at /, so Messages is registered there too.
		if err := funcframework.RegisterHTTPFunctionContext(ctx, "/", function.Messages); err != nil {
			return err
		}
	}
	host, port := envOr("HOST", "127.0.0.1"), envOr("PORT", "8080")
	errc := make(chan error, 1)
	go func() { errc <- funcframework.StartHostPort(host, port) }()
	if err := waitListening(ctx, net.JoinHostPort(host, port), errc); err != nil {
		return err
	}
	base := "http://" + net.JoinHostPort(host, port)
	if target != "" {
		fmt.Printf("serving %s at %s/\n", target, base)
	} else {
		fmt.Printf("serving Messages at %s/ and IngestPubSub at %s/IngestPubSub\n", base, base)
	}
	// Deferred last, so it runs first: in-flight deliveries finish while
	// the server and the pool are still up.
	stopPubSub, err := ps.start(ctx, base)
	if err != nil {
		return err
	}
	defer stopPubSub()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		fmt.Println("shutting down")
		return nil
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// waitListening returns once addr accepts connections, so the address printed
// is ready for curl.
func waitListening(ctx context.Context, addr string, errc <-chan error) error {
	for {
		select {
		case err := <-errc:
			return err
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// defaultPGData is outside the home folder because, run as root, the server
// runs as the postgres user, which cannot enter /root.
func defaultPGData() string {
	return filepath.Join(os.TempDir(), "pscmessages-"+strconv.Itoa(os.Getuid()), "pgdata")
}

// startLocalPostgres starts (or reuses) a local cluster and points the
// function at it through DATABASE_URL.
func startLocalPostgres(ctx context.Context, fresh bool) (*localpg.Cluster, error) {
	dir := envOr("LOCAL_PGDATA", defaultPGData())
	if fresh {
		if err := os.RemoveAll(dir); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, err
	}
	if err := os.Chmod(filepath.Dir(dir), 0o755); err != nil {
		return nil, err
	}
	cluster, err := localpg.Start(ctx, localpg.Options{Dir: dir, Durable: true})
	if errors.Is(err, localpg.ErrNotInstalled) {
		return nil, fmt.Errorf("no database configured and no PostgreSQL binaries found.\n%w", err)
	}
	if err != nil {
		return nil, fmt.Errorf("starting local PostgreSQL in %s: %w", dir, err)
	}
	url := cluster.SuperuserURL("postgres")
	os.Setenv("DATABASE_URL", url)
	fmt.Printf("no DATABASE_URL or DB_HOST: started local PostgreSQL on 127.0.0.1:%d, data in %s (kept across runs; -fresh deletes it)\n", cluster.Port(), dir)
	return cluster, nil
}
