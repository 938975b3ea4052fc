// Command cmd is the local entry point of the messages function, in the
// functions-framework-go layout: `go run ./cmd` serves the functions as Cloud
// Run would, and subcommands cover the tasks around them.
//
//	go run ./cmd                 serve Messages (and IngestPubSub) locally
//	go run ./cmd migrate ...     apply migrations and grants as an admin
//	go run ./cmd publish ...     publish messages to a Pub/Sub topic
//	go run ./cmd bench ...       measure the function beside pgbench
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// commands maps a subcommand to its implementation; each parses its own flags.
var commands = map[string]func(ctx context.Context, args []string) error{
	"serve":   runServe,
	"migrate": runMigrate,
	"publish": runPublish,
	"bench":   runBench,
	// bench-rss measures peak memory under large deliveries and pages.
	"bench-rss": runBenchRSS,
	// bench-instances runs many function processes against one small
	// database, direct and through PgBouncer.
	"bench-instances": runBenchInstances,
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	name, args := "serve", os.Args[1:]
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		name, args = args[0], args[1:]
	}
	run, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "unknown command %q; commands: serve (default), migrate, publish, bench\n", name)
		os.Exit(2)
	}
	if err := run(ctx, args); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}
