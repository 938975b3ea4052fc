// Command pscbench measures the messages function on this machine: HTTP
// throughput and latency beside pgbench, the runner's peak memory, and many
// function processes against one small database. It is a command of its
// own so that the runner users start (cmd/pscmessages) links none of it.
// `go run ./cmd/pscbench help` lists the benchmarks; BENCHMARKS.md beside
// this file holds their figures and how each was taken.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// command is one benchmark; each parses its own flags.
type command struct {
	name    string
	summary string // one line for `help`
	run     func(ctx context.Context, args []string) error
}

// commands, in the order `help` lists them.
var commands = []command{
	{"throughput", "measure POST/GET throughput and latency beside pgbench, cold start and idle RSS", runBench},
	{"rss", "measure the runner's peak memory under large deliveries and pages", runBenchRSS},
	{"instances", "run many function processes against one small database, direct and through PgBouncer", runBenchInstances},
}

func lookup(name string) (command, bool) {
	for _, c := range commands {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

// usage lists the benchmarks, one line each.
func usage(w io.Writer) {
	fmt.Fprint(w, "usage: go run ./cmd/pscbench COMMAND [flags]\n\ncommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-12s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, "  help         this list; `help COMMAND` shows a command's flags\n")
}

func main() {
	// The first Ctrl-C or SIGTERM cancels the benchmark, which then stops
	// the clusters and processes it started; a second one ends it at once.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	args := os.Args[1:]
	if len(args) == 0 {
		usage(os.Stderr)
		os.Exit(2)
	}
	name, args := args[0], args[1:]
	switch {
	case name == "help" && len(args) == 0, isHelpFlag(name):
		usage(os.Stdout)
		return
	case name == "help":
		name, args = args[0], []string{"-h"}
	}
	c, ok := lookup(name)
	if !ok {
		fmt.Fprintf(os.Stderr, "unknown command %q\n\n", name)
		usage(os.Stderr)
		os.Exit(2)
	}
	if err := c.run(ctx, args); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}

func isHelpFlag(s string) bool { return s == "-h" || s == "-help" || s == "--help" }

// envWith is getenv with name set to value.
func envWith(getenv func(string) string, name, value string) func(string) string {
	return func(n string) string {
		if n == name {
			return value
		}
		return getenv(n)
	}
}
