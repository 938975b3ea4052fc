package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"go.opentelemetry.io/otel"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"example.com/pscmessages/cmd/internal/pubsubclient"
)

// runPublish publishes messages to a Pub/Sub topic: to the real service with
// Google default credentials, or to an emulator when PUBSUB_EMULATOR_HOST is
// set (the client library honours it).
func runPublish(ctx context.Context, args []string) error {
	return publish(ctx, args, os.Stdin, os.Stdout, os.Stderr)
}

// maxMessageLine is Pub/Sub's limit on a message, so that any line it accepts can be read.
const maxMessageLine = 10 << 20

// publish is runPublish with its streams as arguments, for tests. It prints
// each message id on stdout, in input order, and reports each failure on
// stderr; it returns an error if any message was not published.
func publish(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("publish", flag.ContinueOnError)
	fs.SetOutput(stderr)
	project := fs.String("project", pubsubclient.Project(), "project `id`; PUBSUB_PROJECT_ID or GOOGLE_CLOUD_PROJECT sets the default")
	topic := fs.String("topic", pubsubTopic(), "topic `id`; PUBSUB_TOPIC sets the default")
	asJSON := fs.Bool("json", false, `send each message as {"content": MESSAGE}`)
	attrs := attrFlag{}
	fs.Var(attrs, "attr", "attribute `key=value` of every message (repeatable)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: go run ./cmd/pscpubsub publish [-project P] [-topic T] [-attr k=v ...] [-json] [MESSAGE ...]\n\n"+
			"Publishes each MESSAGE, or with none each non-empty line of stdin, and prints its id.\n"+
			"With PUBSUB_EMULATOR_HOST set it publishes to that emulator, otherwise to Pub/Sub with\n"+
			"Google default credentials.\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}

	if addr := os.Getenv("PUBSUB_EMULATOR_HOST"); addr != "" {
		// The library would retry an address where nothing listens for a
		// minute per message before saying so.
		if err := pubsubclient.CheckEmulator(ctx, addr); err != nil {
			return err
		}
	}
	// With telemetry on (a build with -tags otlp and an OTLP endpoint set),
	// each message carries its publish span's context in the attribute
	// googclient_traceparent, which the function's consumer span continues:
	// one trace from this command to the row.
	flush, traced := otel.GetTracerProvider().(interface{ ForceFlush(context.Context) error })
	client, err := pubsub.NewClientWithConfig(ctx, *project, &pubsub.ClientConfig{EnableOpenTelemetryTracing: traced})
	if err != nil {
		if os.Getenv("PUBSUB_EMULATOR_HOST") == "" {
			err = fmt.Errorf("%w (to publish to a local emulator, set PUBSUB_EMULATOR_HOST)", err)
		}
		return fmt.Errorf("pubsub client: %w", err)
	}
	defer client.Close()
	pub := client.Publisher(*topic)
	defer pub.Stop()
	// Ctrl-C ends the input; what was handed to the library is still
	// published and reported (the library bounds that by its timeout).
	pctx := context.WithoutCancel(ctx)

	// Results are awaited in order by a second goroutine, so ids appear as
	// soon as they are known (a line typed is a line published) while the
	// library still batches a fast stream of lines.
	type pending struct {
		n    int
		text string
		res  *pubsub.PublishResult
	}
	results := make(chan pending, 1024)
	failed := make(chan int, 1)
	go func() {
		count, notFound := 0, false
		for p := range results {
			id, err := p.res.Get(pctx)
			if err != nil {
				count++
				fmt.Fprintf(stderr, "message %d (%s) not published: %v\n", p.n, previewMessage(p.text), err)
				if status.Code(err) == codes.NotFound && !notFound {
					notFound = true
					hint := fmt.Sprintf("gcloud pubsub topics create %s --project=%s", *topic, *project)
					if os.Getenv("PUBSUB_EMULATOR_HOST") != "" {
						hint = "`go run ./cmd/pscpubsub` with the same project and topic creates it in the emulator"
					}
					fmt.Fprintf(stderr, "topic projects/%s/topics/%s does not exist: %s\n", *project, *topic, hint)
				}
				continue
			}
			fmt.Fprintln(stdout, id)
		}
		failed <- count
	}()

	seq := 0
	n, err := eachMessage(ctx, fs.Args(), stdin, func(text string) error {
		seq++
		data := []byte(text)
		if *asJSON {
			var err error
			if data, err = contentJSON(text); err != nil {
				return err
			}
		}
		results <- pending{n: seq, text: text, res: pub.Publish(pctx, &pubsub.Message{Data: data, Attributes: attrs})}
		return nil
	})
	close(results)
	nFailed := <-failed
	if traced {
		// The spans are batched: sent now, or lost with the process.
		fctx, cancel := context.WithTimeout(pctx, 5*time.Second)
		if ferr := flush.ForceFlush(fctx); ferr != nil {
			fmt.Fprintf(stderr, "publish spans not sent: %v\n", ferr)
		}
		cancel()
	}
	switch {
	case err != nil:
		return err
	case n == 0:
		return errors.New("nothing to publish: give messages as arguments or lines on stdin")
	case nFailed > 0:
		return fmt.Errorf("%d of %d messages not published", nFailed, n)
	}
	return nil
}

// eachMessage calls fn with each argument or, with none, each non-blank line
// of stdin, and returns how many it passed. Stdin is read in a goroutine so
// that Ctrl-C (ctx) ends the input even while a terminal waits for a line.
func eachMessage(ctx context.Context, args []string, stdin io.Reader, fn func(string) error) (int, error) {
	if len(args) > 0 {
		for i, a := range args {
			if err := fn(a); err != nil {
				return i, err
			}
		}
		return len(args), nil
	}
	lines := make(chan string)
	readErr := make(chan error, 1)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdin)
		sc.Buffer(make([]byte, 64<<10), maxMessageLine)
		for sc.Scan() {
			line := strings.TrimSuffix(sc.Text(), "\r")
			if strings.TrimSpace(line) == "" {
				continue
			}
			select {
			case lines <- line:
			case <-ctx.Done():
				return
			}
		}
		readErr <- sc.Err()
	}()
	n := 0
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				select {
				case err := <-readErr:
					if err != nil {
						return n, fmt.Errorf("reading stdin: %w", err)
					}
				default:
				}
				return n, ctx.Err()
			}
			if err := fn(line); err != nil {
				return n, err
			}
			n++
		case <-ctx.Done():
			return n, ctx.Err()
		}
	}
}

// contentJSON is {"content": text}, with <, > and & left as they are.
func contentJSON(text string) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(map[string]string{"content": text}); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// preview quotes the start of a message for an error report.
func previewMessage(s string) string {
	const max = 40
	if r := []rune(s); len(r) > max {
		return fmt.Sprintf("%q…", string(r[:max]))
	}
	return fmt.Sprintf("%q", s)
}

// attrFlag collects repeated -attr key=value flags.
type attrFlag map[string]string

func (a attrFlag) String() string {
	parts := make([]string, 0, len(a))
	for k, v := range a {
		parts = append(parts, k+"="+v)
	}
	return strings.Join(parts, ",")
}

func (a attrFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want key=value, got %q", s)
	}
	a[k] = v
	return nil
}
