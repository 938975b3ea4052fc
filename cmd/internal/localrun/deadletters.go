package localrun

// `go run ./cmd/pscmessages deadletters`: what IngestPubSub kept in dead_letters, and
// sending it again once the cause is fixed. It connects like the functions
// (DATABASE_URL, or DB_HOST and the other DB_* settings) or, with neither
// set, to the local runner's database in LOCAL_PGDATA: the running one if
// `go run ./cmd/pscmessages` is up, else it starts it for the command and stops it after.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	function "example.com/pscmessages"
	"example.com/pscmessages/cmd/logging"
	"example.com/pscmessages/store"
	"example.com/pscmessages/store/deadletter"
	"example.com/pscmessages/store/localpg"
)

const deadLettersUsage = `usage: go run ./cmd/pscmessages deadletters [list] [-limit N] [-raw]
       go run ./cmd/pscmessages deadletters show [-raw] ID
       go run ./cmd/pscmessages deadletters replay [-keep] ID...
       go run ./cmd/pscmessages deadletters delete ID...

Lists the Pub/Sub messages IngestPubSub kept because they could not be stored
(id, received, size, reason), shows one with its payload, sends selected ones
through IngestPubSub's own decoding and storing again (a message already
stored is not stored twice) and deletes each one that is now stored (-keep
keeps them), or deletes them. Each dead letter holds its delivery whole, so
it can be replayed once the cause is fixed: a constraint dropped, or
MAX_CONTENT_BYTES raised in this command's environment for "content
exceeds". A delivery larger than IngestPubSub decodes (the base64 of
MAX_BODY_BYTES plus 256 KiB: 787800 bytes with the default limits) is never
here: it is answered 500, so Pub/Sub keeps it whole and moves it to the
subscription's dead-letter topic after its last attempt. Rows of which only
a prefix was kept (from before dead letters were kept whole) cannot be
replayed.
What the publisher sent is printed with control characters escaped (\x1b,
\n, \u202e), so it cannot drive the terminal or forge lines; -raw prints it
as it is.

It connects as the functions do (DATABASE_URL, or DB_HOST, DB_NAME, DB_USER,
DB_PASSWORD, ...); with neither DATABASE_URL nor DB_HOST, to the local
runner's database in LOCAL_PGDATA. Against Cloud SQL, run it as the
administrator, or as a role given 'go run ./cmd/pscmessages migrate -deadletters-operator ROLE'.
`

func runDeadLetters(ctx context.Context, args []string) error {
	return deadLettersCmd(ctx, args, os.Stdout, os.Stderr)
}

func deadLettersCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sub := "list"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		sub, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("deadletters "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(fs.Output(), deadLettersUsage); fs.PrintDefaults() }
	limit := fs.Int("limit", 50, "list: how many, newest first")
	keep := fs.Bool("keep", false, "replay: keep the dead letters that were stored")
	raw := fs.Bool("raw", false, "list, show: print what the publisher sent as it is; without it, control characters\n(terminal escapes, line breaks, bidi controls) are escaped as \\x1b, \\n, \\u202e")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	var ids []int64
	for _, a := range fs.Args() {
		id, err := strconv.ParseInt(a, 10, 64)
		if err != nil || id <= 0 {
			return fmt.Errorf("%q is not a dead letter id (the first column of `deadletters list`)", a)
		}
		ids = append(ids, id)
	}
	switch {
	case sub == "list" && len(ids) > 0:
		return errors.New("list takes no ids; use show ID")
	case sub == "show" && len(ids) != 1:
		return errors.New("show takes one id")
	case (sub == "replay" || sub == "delete") && len(ids) == 0:
		return fmt.Errorf("%s takes the ids of the dead letters (see `deadletters list`)", sub)
	case sub != "list" && sub != "show" && sub != "replay" && sub != "delete":
		fmt.Fprint(stderr, deadLettersUsage)
		return fmt.Errorf("unknown deadletters command %q", sub)
	}

	localURL, stop, err := deadLettersDatabase(ctx, stderr)
	if err != nil {
		return err
	}
	defer stop()
	// The settings, read once: with the local database as if DATABASE_URL
	// named it.
	getenv := os.Getenv
	if localURL != "" {
		getenv = envWith(os.Getenv, "DATABASE_URL", localURL)
	}
	if err := checkServeEnv(getenv); err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	cfg, err := function.ConfigFromEnv(getenv)
	if err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	conn, err := store.AdminConn(ctx, cfg.Database())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	fn := function.New(cfg, os.Stdout)
	defer fn.Close()

	switch sub {
	case "list":
		return deadLettersList(ctx, conn, *limit, printer(*raw), stdout)
	case "show":
		return deadLettersShow(ctx, conn, ids[0], printer(*raw), stdout)
	case "delete":
		for _, id := range ids {
			if err := deadletter.Delete(ctx, conn, id); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "dead letter %d: deleted\n", id)
		}
		return nil
	}
	return deadLettersReplay(ctx, fn, conn, ids, *keep, stdout)
}

