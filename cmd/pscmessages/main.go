// Command pscmessages is the local entry point of the messages function, in the
// functions-framework-go layout: `go run ./cmd/pscmessages` serves the functions as Cloud
// Run would, and subcommands cover the tasks around them. `go run ./cmd/pscmessages help`
// lists them; `go run ./cmd/pscmessages help COMMAND` (or `COMMAND -h`) shows one's flags.
// `go install ./cmd/...` installs it as a binary.
package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"
)

// command is one subcommand; each parses its own flags.
type command struct {
	name    string
	summary string // one line for `help`
	run     func(ctx context.Context, args []string) error
}

// commands, in the order `help` lists them. serve is the default.
var commands = []command{
	{"serve", "serve Messages and IngestPubSub on HOST:PORT (the default command)", runServe},
	{"migrate", "apply the schema migrations and grant the functions' roles, as an administrator", runMigrate},
	{"publish", "publish messages to a Pub/Sub topic (the emulator's, with PUBSUB_EMULATOR_HOST)", runPublish},
	{"pull", "store a Pub/Sub subscription's messages in bulk, pulling them (no HTTP per message)", runPull},
	{"deadletters", "list, show, replay or delete the Pub/Sub messages IngestPubSub kept in dead_letters", runDeadLetters},
}

func lookup(name string) (command, bool) {
	for _, c := range commands {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

// usage lists the subcommands, one line each.
func usage(w io.Writer) {
	fmt.Fprint(w, "usage: go run ./cmd/pscmessages [COMMAND] [flags]   (or a binary: go install ./cmd/pscmessages)\n\ncommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-16s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, "  help             this list; `help COMMAND` shows a command's flags\n\n"+
		"With no command, serve runs: `go run ./cmd/pscmessages -h` shows its flags after this list.\n")
}

func main() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	handleInterrupts(cancel)
	name, args := "serve", os.Args[1:]
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		name, args = args[0], args[1:]
	}
	switch {
	case name == "help" && len(args) == 0:
		usage(os.Stdout)
		return
	case name == "help":
		name, args = args[0], []string{"-h"}
	case name == "serve" && len(os.Args) > 1 && isHelpFlag(os.Args[1]):
		// `go run ./cmd/pscmessages -h`: the commands first, then serve's own flags.
		usage(os.Stderr)
		fmt.Fprintln(os.Stderr)
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

// handleInterrupts makes the first Ctrl-C or SIGTERM cancel the command
// (serve then drains, which may take over a minute) and a second one end the
// process at once: it runs the onAbort functions, which stop what must not
// outlive it (the local PostgreSQL), then dies of that signal. What it
// leaves unanswered the clients see as a cut connection and Pub/Sub
// redelivers. From the second signal on, signals have their default action
// again, so a third one does not wait even for onAbort.
func handleInterrupts(cancel context.CancelFunc) {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		cancel()
		sig := <-sigs
		signal.Reset(os.Interrupt, syscall.SIGTERM)
		aborts.mu.Lock()
		fns := slices.Collect(maps.Values(aborts.fns))
		aborts.mu.Unlock()
		for _, fn := range fns {
			fn()
		}
		syscall.Kill(os.Getpid(), sig.(syscall.Signal))
	}()
}

// aborts are the functions a second interrupt runs before the process dies.
var aborts = struct {
	mu   sync.Mutex
	next int
	fns  map[int]func()
}{fns: map[int]func(){}}

// onAbort registers fn to run if a second interrupt ends the process; the
// returned function unregisters it. fn must be quick: the user is waiting.
func onAbort(fn func()) (unregister func()) {
	aborts.mu.Lock()
	defer aborts.mu.Unlock()
	id := aborts.next
	aborts.next++
	aborts.fns[id] = fn
	return func() {
		aborts.mu.Lock()
		defer aborts.mu.Unlock()
		delete(aborts.fns, id)
	}
}
