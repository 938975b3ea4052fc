// Command pscmessages is the local entry point of the messages function, in the
// functions-framework-go layout: `go run ./cmd/pscmessages` serves the functions as Cloud
// Run would, and subcommands cover the tasks around them (migrate, deadletters).
// `go run ./cmd/pscmessages help` lists them; `go run ./cmd/pscmessages help COMMAND`
// (or `COMMAND -h`) shows one's flags. `go install ./cmd/pscmessages` installs it as a
// binary.
//
// It links only what serving over HTTP needs: Pub/Sub delivery and publishing
// are go run ./cmd/pscpubsub, the pull ingester go run ./cmd/pscpull, the
// benchmarks go run ./cmd/pscbench.
package main

import "example.com/pscmessages/cmd/internal/localrun"

func main() { localrun.Main("pscmessages", localrun.Commands()) }
