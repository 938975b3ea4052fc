package main

// The test tiers hold three things together: .ci/tools (the one list of what
// each tier needs, and what installs it), the commands that run a tier
// (cloudbuild.yaml's test step and .ci/run), and the build tags of the test
// files. A test file that starts PgBouncer or the Pub/Sub emulator must not
// build in a tier whose tools lack them, and a step must run the tests of
// the tier it installed, no more and no fewer.

import (
	"fmt"
	"go/build/constraint"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// cbTestFile is one _test.go file: its build constraint (nil: always built)
// and the tools its code starts.
type cbTestFile struct {
	Path       string
	Constraint constraint.Expr
	Tools      []string
}

// cbToolMarkers name what a test file calls when it starts a tool. Helpers
// built on these (bouncedDB, newEmuEnv, newGcloudFake) live in files that
// carry the marker, so a file using them outside its tier does not compile.
var cbToolMarkers = []struct {
	re    *regexp.Regexp
	tools []string
}{
	{regexp.MustCompile(`\b(StartBouncer|FindPgBouncer|benchInstances)\(`), []string{"pgbouncer"}},
	{regexp.MustCompile(`\bstartEmulator\(`), []string{"gcloud", "pubsub-emulator", "java"}},
	{regexp.MustCompile(`exec\.(LookPath|Command)\("gcloud"`), []string{"gcloud"}},
	{regexp.MustCompile(`\bjaegertest\.Start\(`), []string{"jaeger"}},
}

// cbFileTools returns the tools src starts, sorted.
func cbFileTools(src string) []string {
	var tools []string
	for _, m := range cbToolMarkers {
		if m.re.MatchString(src) {
			tools = append(tools, m.tools...)
		}
	}
	slices.Sort(tools)
	return slices.Compact(tools)
}

// cbBuildConstraint returns the //go:build line of src, nil without one.
func cbBuildConstraint(src string) (constraint.Expr, error) {
	for _, line := range strings.Split(src, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "package ") {
			break
		}
		if constraint.IsGoBuild(line) {
			return constraint.Parse(line)
		}
	}
	return nil, nil
}

// cbReadTiers reads the tiers from .ci/tools, the test files of the module
// and .ci/run into facts.
func cbReadTiers(facts *cbFacts) error {
	tools := func(args ...string) ([]string, error) {
		out, err := exec.Command("bash", append([]string{"../../.ci/tools"}, args...)...).Output()
		if err != nil {
			return nil, fmt.Errorf(".ci/tools %v: %v", args, err)
		}
		return strings.Fields(string(out)), nil
	}
	facts.Tiers = map[string][]string{}
	tiers, err := tools("-tiers")
	if err != nil {
		return err
	}
	for _, tier := range tiers {
		if facts.Tiers[tier], err = tools("-needs", tier); err != nil {
			return err
		}
	}
	run, err := os.ReadFile("../../.ci/run")
	if err != nil {
		return err
	}
	facts.CIRun = string(run)
	err = filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && strings.HasPrefix(d.Name(), ".") && path != "../.." {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		expr, err := cbBuildConstraint(string(b))
		if err != nil {
			return err
		}
		facts.TestFiles = append(facts.TestFiles, cbTestFile{Path: strings.TrimPrefix(path, "../../"), Constraint: expr, Tools: cbFileTools(string(b))})
		return nil
	})
	return err
}

// cbTierTag is the build tag that turns a tier on; the default tier has none.
func cbTierTag(tier string) string {
	if tier == "default" {
		return ""
	}
	return tier
}

// cbBuilds reports whether a file with expr is built with the tag set on.
func cbBuilds(expr constraint.Expr, tag string) bool {
	return expr == nil || expr.Eval(func(t string) bool { return t == tag })
}

// checkTiers holds the test files' tags to the tiers' tools: every file
// builds in the end-to-end tier, and a tier builds only files whose tools it
// has.
func cbCheckTestFiles(facts cbFacts, fail func(string, ...any)) {
	if _, ok := facts.Tiers["e2e"]; !ok {
		fail(".ci/tools has no e2e tier")
	}
	if _, ok := facts.Tiers["default"]; !ok {
		fail(".ci/tools has no default tier")
	}
	for _, f := range facts.TestFiles {
		if !cbBuilds(f.Constraint, "e2e") {
			fail("%s is not built with -tags e2e (%s): no tier runs it", f.Path, f.Constraint)
		}
		for tier, has := range facts.Tiers {
			if !cbBuilds(f.Constraint, cbTierTag(tier)) {
				continue
			}
			for _, tool := range f.Tools {
				if !slices.Contains(has, tool) {
					fail("%s starts %s but builds in the %s tier, whose tools (.ci/tools -needs %s) lack it: give it //go:build e2e", f.Path, tool, tier, tier)
				}
			}
		}
	}
}

// cbTierRun is what one script does with the tiers: the tier it installs
// with .ci/tools and the tags of each go test ./... it runs.
type cbTierRun struct {
	installs []string
	tests    []string // "" for go test ./...
	vets     []string
	other    []string // installs or test runs outside .ci/tools and ./...
}

