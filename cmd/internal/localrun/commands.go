// Package localrun is the local runner of the messages function: serving the
// functions as Cloud Run would, on one machine (serve), and the operator
// commands around them (migrate, deadletters). cmd/pscmessages is this
// package's commands as they are; cmd/pscpubsub serves the same functions
// with a Pub/Sub delivery added (an Extension), so that the binary most
// users run links no Pub/Sub client.
package localrun

import (
	"context"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"
)

// Command is one subcommand; each parses its own flags.
type Command struct {
	Name    string
	Summary string // one line for `help`
	Run     func(ctx context.Context, args []string) error
}

// Commands are the runner's: serve (the default), migrate and deadletters.
func Commands() []Command {
	return []Command{
		Serve(nil),
		{"migrate", "apply the schema migrations and grant the functions' roles, as an administrator", runMigrate},
		{"deadletters", "list, show, replay or delete the Pub/Sub messages IngestPubSub kept in dead_letters", runDeadLetters},
	}
}

// Serve is the serve command, with ext's flags and its start added (nil:
// none).
func Serve(ext Extension) Command {
	summary := "serve Messages and IngestPubSub on HOST:PORT (the default command)"
	if ext != nil {
		summary = ext.Summary()
	}
	return Command{"serve", summary, func(ctx context.Context, args []string) error { return runServe(ctx, args, ext) }}
}

// Extension adds to serve what another command links: its flags, and a
// start called once the functions are served at base, whose stop is called
// first when serve shuts down, while the server and pool are still up.
type Extension interface {
	// Summary is serve's line in `help`.
	Summary() string
	// Usage is serve's first usage line, after the program's name.
	Usage() string
	// AddFlags registers the extension's flags on serve's.
	AddFlags(fs *flag.FlagSet)
	// Start starts the extension once the functions are served at base.
	Start(ctx context.Context, base string) (stop func(), err error)
}

// program is the command's name in usage lines: pscmessages or pscpubsub.
var program = "pscmessages"

func lookup(cmds []Command, name string) (Command, bool) {
	for _, c := range cmds {
		if c.Name == name {
			return c, true
		}
	}
	return Command{}, false
}

// usage lists the subcommands, one line each.
func usage(w io.Writer, cmds []Command) {
	fmt.Fprintf(w, "usage: go run ./cmd/%s [COMMAND] [flags]   (or a binary: go install ./cmd/%s)\n\ncommands:\n", program, program)
	for _, c := range cmds {
		fmt.Fprintf(w, "  %-16s %s\n", c.Name, c.Summary)
	}
	fmt.Fprintf(w, "  help             this list; `help COMMAND` shows a command's flags\n\n"+
		"With no command, serve runs: `go run ./cmd/%s -h` shows its flags after this list.\n", program)
}

// Main runs the command os.Args name (serve when none does) among cmds, as
// the program prog, and exits 1 with the command's error.
func Main(prog string, cmds []Command) {
	program = prog
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	handleInterrupts(cancel)
	name, args := "serve", os.Args[1:]
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		name, args = args[0], args[1:]
	}
	switch {
	case name == "help" && len(args) == 0:
		usage(os.Stdout, cmds)
		return
	case name == "help":
		name, args = args[0], []string{"-h"}
	case name == "serve" && len(os.Args) > 1 && isHelpFlag(os.Args[1]):
		// `go run ./cmd/PROG -h`: the commands first, then serve's own flags.
		usage(os.Stderr, cmds)
		fmt.Fprintln(os.Stderr)
	}
	c, ok := lookup(cmds, name)
	if !ok {
		fmt.Fprintf(os.Stderr, "unknown command %q\n\n", name)
		usage(os.Stderr, cmds)
		os.Exit(2)
	}
	if err := c.Run(ctx, args); err != nil {
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
