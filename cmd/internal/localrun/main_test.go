package localrun

import (
	"strings"
	"testing"
)

// TestHelpListsEveryCommand: `go run ./cmd/pscmessages help` and `go run ./cmd/pscmessages -h` list
// every subcommand with its one line, and the kept data folder is not called
// "throwaway".
func TestHelpListsEveryCommand(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}} {
		stdout, stderr, code := runMain(t, nil, args...)
		out := stdout + stderr
		if code != 0 {
			t.Fatalf("%v: exit code %d\n%s", args, code, out)
		}
		for _, c := range Commands() {
			if !strings.Contains(out, "  "+c.Name+" ") || !strings.Contains(out, c.Summary) {
				t.Errorf("%v does not list %s:\n%s", args, c.Name, out)
			}
		}
		for _, want := range []string{"deadletters", "go install ./cmd/pscmessages"} {
			if !strings.Contains(out, want) {
				t.Errorf("%v does not mention %q:\n%s", args, want, out)
			}
		}
		if strings.Contains(out, "throwaway") {
			t.Errorf("%v calls the kept data folder throwaway:\n%s", args, out)
		}
	}
	// -h also shows serve's own flags.
	if _, stderr, _ := runMain(t, nil, "-h"); !strings.Contains(stderr, "-fresh") {
		t.Errorf("-h does not show serve's flags:\n%s", stderr)
	}
	// help COMMAND shows that command's flags.
	if stdout, stderr, code := runMain(t, nil, "help", "migrate"); code != 0 || !strings.Contains(stdout+stderr, "-dry-run") {
		t.Errorf("help migrate: exit %d\n%s%s", code, stdout, stderr)
	}
	if _, stderr, code := runMain(t, nil, "nope"); code != 2 || !strings.Contains(stderr, `unknown command "nope"`) || !strings.Contains(stderr, "migrate") {
		t.Errorf("an unknown command: exit %d\n%s", code, stderr)
	}
}

// TestRunnerPointsPubSubToItsCommand: the runner that links no Pub/Sub client
// answers -pubsub by naming the command that has it, before starting
// anything.
func TestRunnerPointsPubSubToItsCommand(t *testing.T) {
	_, stderr, code := runMain(t, nil, "-pubsub")
	if code != 2 || !strings.Contains(stderr, "go run ./cmd/pscpubsub") {
		t.Errorf("-pubsub: exit %d, want 2 and a pointer to go run ./cmd/pscpubsub:\n%s", code, stderr)
	}
}