func cbTierCommands(cmds [][]string) cbTierRun {
	var r cbTierRun
	for _, words := range cmds {
		for len(words) > 1 && cbEnvAssign.MatchString(words[0]) {
			words = words[1:]
		}
		line := strings.Join(words, " ")
		switch {
		case len(words) == 3 && words[0] == "bash" && words[1] == ".ci/tools":
			r.installs = append(r.installs, words[2])
		case (words[0] == "apt-get" || words[0] == "apt") && slices.Contains(words, "install"):
			r.other = append(r.other, line)
		case len(words) >= 3 && words[0] == "go" && (words[1] == "test" || words[1] == "vet"):
			tag, rest := "", words[2:]
			if len(rest) >= 2 && rest[0] == "-tags" {
				tag, rest = rest[1], rest[2:]
			}
			if words[1] == "test" && slices.ContainsFunc(rest, func(w string) bool { return strings.HasPrefix(w, "-fuzz") || strings.HasPrefix(w, "-run") }) {
				continue // fuzzing and targeted runs are extra, not a tier
			}
			if !slices.Equal(rest, []string{"./..."}) {
				r.other = append(r.other, line)
				continue
			}
			if words[1] == "test" {
				r.tests = append(r.tests, tag)
			} else {
				r.vets = append(r.vets, tag)
			}
		}
	}
	return r
}

// cbCheckTierRun: the script installs one tier with .ci/tools, nothing
// besides, and runs exactly that tier's tests (wantTests: the tags of the
// go test ./... runs, in order).
func cbCheckTierRun(who string, r cbTierRun, facts cbFacts, wantTier string, wantTests []string, fail func(string, ...any)) {
	for _, o := range r.other {
		fail("%s runs %q: install with .ci/tools and test ./... by tier, so that .ci/tools stays the one list of what the tests need", who, o)
	}
	if len(r.installs) != 1 {
		fail("%s runs .ci/tools %d times (%v); want once, before the tests", who, len(r.installs), r.installs)
		return
	}
	tier := r.installs[0]
	if _, ok := facts.Tiers[tier]; !ok {
		fail("%s installs tier %q, which .ci/tools does not know", who, tier)
		return
	}
	if wantTier != "" && tier != wantTier {
		fail("%s installs the %s tier; want %s", who, tier, wantTier)
	}
	for _, tag := range r.tests {
		run := "default"
		if tag != "" {
			run = tag
		}
		need, ok := facts.Tiers[run]
		if !ok {
			fail("%s runs go test -tags %s ./..., which no tier of .ci/tools names", who, tag)
			continue
		}
		for _, tool := range need {
			if !slices.Contains(facts.Tiers[tier], tool) {
				fail("%s runs the %s tier's tests but installs only the %s tier, without %s", who, run, tier, tool)
			}
		}
	}
	if !slices.Contains(r.tests, cbTierTag(tier)) {
		fail("%s installs the %s tier but does not run go test %s./...", who, tier, map[bool]string{true: "", false: "-tags " + tier + " "}[tier == "default"])
	}
	if wantTests != nil && !slices.Equal(r.tests, wantTests) {
		fail("%s runs go test ./... with tags %q; want %q", who, r.tests, wantTests)
	}
	// otlp is the deployed functions' tag set (the OpenTelemetry SDK linked
	// in): vetted on its own so that it keeps compiling should otlp.go's
	// build line ever part from the e2e tier's.
	if !slices.Contains(r.vets, "") || !slices.Contains(r.vets, "e2e") || !slices.Contains(r.vets, "otlp") {
		fail("%s must run go vet ./..., go vet -tags e2e ./... and go vet -tags otlp ./... (vets %q)", who, r.vets)
	}
}

// cbCheckCIRun: CI installs the end-to-end tier and runs the README's two
// test commands.
func cbCheckCIRun(facts cbFacts, fail func(string, ...any)) {
	cmds, err := cbSplit(facts.CIRun)
	if err != nil {
		fail(".ci/run: %v", err)
		return
	}
	var words [][]string
	for _, c := range cmds {
		words = append(words, c.words)
	}
	cbCheckTierRun(".ci/run", cbTierCommands(words), facts, "e2e", []string{"", "e2e"}, fail)
}

// TestTierFactsAreRead: the facts the tier checks of TestCloudBuildMatchesCode
// use are the repository's, not empty sets that match anything.
func TestTierFactsAreRead(t *testing.T) {
	facts := cbReadFacts(t)
	found := map[string]bool{}
	for _, f := range facts.TestFiles {
		for _, tool := range f.Tools {
			found[tool] = true
		}
	}
	for _, tool := range []string{"pgbouncer", "gcloud", "pubsub-emulator", "java"} {
		if !found[tool] {
			t.Errorf("no test file seems to start %s; the markers are stale", tool)
		}
	}
	if !slices.Equal(facts.Tiers["default"], []string{"go", "postgresql"}) {
		t.Errorf("the default tier needs %v; the README promises go test ./... with Go and PostgreSQL only", facts.Tiers["default"])
	}
	if !strings.Contains(facts.CIRun, ".ci/tools") {
		t.Errorf(".ci/run was not read")
	}
}