// deadLettersDatabase returns the URL of the local runner's database when
// neither DATABASE_URL nor DB_HOST is set, starting it if no runner has it
// up, and "" when they are. The returned func stops what it started.
func deadLettersDatabase(ctx context.Context, stderr io.Writer) (string, func(), error) {
	if os.Getenv("DATABASE_URL") != "" || os.Getenv("DB_HOST") != "" {
		return "", func() {}, nil
	}
	dir := envOr("LOCAL_PGDATA", defaultPGData())
	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); err != nil {
		return "", nil, fmt.Errorf("no DATABASE_URL or DB_HOST, and no local database in %s: run `go run ./cmd/pscmessages` once (or set LOCAL_PGDATA to its folder), or point DATABASE_URL or DB_HOST at the database", dir)
	}
	passfile := filepath.Join(dir, localPasswordFile)
	var busy *localpg.InUseError
	if err := localpg.CheckInUse(dir); errors.As(err, &busy) && busy.Port > 0 {
		// `go run ./cmd/pscmessages` is up: use its server.
		q := url.Values{"sslmode": {"disable"}, "passfile": {passfile}}
		return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?%s", busy.Port, q.Encode()), func() {}, nil
	} else if err != nil {
		return "", nil, inUse(dir, err)
	}
	cluster, err := localpg.Start(ctx, localpg.Options{Dir: dir, Durable: true, PasswordFile: passfile})
	if err != nil {
		return "", nil, fmt.Errorf("starting the local PostgreSQL in %s: %w", dir, err)
	}
	fmt.Fprintf(stderr, "started the local PostgreSQL in %s for this command\n", dir)
	// runDeadLetters closes the function's pool (deferred after this) first.
	// A second interrupt does not leave the server running either.
	unregister := onAbort(func() { abortLocalPostgres(cluster) })
	return localURL(cluster), func() {
		cluster.Stop(context.Background())
		unregister()
	}, nil
}

// printer is how what a publisher sent (ids, reasons quoting it, payloads)
// is printed: escaped (logging.EscapeControl), so that it cannot forge
// lines or drive the operator's terminal, or with -raw as it is.
func printer(raw bool) func(string) string {
	if raw {
		return func(s string) string { return s }
	}
	return logging.EscapeControl
}

func deadLettersList(ctx context.Context, conn *pgx.Conn, limit int, text func(string) string, w io.Writer) error {
	list, err := deadletter.List(ctx, conn, limit)
	if err != nil {
		return err
	}
	if len(list) == 0 {
		fmt.Fprintln(w, "no dead letters")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tRECEIVED\tSIZE\tEVENT ID\tREASON")
	for _, d := range list {
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\n", d.ID, d.ReceivedAt.UTC().Format("2006-01-02 15:04:05"), d.PayloadSize, text(cut(d.EventID, 32)), text(cut(d.Reason, 100)))
	}
	tw.Flush()
	if len(list) == limit {
		fmt.Fprintf(w, "(the newest %d; -limit N shows more)\n", limit)
	}
	return nil
}

func deadLettersShow(ctx context.Context, conn *pgx.Conn, id int64, text func(string) string, w io.Writer) error {
	d, err := deadletter.Get(ctx, conn, id)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "id:        %d\nreceived:  %s\nevent id:  %s\nsource:    %s\ntype:      %s\nreason:    %s\nsize:      %d bytes (sha256 %x)\n",
		d.ID, d.ReceivedAt.UTC().Format("2006-01-02 15:04:05.000 MST"), text(d.EventID), text(d.EventSource), text(d.EventType), text(d.Reason), d.PayloadSize, d.PayloadSHA256)
	if why := d.NotReplayable(); why != "" {
		fmt.Fprintf(w, "replay:    not possible: %s\n", why)
	} else {
		fmt.Fprintf(w, "replay:    go run ./cmd/pscmessages deadletters replay %d\n", d.ID)
	}
	fmt.Fprintf(w, "payload (%d bytes kept):\n", len(d.Payload))
	fmt.Fprintf(w, "%s\n", text(string(d.Payload)))
	return nil
}

// deadLettersReplay replays each id in turn; one that fails is reported and
// kept, and the others go on. It fails when any did.
func deadLettersReplay(ctx context.Context, fn *function.Service, conn *pgx.Conn, ids []int64, keep bool, w io.Writer) error {
	failed := 0
	for _, id := range ids {
		d, err := deadletter.Get(ctx, conn, id)
		if err != nil {
			fmt.Fprintln(w, err) // it names the id
			failed++
			continue
		}
		if why := d.NotReplayable(); why != "" {
			fmt.Fprintf(w, "dead letter %d: not replayed: %s\n", id, why)
			failed++
			continue
		}
		res, err := fn.Replay(ctx, d)
		if err != nil {
			fmt.Fprintf(w, "dead letter %d: not replayed, kept: %v\n", id, err)
			failed++
			continue
		}
		what := fmt.Sprintf("stored as message %d", res.MessageID)
		if res.AlreadyStored {
			what = fmt.Sprintf("already stored as message %d (nothing stored twice)", res.MessageID)
		}
		if keep {
			fmt.Fprintf(w, "dead letter %d: %s; kept (-keep)\n", id, what)
			continue
		}
		if err := deadletter.Delete(ctx, conn, id); err != nil {
			fmt.Fprintf(w, "dead letter %d: %s, but not deleted: %v\n", id, what, err)
			failed++
			continue
		}
		fmt.Fprintf(w, "dead letter %d: %s; deleted\n", id, what)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d dead letters not replayed (see above)", failed, len(ids))
	}
	return nil
}

func cut(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}
