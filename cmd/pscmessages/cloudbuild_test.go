package main

// These tests hold cloudbuild.yaml to the code it deploys. Nothing here needs
// Google Cloud: the YAML is decoded into typed structs, Cloud Build's
// substitutions are applied as Cloud Build applies them, the bash steps are
// split into commands, and the gcloud commands are checked against facts read
// from the Go sources with go/parser. The checker returns every problem it
// finds, so the mutation tests can show that each rule catches its drift.
//
// These rules read the YAML's text, which is fast; what the flags mean is
// judged by gcloud itself in gcloud_test.go, which runs every step with the
// real CLI against a recording fake of the Google APIs and checks the
// requests. Facts about gcloud's flags (accepted values and ranges) are left
// to gcloud there rather than copied here.

import (
	"bytes"
	"errors"
	"fmt"
	"go/ast"
	"go/build/constraint"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"gopkg.in/yaml.v3"

	function "example.com/pscmessages"
	"example.com/pscmessages/store"
)

// cbConfig is the subset of Cloud Build's build config schema this project
// uses; decoding rejects any other key, so a typo cannot pass unnoticed.
type cbConfig struct {
	Steps         []cbStep          `yaml:"steps"`
	Substitutions map[string]string `yaml:"substitutions"`
	Options       struct {
		Logging            string `yaml:"logging"`
		SubstitutionOption string `yaml:"substitution_option"`
	} `yaml:"options"`
	Timeout string `yaml:"timeout"`
}

type cbStep struct {
	ID         string   `yaml:"id"`
	Name       string   `yaml:"name"`
	Entrypoint string   `yaml:"entrypoint"`
	Args       []string `yaml:"args"`
	Env        []string `yaml:"env"`
	Dir        string   `yaml:"dir"`
	WaitFor    []string `yaml:"waitFor"`
}

// cbFacts is what the code says the deployment must match.
type cbFacts struct {
	EntryPoints map[string]string   // registered name → "HTTP" or "CloudEvent"
	EnvVars     map[string]bool     // names the code reads
	EventType   string              // the CloudEvent type IngestPubSub accepts
	GoVersion   string              // go.mod's go directive, major.minor
	Tiers       map[string][]string // .ci/tools: each test tier's tools
	CIRun       string              // the text of .ci/run
	TestFiles   []cbTestFile        // every _test.go of the module
}

// cbRequiredIAMVars are what store.ConfigFromEnv needs for an IAM login
// through DB_HOST; both deploys must set them.
var cbRequiredIAMVars = []string{"DB_HOST", "DB_NAME"}

// cbForbiddenVars would switch the functions away from IAM logins, or put a
// secret into a plain environment variable.
var cbForbiddenVars = []string{"DB_PASSWORD", "DATABASE_URL", "DB_IAM_AUTH"}

// cbBuiltins are Cloud Build's built-in substitutions, with stand-in values.
var cbBuiltins = map[string]string{
	"PROJECT_ID": "my-project", "PROJECT_NUMBER": "123456789012", "BUILD_ID": "b-1", "LOCATION": "us-central1",
	"TRIGGER_NAME": "t", "COMMIT_SHA": "0123456789abcdef", "REVISION_ID": "0123456789abcdef", "SHORT_SHA": "0123456",
	"REPO_NAME": "r", "REPO_FULL_NAME": "o/r", "BRANCH_NAME": "main", "TAG_NAME": "", "REF_NAME": "main",
	"TRIGGER_BUILD_CONFIG_PATH": "cloudbuild.yaml", "SERVICE_ACCOUNT_EMAIL": "deployer@my-project.iam.gserviceaccount.com",
	"SERVICE_ACCOUNT": "projects/my-project/serviceAccounts/deployer@my-project.iam.gserviceaccount.com",
}

// cbSampleSubstitutions stand in for the values an operator must supply.
var cbSampleSubstitutions = map[string]string{"_DB_HOST": "10.20.0.5"}

// ---- facts from the code ----

// cbReadFacts returns the facts of the code, read once per test binary: each
// read lists the module's packages and runs .ci/tools, and many tests check
// many variants. Each caller gets its own copy to change.
func cbReadFacts(t *testing.T) cbFacts {
	t.Helper()
	cbFactsOnce.Do(func() { cbFactsRead, cbFactsErr = cbReadFactsNow() })
	if cbFactsErr != nil {
		t.Fatal(cbFactsErr)
	}
	return cbFactsRead.clone()
}

var (
	cbFactsOnce sync.Once
	cbFactsRead cbFacts
	cbFactsErr  error
)

// clone copies every map and slice, so that nothing a test changes reaches
// the facts other tests read. A Constraint is shared: it is a parsed
// expression that tests replace, never edit.
func (f cbFacts) clone() cbFacts {
	f.EntryPoints = cbClone(f.EntryPoints)
	f.EnvVars = cbClone(f.EnvVars)
	tiers := f.Tiers
	f.Tiers = make(map[string][]string, len(tiers))
	for k, v := range tiers {
		f.Tiers[k] = slices.Clip(slices.Clone(v))
	}
	f.TestFiles = slices.Clone(f.TestFiles)
	for i := range f.TestFiles {
		f.TestFiles[i].Tools = slices.Clip(slices.Clone(f.TestFiles[i].Tools))
	}
	return f
}

func cbReadFactsNow() (cbFacts, error) {
	sources := map[string][]byte{}
	// Every package of this module the deployed function links (the root
	// package and what it imports: store/..., cmd/telemetry, cmd/logging),
	// wherever a variable is read.
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if .Module}}{{if .Module.Main}}{{.Dir}}{{end}}{{end}}", "../..").Output()
	if err != nil {
		return cbFacts{}, fmt.Errorf("go list -deps of the function: %v", err)
	}
	var files []string
	for _, dir := range strings.Fields(string(out)) {
		m, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil {
			return cbFacts{}, err
		}
		files = append(files, m...)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return cbFacts{}, err
		}
		sources[f] = b
	}
	goMod, err := os.ReadFile("../../go.mod")
	if err != nil {
		return cbFacts{}, err
	}
	facts, err := cbCodeFacts(sources, goMod)
	if err != nil {
		return cbFacts{}, err
	}
	if err := cbReadTiers(&facts); err != nil {
		return cbFacts{}, err
	}
	return facts, nil
}

var cbEnvName = regexp.MustCompile(`^[A-Z][A-Z0-9_]*$`)

// cbCodeFacts collects the registered entry points and the environment
// variables read through calls like getenv("DB_HOST") or
// intVar(getenv, "DB_PORT", ...).
func cbCodeFacts(sources map[string][]byte, goMod []byte) (cbFacts, error) {
	facts := cbFacts{EntryPoints: map[string]string{}, EnvVars: map[string]bool{}, EventType: function.MessagePublishedType}
	fset := token.NewFileSet()
	for name, src := range sources {
		f, err := parser.ParseFile(fset, name, src, 0)
		if err != nil {
			return facts, err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			var pkg, fn string
			switch f := call.Fun.(type) {
			case *ast.Ident:
				fn = f.Name
			case *ast.SelectorExpr:
				fn = f.Sel.Name
				if x, ok := f.X.(*ast.Ident); ok {
					pkg = x.Name
				}
			default:
				return true
			}
			literal := func(i int) (string, bool) {
				if i >= len(call.Args) {
					return "", false
				}
				lit, ok := call.Args[i].(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					return "", false
				}
				s, err := strconv.Unquote(lit.Value)
				return s, err == nil
			}
			switch {
			case pkg == "functions" && (fn == "HTTP" || fn == "CloudEvent"):
				if s, ok := literal(0); ok {
					kind := fn
					// IngestPubSub takes CloudEvents through an HTTP
					// registration (see the root package's init): serveEvent
					// decodes each delivery itself.
					if len(call.Args) == 2 {
						if h, ok := call.Args[1].(*ast.Ident); ok && h.Name == "serveEvent" {
							kind = "CloudEvent"
						}
					}
					facts.EntryPoints[s] = kind
				}
			case slices.Contains([]string{"getenv", "Getenv", "LookupEnv", "intVar", "durationVar", "boolVar"}, fn):
				for i := range call.Args {
					if s, ok := literal(i); ok && cbEnvName.MatchString(s) {
						facts.EnvVars[s] = true
					}
				}
			}
			return true
		})
	}
	for _, line := range strings.Split(string(goMod), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "go "); ok {
			parts := strings.Split(strings.TrimSpace(v), ".")
			if len(parts) >= 2 {
				facts.GoVersion = parts[0] + "." + parts[1]
			}
		}
	}
	if facts.GoVersion == "" {
		return facts, errors.New("go.mod has no go directive")
	}
	return facts, nil
}

// ---- Cloud Build substitutions ----

// cbExpand applies substitutions as Cloud Build does: $$ is a literal $,
// $_NAME and ${_NAME} are user substitutions, $NAME a built-in one. Any other
// $ is an error, as it is for Cloud Build, which is why shell variables are
// written $$name.
func cbExpand(s string, subs map[string]string, used map[string]bool) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 < len(s) && s[i+1] == '$' {
			b.WriteByte('$')
			i++
			continue
		}
		var name string
		if i+1 < len(s) && s[i+1] == '{' {
			end := strings.IndexByte(s[i:], '}')
			if end < 0 {
				return "", fmt.Errorf("unterminated ${ in %q", s)
			}
			name = s[i+2 : i+end]
			i += end
		} else {
			j := i + 1
			for j < len(s) && (s[j] == '_' || s[j] >= 'A' && s[j] <= 'Z' || s[j] >= '0' && s[j] <= '9') {
				j++
			}
			name = s[i+1 : j]
			i = j - 1
		}
		if name == "" {
			return "", fmt.Errorf("unescaped $ in %q: write $$ for the shell", cbSnippet(s, i))
		}
		if strings.HasPrefix(name, "_") {
			v, ok := subs[name]
			if !ok {
				return "", fmt.Errorf("substitution %s is used but has no default in substitutions", name)
			}
			used[name] = true
			b.WriteString(v)
			continue
		}
		v, ok := cbBuiltins[name]
		if !ok {
			return "", fmt.Errorf("$%s is not a Cloud Build substitution: write $$%s for a shell variable", name, name)
		}
		b.WriteString(v)
	}
	return b.String(), nil
}

func cbSnippet(s string, i int) string {
	lo, hi := max(i-20, 0), min(i+20, len(s))
	return s[lo:hi]
}

// ---- bash ----

// cbCommand is one simple command of a bash script.
type cbCommand struct {
	words       []string
	conditional bool // inside if/for/while: may not run
}

// cbShell splits a bash script into simple commands. It knows the little
// bash the build uses: quotes, backslash continuations, comments, ; && || |,
// redirections, $(...) (whose commands it also returns) and $((...)), and the
// keywords of if and loops. Anything else is kept as words.
type cbShell struct {
	s     string
	i     int
	depth int
	cmds  []cbCommand
}

func cbSplit(script string) ([]cbCommand, error) {
	sh := &cbShell{s: script}
	if err := sh.list(false); err != nil {
		return nil, err
	}
	return sh.cmds, nil
}

var cbKeywords = map[string]int{"if": +1, "fi": -1, "do": +1, "done": -1, "then": 0, "else": 0, "elif": 0, "while": 0, "until": 0, "{": 0, "}": 0, "!": 0}

func (sh *cbShell) list(nested bool) error {
	var words []string
	var word strings.Builder
	inWord := false
	endWord := func() {
		if inWord {
			words = append(words, word.String())
			word.Reset()
			inWord = false
		}
	}
	endCmd := func() {
		endWord()
		for len(words) > 0 {
			d, ok := cbKeywords[words[0]]
			if !ok {
				break
			}
			sh.depth += d
			words = words[1:]
		}
		if len(words) > 0 {
			sh.cmds = append(sh.cmds, cbCommand{words: words, conditional: sh.depth > 0})
		}
		words = nil
	}
	for sh.i < len(sh.s) {
		c := sh.s[sh.i]
		switch {
		case c == '\\' && sh.i+1 < len(sh.s):
			if sh.s[sh.i+1] != '\n' {
				word.WriteByte(sh.s[sh.i+1])
				inWord = true
			}
			sh.i += 2
		case c == '\'':
			end := strings.IndexByte(sh.s[sh.i+1:], '\'')
			if end < 0 {
				return errors.New("unterminated single quote")
			}
			word.WriteString(sh.s[sh.i+1 : sh.i+1+end])
			inWord = true
			sh.i += end + 2
		case c == '"':
			sh.i++
			if err := sh.doubleQuoted(&word); err != nil {
				return err
			}
			inWord = true
		case c == '$' && strings.HasPrefix(sh.s[sh.i:], "$(("):
			end := strings.Index(sh.s[sh.i:], "))")
			if end < 0 {
				return errors.New("unterminated $((")
			}
			word.WriteString(sh.s[sh.i : sh.i+end+2])
			inWord = true
			sh.i += end + 2
		case c == '$' && strings.HasPrefix(sh.s[sh.i:], "$("):
			sh.i += 2
			if err := sh.list(true); err != nil {
				return err
			}
			word.WriteString("$(...)")
			inWord = true
		case c == '#' && !inWord:
			for sh.i < len(sh.s) && sh.s[sh.i] != '\n' {
				sh.i++
			}
		case c == ' ' || c == '\t':
			endWord()
			sh.i++
		case c == '\n' || c == ';' || c == '&' || c == '|' || c == '(':
			endCmd()
			sh.i++
		case c == ')':
			endCmd()
			sh.i++
			if nested {
				return nil
			}
		case c == '>' || c == '<':
			// A redirection: drop it, its file descriptor and its target.
			if inWord && strings.Trim(word.String(), "0123456789") == "" {
				word.Reset()
				inWord = false
			}
			endWord()
			sh.i++
			for sh.i < len(sh.s) && strings.IndexByte(">&", sh.s[sh.i]) >= 0 {
				sh.i++
			}
			for sh.i < len(sh.s) && sh.s[sh.i] == ' ' {
				sh.i++
			}
			for sh.i < len(sh.s) && strings.IndexByte(" \t\n;|&)", sh.s[sh.i]) < 0 {
				sh.i++
			}
		default:
			word.WriteByte(c)
			inWord = true
			sh.i++
		}
	}
	if nested {
		return errors.New("unterminated $(")
	}
	endCmd()
	return nil
}

func (sh *cbShell) doubleQuoted(word *strings.Builder) error {
	for sh.i < len(sh.s) {
		c := sh.s[sh.i]
		switch {
		case c == '"':
			sh.i++
			return nil
		case c == '\\' && sh.i+1 < len(sh.s) && strings.IndexByte("\"\\$`", sh.s[sh.i+1]) >= 0:
			word.WriteByte(sh.s[sh.i+1])
			sh.i += 2
		case c == '$' && strings.HasPrefix(sh.s[sh.i:], "$(") && !strings.HasPrefix(sh.s[sh.i:], "$(("):
			sh.i += 2
			if err := sh.list(true); err != nil {
				return err
			}
			word.WriteString("$(...)")
		default:
			word.WriteByte(c)
			sh.i++
		}
	}
	return errors.New("unterminated double quote")
}

// ---- gcloud commands ----

type cbGcloud struct {
	step  string
	words []string            // positional words: run deploy SERVICE
	flags map[string][]string // --name → values; "" for a bare flag
}

func (g cbGcloud) is(path ...string) bool {
	return len(g.words) >= len(path) && slices.Equal(g.words[:len(path)], path)
}

func (g cbGcloud) arg(i int) string {
	if i < len(g.words) {
		return g.words[i]
	}
	return ""
}

// flag returns the value of a --name=value flag; gcloud also accepts
// "--name value", which this file does not use so that every value is
// unambiguous.
func (g cbGcloud) flag(name string) string {
	if v := g.flags[name]; len(v) > 0 {
		return v[len(v)-1]
	}
	return ""
}

func (g cbGcloud) has(name string) bool { _, ok := g.flags[name]; return ok }

func (g cbGcloud) String() string { return "gcloud " + strings.Join(g.words, " ") }

func cbParseGcloud(step string, words []string) cbGcloud {
	g := cbGcloud{step: step, flags: map[string][]string{}}
	for _, w := range words {
		if strings.HasPrefix(w, "--") {
			k, v, _ := strings.Cut(w, "=")
			g.flags[k] = append(g.flags[k], v)
		} else {
			g.words = append(g.words, w)
		}
	}
	return g
}

// cbEnvVars parses gcloud's KEY=VALUE,... list, including the ^DELIM^ form.
func cbEnvVars(list string) map[string]string {
	sep := ","
	if strings.HasPrefix(list, "^") {
		if end := strings.IndexByte(list[1:], '^'); end >= 0 {
			sep, list = list[1:1+end], list[end+2:]
		}
	}
	env := map[string]string{}
	for _, kv := range strings.Split(list, sep) {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	return env
}

// ---- the checker ----

type cbChecked struct {
	cfg      cbConfig
	subs     map[string]string
	gcloud   []cbGcloud
	commands map[string][][]string      // step id → every command, for non-gcloud checks
	scripts  map[string]string          // step id → expanded bash script
	deps     map[string]map[string]bool // step id → every step it waits for
}

var (
	cbUserSubst = regexp.MustCompile(`^_[A-Z0-9_]+$`)           // a user substitution's name
	cbShellName = regexp.MustCompile(`^[a-z_]+$`)               // the script's own variables
	cbShellVar  = regexp.MustCompile(`\$\{[a-z_]+\}|\$[a-z_]+`) // a reference to one
	cbEnvAssign = regexp.MustCompile(`^[A-Z_]+=`)               // VAR=value before a command
)

// cbAllowGuard is the one form in which --allow-unauthenticated may appear:
// chosen by the _ALLOW_UNAUTHENTICATED substitution, whose default is false.
var cbAllowGuard = regexp.MustCompile(`^\s*if \[ "\$\{_ALLOW_UNAUTHENTICATED\}" = "true" \]; then [a-z_]+=--allow-unauthenticated; fi\s*$`)

func cbCheck(yamlText []byte, facts cbFacts, overrides map[string]string) (*cbChecked, []error) {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	var cfg cbConfig
	dec := yaml.NewDecoder(bytes.NewReader(yamlText))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		return nil, []error{fmt.Errorf("decoding cloudbuild.yaml: %w", err)}
	}
	subs := map[string]string{}
	for k, v := range cfg.Substitutions {
		if !cbUserSubst.MatchString(k) {
			fail("substitution %q: user substitutions are _UPPER_CASE", k)
		}
		subs[k] = v
	}
	for k, v := range overrides {
		if _, ok := subs[k]; ok {
			subs[k] = v
		}
	}
	if cfg.Options.SubstitutionOption == "ALLOW_LOOSE" {
		fail("options.substitution_option ALLOW_LOOSE hides misspelt substitutions; every substitution here is used")
	}
	if cfg.Substitutions["_ALLOW_UNAUTHENTICATED"] != "false" {
		fail(`_ALLOW_UNAUTHENTICATED must default to "false", not %q`, cfg.Substitutions["_ALLOW_UNAUTHENTICATED"])
	}

	c := &cbChecked{cfg: cfg, subs: subs, commands: map[string][][]string{}, scripts: map[string]string{}}
	used := map[string]bool{}
	ids := map[string]int{}
	for i, st := range cfg.Steps {
		if st.ID == "" {
			fail("step %d has no id", i)
		}
		if _, dup := ids[st.ID]; dup {
			fail("step id %q is used twice", st.ID)
		}
		ids[st.ID] = i
		var args []string
		for _, a := range st.Args {
			for _, line := range strings.Split(a, "\n") {
				if strings.Contains(line, "--allow-unauthenticated") && !strings.Contains(line, "--no-allow-unauthenticated") && !cbAllowGuard.MatchString(line) {
					fail("step %s: --allow-unauthenticated outside the _ALLOW_UNAUTHENTICATED guard: %q", st.ID, strings.TrimSpace(line))
				}
			}
			x, err := cbExpand(a, subs, used)
			if err != nil {
				fail("step %s: %v", st.ID, err)
			}
			args = append(args, x)
		}
		for _, s := range append([]string{st.Name, st.Entrypoint, st.Dir}, st.Env...) {
			if _, err := cbExpand(s, subs, used); err != nil {
				fail("step %s: %v", st.ID, err)
			}
		}
		var cmds []cbCommand
		switch {
		case st.Entrypoint == "gcloud":
			cmds = []cbCommand{{words: append([]string{"gcloud"}, args...)}}
		case st.Entrypoint == "bash" && len(args) == 2 && args[0] == "-c":
			c.scripts[st.ID] = args[1]
			var err error
			if cmds, err = cbSplit(args[1]); err != nil {
				fail("step %s: %v", st.ID, err)
			}
		default:
			fail("step %s: use entrypoint gcloud with args, or bash with -c SCRIPT", st.ID)
		}
		// Resolve $name from the script's unconditional assignments, as the
		// default path of the script would.
		vars := map[string]string{}
		for _, cmd := range cmds {
			words := slices.Clone(cmd.words)
			for i, w := range words {
				words[i] = cbShellVar.ReplaceAllStringFunc(w, func(ref string) string {
					if v, ok := vars[strings.Trim(ref, "${}")]; ok {
						return v
					}
					return ref
				})
			}
			if len(words) == 1 && !cmd.conditional {
				if k, v, ok := strings.Cut(words[0], "="); ok && cbShellName.MatchString(k) {
					vars[k] = v
				}
			}
			c.commands[st.ID] = append(c.commands[st.ID], words)
			if words[0] == "gcloud" {
				c.gcloud = append(c.gcloud, cbParseGcloud(st.ID, words[1:]))
			}
		}
	}
	for k := range cfg.Substitutions {
		if !used[k] {
			fail("substitution %s is defined but never used", k)
		}
	}
	for _, st := range cfg.Steps {
		if script, ok := c.scripts[st.ID]; ok {
			if msg := cbBashSyntax(script); msg != "" {
				fail("step %s: bash rejects the script: %s", st.ID, msg)
			}
		}
	}
	deps := cbDependencies(cfg.Steps, ids)
	c.deps = deps
	c.checkTests(facts, deps, fail)
	c.checkDeploys(facts, fail)
	c.checkTrigger(facts, deps, fail)
	c.checkSecurity(facts, fail)
	return c, errs
}

// cbBashSyntax is what bash -n says against script ("" when it parses),
// asked once per distinct script: the drift cases check the same steps again
// and again, and each start of bash costs more than the rest of a check.
func cbBashSyntax(script string) string {
	cbSyntax.Lock()
	msg, ok := cbSyntax.seen[script]
	cbSyntax.Unlock()
	if ok {
		return msg
	}
	out, err := exec.Command("bash", "-n", "-c", script).CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		// bash did not run: say so, and ask again next time.
		return "bash -n did not run: " + err.Error()
	}
	if err != nil {
		msg = string(bytes.TrimSpace(out))
		if msg == "" {
			msg = err.Error()
		}
	}
	cbSyntax.Lock()
	cbSyntax.seen[script] = msg
	cbSyntax.Unlock()
	return msg
}

var cbSyntax = struct {
	sync.Mutex
	seen map[string]string
}{seen: map[string]string{}}

// cbDependencies returns, for each step, every step it waits for directly or
// not: no waitFor means all the steps before it, "-" means none.
func cbDependencies(steps []cbStep, ids map[string]int) map[string]map[string]bool {
	deps := map[string]map[string]bool{}
	for i, st := range steps {
		d := map[string]bool{}
		var direct []string
		switch {
		case len(st.WaitFor) == 0:
			for _, prev := range steps[:i] {
				direct = append(direct, prev.ID)
			}
		case !slices.Equal(st.WaitFor, []string{"-"}):
			direct = st.WaitFor
		}
		for _, id := range direct {
			d[id] = true
			if j, ok := ids[id]; ok && j < i {
				for k := range deps[id] {
					d[k] = true
				}
			}
		}
		deps[st.ID] = d
	}
	return deps
}

func (c *cbChecked) find(path ...string) []cbGcloud {
	var out []cbGcloud
	for _, g := range c.gcloud {
		if g.is(path...) {
			out = append(out, g)
		}
	}
	return out
}

func (c *cbChecked) checkTests(facts cbFacts, deps map[string]map[string]bool, fail func(string, ...any)) {
	var testStep string
	for _, st := range c.cfg.Steps {
		if !strings.HasPrefix(st.Name, "golang:") {
			continue
		}
		testStep = st.ID
		if tag := strings.TrimPrefix(st.Name, "golang:"); !strings.HasPrefix(tag, facts.GoVersion+"-") && tag != facts.GoVersion {
			fail("step %s runs %s; go.mod says go %s", st.ID, st.Name, facts.GoVersion)
		}
		cbCheckTierRun("step "+st.ID, cbTierCommands(c.commands[st.ID]), facts, "", nil, fail)
	}
	if testStep == "" {
		fail("no golang step runs the tests")
		return
	}
	for _, g := range c.find("run", "deploy") {
		if !deps[g.step][testStep] {
			fail("step %s deploys without waiting for the tests (%s)", g.step, testStep)
		}
	}
	cbCheckTestFiles(facts, fail)
	cbCheckCIRun(facts, fail)
}

func (c *cbChecked) checkDeploys(facts cbFacts, fail func(string, ...any)) {
	deployed := map[string]cbGcloud{}
	accounts := map[string]string{}
	connections := 0
	for _, g := range c.find("run", "deploy") {
		fn := g.flag("--function")
		if c.isPullDeploy(g) {
			fn = "pull ingester"
		}
		kind, ok := facts.EntryPoints[fn]
		if fn == "pull ingester" {
			kind, ok = "pull", true
			c.checkPullDeploy(g, fail)
		}
		if !ok {
			fail("%s: --function=%q is not an entry point the root package registers (%v)", g.step, fn, cbKeys(facts.EntryPoints))
		}
		if _, dup := deployed[fn]; dup {
			fail("%s: %s is deployed twice", g.step, fn)
		}
		deployed[fn] = g
		if want := "go" + strings.ReplaceAll(facts.GoVersion, ".", ""); g.flag("--base-image") != want {
			fail("%s: --base-image=%q; go.mod's go %s needs %s", g.step, g.flag("--base-image"), facts.GoVersion, want)
		}
		for _, f := range []string{"--source", "--region", "--network", "--subnet", "--service-account", "--max-instances", "--concurrency", "--memory"} {
			if g.flag(f) == "" && !(kind == "pull" && f == "--concurrency") {
				fail("%s: %s needs %s=VALUE", g.step, g, f)
			}
		}
		if v := g.flag("--vpc-egress"); v != "private-ranges-only" {
			fail("%s: --vpc-egress=%q; Direct VPC egress to the PSC endpoint needs private-ranges-only", g.step, v)
		}
		if g.has("--allow-unauthenticated") {
			fail("%s: %s is public", g.step, fn)
		}
		if !g.has("--no-allow-unauthenticated") {
			fail("%s: %s must be deployed with --no-allow-unauthenticated unless _ALLOW_UNAUTHENTICATED says otherwise", g.step, fn)
		}
		if kind != "pull" && g.flag("--set-build-env-vars") != cbFunctionBuildEnv {
			fail("%s: %s must be built with the OpenTelemetry SDK (--set-build-env-vars=%s): without it the deployed function answers every request 500 when OTEL_EXPORTER_OTLP_ENDPOINT is set", g.step, fn, cbFunctionBuildEnv)
		}
		if kind == "CloudEvent" && g.flag("--ingress") == "" {
			fail("%s: %s should limit --ingress; only Eventarc calls it", g.step, fn)
		}
		sa := g.flag("--service-account")
		if other, ok := accounts[sa]; ok {
			fail("%s: %s shares its service account with %s", g.step, fn, other)
		}
		accounts[sa] = fn

		env := map[string]string{}
		for _, f := range []string{"--set-env-vars", "--update-env-vars"} {
			for _, list := range g.flags[f] {
				for k, v := range cbEnvVars(list) {
					env[k] = v
				}
			}
		}
		for k := range env {
			if !facts.EnvVars[k] {
				fail("%s: %s sets %s, which the code does not read", g.step, fn, k)
			}
		}
		for _, k := range cbRequiredIAMVars {
			if env[k] == "" {
				fail("%s: %s does not set %s, which an IAM login needs", g.step, fn, k)
			}
		}
		for _, k := range cbForbiddenVars {
			if _, ok := env[k]; ok {
				fail("%s: %s sets %s; the functions log in with IAM tokens", g.step, fn, k)
			}
		}
		cfg, err := store.ConfigFromEnv(cbGetenv(env))
		switch {
		case err != nil:
			fail("%s: %s's environment is rejected by the code: %v", g.step, fn, err)
		case !cfg.IAMAuth:
			fail("%s: %s would not log in with IAM", g.step, fn)
		case cfg.Migrate:
			fail("%s: %s would migrate; set DB_MIGRATE=false and let the administrator migrate", g.step, fn)
		case cfg.Pooler != cbPooler(c.subs["_DB_POOLER"]):
			fail("%s: %s runs with DB_POOLER %q, not _DB_POOLER=%q", g.step, fn, cfg.Pooler, c.subs["_DB_POOLER"])
		}
		if kind != "pull" {
			cbCheckMemory(g, fn, fail)
		}
		maxInstances, err1 := strconv.Atoi(g.flag("--max-instances"))
		if err1 != nil || maxInstances < 1 || cfg.MaxConns < 1 {
			fail("%s: %s needs numeric --max-instances and DB_MAX_CONNS", g.step, fn)
		}
		connections += maxInstances * int(cfg.MaxConns)
	}
	if _, ok := deployed["pull ingester"]; !ok {
		fail("the pull ingester is never deployed")
	}
	for fn := range facts.EntryPoints {
		if _, ok := deployed[fn]; !ok {
			fail("entry point %s is never deployed", fn)
		}
	}

	// Both revisions of both services may hold connections during a rollout.
	maxConn, err1 := strconv.Atoi(c.subs["_DB_MAX_CONNECTIONS"])
	reserved, err2 := strconv.Atoi(c.subs["_DB_RESERVED_CONNECTIONS"])
	server, err3 := strconv.Atoi(c.subs["_DB_POOLER_SERVER_CONNS"])
	switch {
	case err1 != nil || err2 != nil:
		fail("_DB_MAX_CONNECTIONS and _DB_RESERVED_CONNECTIONS must be numbers")
	case cbPooler(c.subs["_DB_POOLER"]) == store.PoolerTransaction:
		// Through a transaction pooler the instance sees only its server
		// pool, whatever the instances and rollouts.
		if err3 != nil || server > maxConn-reserved {
			fail("connection budget: the pooler's %q server connections exceed max_connections %d - %d reserved", c.subs["_DB_POOLER_SERVER_CONNS"], maxConn, reserved)
		}
	case 2*connections > maxConn-reserved:
		fail("connection budget: 2 × %d connections exceed max_connections %d - %d reserved", connections, maxConn, reserved)
	}
	c.checkPreflight(fail)
}

// isPullDeploy reports the deploy of the pull ingester, by the service it
// names (_PULL_SERVICE), so that a function's deploy that lost --function
// is reported as that, not as a pull ingester built wrong.
func (c *cbChecked) isPullDeploy(g cbGcloud) bool {
	return g.arg(2) == c.subs["_PULL_SERVICE"]
}

// cbFunctionBuildEnv is the build environment of both functions: the otlp
// tag links the OpenTelemetry SDK and its exporters (the root's otlp.go),
// which a build without it leaves out.
const cbFunctionBuildEnv = "GOFLAGS=-tags=otlp"

// cbPullBuildable is the main package the pull ingester is built from: the
// ingester alone, whose binary links neither pstest nor package testing
// (cmd/pscpull's links_test.go), unlike cmd/pscpubsub's local bridge.
const cbPullBuildable = "./cmd/pscpull"

// checkPullDeploy checks what the pull ingester needs beyond what every
// deploy does: cbPullBuildable built and run with flags only on the
// subscription and topic, CPU that is never throttled, and instances always
// there.
func (c *cbChecked) checkPullDeploy(g cbGcloud, fail func(string, ...any)) {
	if g.flag("--set-build-env-vars") != "GOOGLE_BUILDABLE="+cbPullBuildable {
		fail("%s: %s must build %s (--set-build-env-vars=GOOGLE_BUILDABLE=%s)", g.step, g, cbPullBuildable, cbPullBuildable)
	}
	project := cbBuiltins["PROJECT_ID"]
	want := "-subscription=projects/" + project + "/subscriptions/" + c.subs["_PULL_SUBSCRIPTION"] + ",-topic=projects/" + project + "/topics/" + c.subs["_TOPIC"]
	if g.flag("--args") != want {
		fail("%s: --args=%q, want %q", g.step, g.flag("--args"), want)
	}
	if !g.has("--no-cpu-throttling") {
		fail("%s: %s needs --no-cpu-throttling: a throttled instance pulls nothing between requests, and it gets none", g.step, g)
	}
	if g.flag("--min-instances") == "" || g.flag("--min-instances") != g.flag("--max-instances") {
		fail("%s: %s needs --min-instances equal to --max-instances: nothing scales it by requests", g.step, g)
	}
}

// cbPooler is the DB_POOLER a _DB_POOLER substitution stands for.
func cbPooler(sub string) store.Pooler {
	if sub == "none" {
		return store.PoolerNone
	}
	return store.Pooler(sub)
}

// checkPreflight runs the preflight script with bash, so its arithmetic is
// the one the test just did.
func (c *cbChecked) checkPreflight(fail func(string, ...any)) {
	script, ok := c.scripts["preflight"]
	if !ok {
		fail("no preflight step checks the substitutions")
		return
	}
	var stderr bytes.Buffer
	cmd := exec.Command("bash", "-c", script)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		fail("preflight fails with these substitutions: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
}

func (c *cbChecked) checkTrigger(facts cbFacts, deps map[string]map[string]bool, fail func(string, ...any)) {
	var ingest, ingestStep string
	serviceAccounts := map[string]bool{}
	for _, g := range c.find("run", "deploy") {
		serviceAccounts[g.flag("--service-account")] = true
		if facts.EntryPoints[g.flag("--function")] == "CloudEvent" {
			ingest, ingestStep = g.arg(2), g.step
		}
	}
	var triggerSA, triggerName, triggerStep string
	for _, verb := range []string{"create", "update"} {
		cmds := c.find("eventarc", "triggers", verb)
		if len(cmds) != 1 {
			fail("want one gcloud eventarc triggers %s (describe, then create or update), found %d", verb, len(cmds))
			continue
		}
		g := cmds[0]
		triggerName, triggerStep = g.arg(3), g.step
		var types []string
		for _, filters := range g.flags["--event-filters"] {
			for _, f := range strings.Split(filters, ",") {
				if v, ok := strings.CutPrefix(f, "type="); ok {
					types = append(types, v)
				}
			}
		}
		if !slices.Equal(types, []string{facts.EventType}) {
			fail("%s: %s filters event types %q; IngestPubSub accepts %q", g.step, g, types, facts.EventType)
		}
		if d := g.flag("--destination-run-service"); d != ingest || ingest == "" {
			fail("%s: %s sends events to %q, not to the ingest service %q", g.step, g, d, ingest)
		}
		sa := g.flag("--service-account")
		if sa == "" || serviceAccounts[sa] {
			fail("%s: %s needs a --service-account of its own, not %q", g.step, g, sa)
		}
		triggerSA = sa
		if g.flag("--location") == "" {
			fail("%s: %s needs --location", g.step, g)
		}
		if verb == "create" && !strings.HasSuffix(g.flag("--transport-topic"), "/topics/"+c.subs["_TOPIC"]) {
			fail("%s: %s reads %q, not _TOPIC", g.step, g, g.flag("--transport-topic"))
		}
	}
	if !slices.ContainsFunc(c.find("eventarc", "triggers", "describe"), func(g cbGcloud) bool { return g.arg(3) == triggerName && g.step == triggerStep }) {
		fail("the trigger step must describe %s before creating or updating it", triggerName)
	}
	if ingestStep != "" && triggerStep != "" && !deps[triggerStep][ingestStep] {
		fail("step %s creates the trigger before %s deployed its destination", triggerStep, ingestStep)
	}

	pushSA := c.checkPush(ingest, ingestStep, serviceAccounts, deps, fail)
	invoker, pushInvoker := false, false
	for _, g := range c.find("run", "services", "add-iam-policy-binding") {
		if g.flag("--role") != "roles/run.invoker" {
			continue
		}
		switch g.flag("--member") {
		case "serviceAccount:" + triggerSA, "serviceAccount:" + pushSA:
			if g.flag("--member") == "serviceAccount:"+pushSA {
				pushInvoker = g.arg(3) == ingest
			} else {
				invoker = g.arg(3) == ingest
			}
			if triggerStep != "" && !deps[triggerStep][g.step] {
				fail("step %s must grant run.invoker before the trigger delivers", g.step)
			}
		case "allUsers", "allAuthenticatedUsers":
			fail("%s: %s opens a service to everyone", g.step, g)
		default:
			fail("%s: %s grants run.invoker to an unexpected member", g.step, g)
		}
	}
	if !invoker {
		fail("nothing grants roles/run.invoker on %q to the trigger's service account %q", ingest, triggerSA)
	}
	if !pushInvoker {
		fail("nothing grants roles/run.invoker on %q to the push subscription's service account %q", ingest, pushSA)
	}

	updates := slices.DeleteFunc(c.find("pubsub", "subscriptions", "update"), func(g cbGcloud) bool { return !g.has("--dead-letter-topic") })
	if len(updates) != 1 {
		fail("want one gcloud pubsub subscriptions update setting the dead-letter policy, found %d", len(updates))
		return
	}
	g := updates[0]
	if !strings.HasSuffix(g.flag("--dead-letter-topic"), "topics/"+c.subs["_DEAD_LETTER_TOPIC"]) {
		fail("%s: --dead-letter-topic=%q is not _DEAD_LETTER_TOPIC", g.step, g.flag("--dead-letter-topic"))
	}
	// Whether Pub/Sub accepts the number of attempts is gcloud's to judge
	// (TestCloudBuildGcloudJudges); that it is set is checked on the wire
	// (TestCloudBuildGcloud).
	if !deps[g.step][triggerStep] {
		fail("step %s updates the subscription before the trigger exists", g.step)
	}
	found := slices.ContainsFunc(c.find("eventarc", "triggers", "describe"), func(d cbGcloud) bool {
		return d.step == g.step && d.arg(3) == triggerName && d.flag("--format") == "value(transport.pubsub.subscription)"
	})
	if !found {
		fail("step %s must find the subscription Eventarc created with --format=value(transport.pubsub.subscription)", g.step)
	}
	agentRoles := map[string]bool{}
	for _, b := range append(c.find("pubsub", "topics", "add-iam-policy-binding"), c.find("pubsub", "subscriptions", "add-iam-policy-binding")...) {
		if strings.Contains(b.flag("--member"), "@gcp-sa-pubsub.iam.gserviceaccount.com") {
			agentRoles[b.words[1]+" "+b.flag("--role")] = true
		}
	}
	for _, want := range []string{"topics roles/pubsub.publisher", "subscriptions roles/pubsub.subscriber"} {
		if !agentRoles[want] {
			fail("the Pub/Sub service agent needs %s to forward dead letters", want)
		}
	}
}

// checkPush checks the push subscription's create and update commands and
// returns the account its tokens name.
func (c *cbChecked) checkPush(ingest, ingestStep string, functionAccounts map[string]bool, deps map[string]map[string]bool, fail func(string, ...any)) string {
	var pushSA string
	var timeout string
	for _, g := range c.find("run", "deploy") {
		if g.step == ingestStep {
			timeout = g.flag("--timeout")
		}
	}
	if timeout == "" {
		fail("%s: the ingest function needs an explicit --timeout, the push subscription's ack deadline", ingestStep)
	}
	for _, verb := range []string{"create", "update"} {
		cmds := slices.DeleteFunc(c.find("pubsub", "subscriptions", verb), func(g cbGcloud) bool { return !g.has("--push-endpoint") })
		if len(cmds) != 1 {
			fail("want one gcloud pubsub subscriptions %s of the push subscription (describe, then create or update), found %d", verb, len(cmds))
			continue
		}
		g := cmds[0]
		if g.arg(3) != c.subs["_PUSH_SUBSCRIPTION"] {
			fail("%s: %s is not _PUSH_SUBSCRIPTION", g.step, g)
		}
		if ep := g.flag("--push-endpoint"); !strings.HasSuffix(ep, "/projects/"+cbBuiltins["PROJECT_ID"]+"/topics/"+c.subs["_TOPIC"]) {
			fail("%s: %s pushes to %q; the path must name _TOPIC so messages keep the key Eventarc gives them", g.step, g, ep)
		}
		sa := g.flag("--push-auth-service-account")
		if sa == "" || functionAccounts[sa] {
			fail("%s: %s needs a --push-auth-service-account of its own, not %q", g.step, g, sa)
		}
		pushSA = sa
		if g.flag("--push-auth-token-audience") == "" {
			fail("%s: %s needs --push-auth-token-audience (the service URL): the endpoint's path is not an audience Cloud Run accepts", g.step, g)
		}
		if g.flag("--ack-deadline") != timeout {
			fail("%s: %s: --ack-deadline=%q, want the ingest function's --timeout %q", g.step, g, g.flag("--ack-deadline"), timeout)
		}
		if g.flag("--min-retry-delay") == "" || g.flag("--max-retry-delay") == "" {
			fail("%s: %s needs a retry policy (--min-retry-delay, --max-retry-delay)", g.step, g)
		}
		if verb == "create" && g.flag("--topic") != c.subs["_TOPIC"] {
			fail("%s: %s reads %q, not _TOPIC", g.step, g, g.flag("--topic"))
		}
		if ingestStep != "" && !deps[g.step][ingestStep] {
			fail("step %s creates the push subscription before %s deployed its endpoint", g.step, ingestStep)
		}
	}
	return pushSA
}

func cbKeys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// ---- tests ----

func cbReadYAML(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile("../../cloudbuild.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCloudBuildMatchesCode(t *testing.T) {
	facts := cbReadFacts(t)
	// Sanity: the facts are the code's, not empty sets that match anything.
	if facts.EntryPoints["Messages"] != "HTTP" || facts.EntryPoints["IngestPubSub"] != "CloudEvent" {
		t.Fatalf("entry points = %v", facts.EntryPoints)
	}
	for _, v := range []string{"DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_SSLMODE", "DB_MAX_CONNS", "DB_MIGRATE", "MAX_BODY_BYTES"} {
		if !facts.EnvVars[v] {
			t.Errorf("the code does not seem to read %s: %v", v, cbKeys(facts.EnvVars))
		}
	}
	c, errs := cbCheck(cbReadYAML(t), facts, cbSampleSubstitutions)
	for _, err := range errs {
		t.Error(err)
	}
	if c != nil && len(c.find("run", "deploy")) != 3 {
		t.Errorf("found %d deploys; want the two functions and the pull ingester", len(c.find("run", "deploy")))
	}
}

// TestCloudBuildRequiresDBHost: without the PSC endpoint the build stops in
// preflight, before deploying functions that could never connect.
func TestCloudBuildRequiresDBHost(t *testing.T) {
	_, errs := cbCheck(cbReadYAML(t), cbReadFacts(t), nil)
	if !slices.ContainsFunc(errs, func(err error) bool { return strings.Contains(err.Error(), "_DB_HOST must be the PSC endpoint") }) {
		t.Errorf("errors %v do not include the preflight's _DB_HOST check", errs)
	}
}

// TestCloudBuildCheckerCatchesDrift mutates the YAML and the code and expects
// the checker to notice each change.
func TestCloudBuildCheckerCatchesDrift(t *testing.T) {
	yamlText := string(cbReadYAML(t))
	facts := cbReadFacts(t)
	tests := []struct {
		name       string
		yamlFrom   string // replaced once by yamlTo
		yamlTo     string
		overrides  map[string]string
		mutateCode func(*cbFacts)
		want       string
	}{
		{name: "entry point renamed in the YAML", yamlFrom: "--function=IngestPubSub", yamlTo: "--function=IngestPubsub", want: "not an entry point"},
		{name: "entry point renamed in the code", mutateCode: func(f *cbFacts) {
			delete(f.EntryPoints, "Messages")
			f.EntryPoints["ServeMessages"] = "HTTP"
		}, want: `"Messages" is not an entry point`},
		{name: "env var renamed in the YAML", yamlFrom: "DB_HOST=${_DB_HOST},DB_PORT", yamlTo: "DB_HOSTNAME=${_DB_HOST},DB_PORT", want: "sets DB_HOSTNAME, which the code does not read"},
		{name: "env var renamed in the code", mutateCode: func(f *cbFacts) {
			delete(f.EnvVars, "DB_SSLMODE")
			f.EnvVars["DB_TLS_MODE"] = true
		}, want: "sets DB_SSLMODE, which the code does not read"},
		{name: "DB_NAME dropped", yamlFrom: ",DB_NAME=${_DB_NAME},DB_USER=$$db_user", yamlTo: ",DB_USER=$$db_user", want: "does not set DB_NAME"},
		{name: "password instead of IAM", yamlFrom: "DB_POOLER=${_DB_POOLER} \\\n          \"$$secrets\"", yamlTo: "DB_POOLER=${_DB_POOLER},DB_PASSWORD=hunter2 \\\n          \"$$secrets\"", want: "sets DB_PASSWORD"},
		{name: "functions migrate", yamlFrom: "DB_MIGRATE=false,DB_POOLER=${_DB_POOLER} \\\n          \"$$secrets\"", yamlTo: "DB_MIGRATE=true,DB_POOLER=${_DB_POOLER} \\\n          \"$$secrets\"", want: "would migrate"},
		{name: "plaintext to the database", overrides: map[string]string{"_DB_SSLMODE": "disable"}, want: "rejected by the code"},
		{name: "no Direct VPC egress range", yamlFrom: "--vpc-egress=private-ranges-only \\", yamlTo: "--vpc-egress=all-traffic \\", want: "--vpc-egress=\"all-traffic\""},
		{name: "no subnet", yamlFrom: "          --subnet=${_SUBNET} \\\n", yamlTo: "", want: "needs --subnet=VALUE"},
		{name: "shared service account", yamlFrom: "--service-account=${_INGEST_SA}@", yamlTo: "--service-account=${_FUNCTION_SA}@", want: "shares its service account"},
		{name: "public HTTP function", yamlFrom: `"$$auth" \`, yamlTo: `--allow-unauthenticated \`, want: "outside the _ALLOW_UNAUTHENTICATED guard"},
		{name: "public by default", yamlFrom: `_ALLOW_UNAUTHENTICATED: "false"`, yamlTo: `_ALLOW_UNAUTHENTICATED: "true"`, want: `must default to "false"`},
		{name: "public ingest", yamlFrom: "          --no-allow-unauthenticated \\\n", yamlTo: "          --allow-unauthenticated \\\n", want: "is public"},
		{name: "wrong event type", yamlFrom: "type=google.cloud.pubsub.topic.v1.messagePublished \\\n            --destination-run-service=${_INGEST_SERVICE} \\\n            --destination-run-region=${_REGION} \\\n            --service-account=$$trigger_sa\n", yamlTo: "type=google.cloud.storage.object.v1.finalized \\\n            --destination-run-service=${_INGEST_SERVICE} \\\n            --destination-run-region=${_REGION} \\\n            --service-account=$$trigger_sa\n", want: "filters event types"},
		{name: "event type changed in the code", mutateCode: func(f *cbFacts) { f.EventType = "google.cloud.pubsub.topic.v2.messagePublished" }, want: "filters event types"},
		{name: "base image behind go.mod", yamlFrom: "--base-image=go126", yamlTo: "--base-image=go125", want: "needs go126"},
		{name: "go.mod moves on", mutateCode: func(f *cbFacts) { f.GoVersion = "1.27" }, want: "needs go127"},
		{name: "no invoker binding", yamlFrom: "@${PROJECT_ID}.iam.gserviceaccount.com --role=roles/run.invoker", yamlTo: "@${PROJECT_ID}.iam.gserviceaccount.com --role=roles/run.viewer", want: "nothing grants roles/run.invoker"},
		{name: "push as a function identity", yamlFrom: "--push-auth-service-account=${_PUSH_SA}@", yamlTo: "--push-auth-service-account=${_INGEST_SA}@", want: "needs a --push-auth-service-account of its own"},
		{name: "push to the root", yamlFrom: "--push-endpoint=$$url/projects/${PROJECT_ID}/topics/${_TOPIC}", yamlTo: "--push-endpoint=$$url/", want: "the path must name _TOPIC"},
		{name: "ack deadline below the timeout", yamlFrom: "--ack-deadline=${_INGEST_TIMEOUT}", yamlTo: "--ack-deadline=10", want: "want the ingest function's --timeout"},
		{name: "pull ingester throttled", yamlFrom: "          --no-cpu-throttling \\\n", yamlTo: "", want: "needs --no-cpu-throttling"},
		{name: "pull ingester builds the function", yamlFrom: "          --set-build-env-vars=GOOGLE_BUILDABLE=./cmd/pscpull \\\n", yamlTo: "", want: "must build ./cmd/pscpull"},
		{name: "pull ingester built with the local bridge", yamlFrom: "GOOGLE_BUILDABLE=./cmd/pscpull \\", yamlTo: "GOOGLE_BUILDABLE=./cmd/pscpubsub \\", want: "must build ./cmd/pscpull"},
		{name: "function built without telemetry", yamlFrom: "          --set-build-env-vars=GOFLAGS=-tags=otlp \\\n", yamlTo: "", want: "must be built with the OpenTelemetry SDK"},
		{name: "function deploy without --function", yamlFrom: "          --function=IngestPubSub \\\n", yamlTo: "", want: "is not an entry point"},
		{name: "pull ingester given a command word", yamlFrom: "--args=-subscription=", yamlTo: "--args=pull,-subscription=", want: `--args="pull,-subscription=`},
		{name: "pull ingester as the ingest function", yamlFrom: "--service-account=${_PULL_SA}@", yamlTo: "--service-account=${_INGEST_SA}@", want: "shares its service account"},
		{name: "push create only", yamlFrom: "gcloud pubsub subscriptions update ${_PUSH_SUBSCRIPTION}", yamlTo: "gcloud pubsub subscriptions create ${_PUSH_SUBSCRIPTION}", want: "want one gcloud pubsub subscriptions update of the push subscription"},
		{name: "trigger as a function identity", yamlFrom: "trigger_sa=${_TRIGGER_SA}@", yamlTo: "trigger_sa=${_INGEST_SA}@", want: "needs a --service-account of its own"},
		{name: "create only", yamlFrom: "gcloud eventarc triggers update", yamlTo: "gcloud eventarc triggers create", want: "want one gcloud eventarc triggers update"},
		{name: "no dead-letter topic", yamlFrom: "--dead-letter-topic=projects/${PROJECT_ID}/topics/${_DEAD_LETTER_TOPIC}", yamlTo: "--dead-letter-topic=projects/${PROJECT_ID}/topics/other", want: "is not _DEAD_LETTER_TOPIC"},
		{name: "too many instances", overrides: map[string]string{"_MAX_INSTANCES": "20"}, want: "connection budget"},
		{name: "bigger pools", overrides: map[string]string{"_DB_MAX_CONNS": "10"}, want: "preflight fails"},
		{name: "pooler not wired", yamlFrom: ",DB_MIGRATE=false,DB_POOLER=${_DB_POOLER} \\", yamlTo: ",DB_MIGRATE=false \\", overrides: map[string]string{"_DB_POOLER": "transaction"}, want: `not _DB_POOLER="transaction"`},
		{name: "pooler's server pool too big", overrides: map[string]string{"_DB_POOLER": "transaction", "_DB_POOLER_SERVER_CONNS": "90"}, want: "server connections exceed"},
		{name: "pooler budget in preflight", overrides: map[string]string{"_DB_POOLER": "transaction", "_DB_POOLER_SERVER_CONNS": "90"}, want: "preflight fails"},
		{name: "unknown pooler", overrides: map[string]string{"_DB_POOLER": "session"}, want: "preflight fails"},
		{name: "deploy before tests", yamlFrom: "waitFor: [preflight, test]\n    entrypoint: bash", yamlTo: "waitFor: [preflight]\n    entrypoint: bash", want: "without waiting for the tests"},
		{name: "test image behind go.mod", yamlFrom: "golang:1.26-bookworm", yamlTo: "golang:1.25-bookworm", want: "go.mod says go 1.26"},
		{name: "tests skipped", yamlFrom: "go test -tags pgbouncer ./...", yamlTo: "go test -tags pgbouncer ./cmd/...", want: "test ./... by tier"},
		{name: "step installs by hand", yamlFrom: "bash .ci/tools pgbouncer\n", yamlTo: "apt-get install -y postgresql pgbouncer\n", want: "install with .ci/tools"},
		{name: "step tests a tier it did not install", yamlFrom: "bash .ci/tools pgbouncer", yamlTo: "bash .ci/tools default", want: "installs only the default tier, without pgbouncer"},
		{name: "step installs more than it tests", yamlFrom: "go test -tags pgbouncer ./...", yamlTo: "go test ./...", want: "installs the pgbouncer tier but does not run go test -tags pgbouncer ./..."},
		{name: "step runs e2e without its tools", yamlFrom: "go test -tags pgbouncer ./...", yamlTo: "go test -tags e2e ./...", want: "without pubsub-emulator"},
		{name: "step names an unknown tier", yamlFrom: "bash .ci/tools pgbouncer", yamlTo: "bash .ci/tools pooler", want: `installs tier "pooler", which .ci/tools does not know`},
		{name: "deployed build not vetted", yamlFrom: "        go vet -tags otlp ./...\n", yamlTo: "", want: "go vet -tags otlp ./..."},
		{name: "e2e files not vetted", yamlFrom: "        go vet -tags e2e ./...\n", yamlTo: "", want: "go vet -tags e2e ./..."},
		{name: "tier loses a tool its files start", mutateCode: func(f *cbFacts) { f.Tiers["pgbouncer"] = []string{"go", "postgresql"} }, want: "starts pgbouncer but builds in the pgbouncer tier"},
		{name: "e2e tier loses the emulator", mutateCode: func(f *cbFacts) {
			f.Tiers["e2e"] = slices.DeleteFunc(slices.Clone(f.Tiers["e2e"]), func(s string) bool { return s == "pubsub-emulator" })
		}, want: "starts pubsub-emulator but builds in the e2e tier"},
		{name: "PgBouncer test untagged", mutateCode: func(f *cbFacts) {
			i := slices.IndexFunc(f.TestFiles, func(tf cbTestFile) bool { return tf.Path == "store/pgbouncer_test.go" })
			f.TestFiles[i].Constraint = nil
		}, want: "store/pgbouncer_test.go starts pgbouncer but builds in the default tier"},
		{name: "test behind a tag no tier sets", mutateCode: func(f *cbFacts) {
			f.TestFiles = append(f.TestFiles, cbTestFile{Path: "slow_test.go", Constraint: &constraint.TagExpr{Tag: "slow"}})
		}, want: "slow_test.go is not built with -tags e2e"},
		{name: "CI skips the e2e tier", mutateCode: func(f *cbFacts) { f.CIRun = strings.Replace(f.CIRun, "go test -tags e2e ./...\n", "", 1) }, want: "installs the e2e tier but does not run go test -tags e2e ./..."},
		{name: "CI skips the README's command", mutateCode: func(f *cbFacts) { f.CIRun = strings.Replace(f.CIRun, "go test ./...\n", "", 1) }, want: `.ci/run runs go test ./... with tags ["e2e"]`},
		{name: "CI installs by hand", mutateCode: func(f *cbFacts) {
			f.CIRun = strings.Replace(f.CIRun, "bash .ci/tools e2e\n", "apt-get install -y postgresql pgbouncer\n", 1)
		}, want: ".ci/run runs \"apt-get install"},
		{name: "CI installs a smaller tier", mutateCode: func(f *cbFacts) {
			f.CIRun = strings.Replace(f.CIRun, "bash .ci/tools e2e\n", "bash .ci/tools pgbouncer\n", 1)
		}, want: ".ci/run installs the pgbouncer tier; want e2e"},
		{name: "shell variable not escaped", yamlFrom: `"$$auth"`, yamlTo: `"$auth"`, want: "unescaped $"},
		{name: "unknown substitution", yamlFrom: "--region=${_REGION}", yamlTo: "--region=${_REGOIN}", want: "_REGOIN is used but has no default"},
		{name: "unused substitution", yamlFrom: "substitutions:\n", yamlTo: "substitutions:\n  _SPARE: x\n", want: "_SPARE is defined but never used"},
		{name: "shell syntax error", yamlFrom: "        fi\n", yamlTo: "\n", want: "bash rejects the script"},
		{name: "edits on by default", yamlFrom: "_HTTP_ROUTES: append", yamlTo: "_HTTP_ROUTES: all", want: `_HTTP_ROUTES must default to "append"`},
		{name: "routes not wired", yamlFrom: ",HTTP_ROUTES=${_HTTP_ROUTES}", yamlTo: "", want: "does not set HTTP_ROUTES"},
		{name: "unverified server by default", yamlFrom: "_DB_SSLMODE: verify-ca", yamlTo: "_DB_SSLMODE: require", want: "_DB_SSLMODE must default"},
		{name: "server CA not mounted", yamlFrom: "\"$$secrets\" \\\n          \"$$auth\"", yamlTo: "\"$$auth\"", want: "mounts no CA"},
		{name: "require without the opt-in", overrides: map[string]string{"_DB_SSLMODE": "require"}, want: "preflight fails"},
		{name: "verify-full against an IP", overrides: map[string]string{"_DB_SSLMODE": "verify-full"}, want: "preflight fails"},
		{name: "no memory limit", yamlFrom: "          --memory=${_INGEST_MEMORY} \\\n", yamlTo: "", want: "needs --memory=VALUE"},
		{name: "memory below the minimum", overrides: map[string]string{"_INGEST_MEMORY": "256Mi"}, want: "below Cloud Run's 512Mi minimum"},
		{name: "concurrency beyond memory", overrides: map[string]string{"_CONCURRENCY": "1000"}, want: "lower the concurrency or raise the memory"},
		{name: "misspelt key", yamlFrom: "    waitFor: [deploy-ingest]", yamlTo: "    waitfor: [deploy-ingest]", want: "field waitfor not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			y := yamlText
			if tt.yamlFrom != "" {
				if !strings.Contains(y, tt.yamlFrom) {
					t.Fatalf("cloudbuild.yaml no longer contains %q; update the mutation", tt.yamlFrom)
				}
				y = strings.Replace(y, tt.yamlFrom, tt.yamlTo, 1)
			}
			f := facts.clone()
			if tt.mutateCode != nil {
				tt.mutateCode(&f)
			}
			overrides := cbClone(cbSampleSubstitutions)
			for k, v := range tt.overrides {
				overrides[k] = v
			}
			_, errs := cbCheck([]byte(y), f, overrides)
			if !slices.ContainsFunc(errs, func(err error) bool { return strings.Contains(err.Error(), tt.want) }) {
				t.Errorf("no error mentions %q; got %v", tt.want, errs)
			}
		})
	}
}

func cbClone[V any](m map[string]V) map[string]V {
	out := make(map[string]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// TestCodeFactsFollowTheSource: the facts come from the source text, so a
// rename in the code reaches the checker.
func TestCodeFactsFollowTheSource(t *testing.T) {
	goMod := []byte("module x\n\ngo 1.26.8\n")
	tests := []struct {
		name  string
		src   string
		entry map[string]string
		env   []string
	}{
		{
			name:  "registrations and getenv",
			src:   `package p; func init() { functions.HTTP("Web", web); functions.CloudEvent("Events", ev) }; func f() { getenv("A_B"); s.getenv("C") }`,
			entry: map[string]string{"Web": "HTTP", "Events": "CloudEvent"},
			env:   []string{"A_B", "C"},
		},
		{
			name: "typed helpers and os.Getenv",
			src:  `package p; func f() { intVar(getenv, "PORT", 1, 2, 3); durationVar(getenv, "T", 0); boolVar(getenv, "B", false); os.Getenv("HOME"); other("NOT_ENV") }`,
			env:  []string{"B", "HOME", "PORT", "T"},
		},
		{
			name: "renamed variable",
			src:  `package p; func f() { getenv("DB_DATABASE") }`,
			env:  []string{"DB_DATABASE"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			facts, err := cbCodeFacts(map[string][]byte{"x.go": []byte(tt.src)}, goMod)
			if err != nil {
				t.Fatal(err)
			}
			if tt.entry == nil {
				tt.entry = map[string]string{}
			}
			if fmt.Sprint(facts.EntryPoints) != fmt.Sprint(tt.entry) {
				t.Errorf("entry points = %v; want %v", facts.EntryPoints, tt.entry)
			}
			if got := cbKeys(facts.EnvVars); !slices.Equal(got, tt.env) {
				t.Errorf("env = %v; want %v", got, tt.env)
			}
			if facts.GoVersion != "1.26" {
				t.Errorf("go version = %q", facts.GoVersion)
			}
		})
	}
}

func TestCbSplit(t *testing.T) {
	tests := []struct {
		script string
		want   [][]string
	}{
		{"a b\\\n  c 'd e' \"f $g\"", [][]string{{"a", "b", "c", "d e", "f $g"}}},
		{"x=$(gcloud a --f='v(x)') # note\ny", [][]string{{"gcloud", "a", "--f=v(x)"}, {"x=$(...)"}, {"y"}}},
		{"if p >/dev/null 2>&1; then q; else r; fi", [][]string{{"p"}, {"q"}, {"r"}}},
		{"a || b && c | d; n=$(( (1 + 2) * 3 ))", [][]string{{"a"}, {"b"}, {"c"}, {"d"}, {"n=$(( (1 + 2) * 3 ))"}}},
		{`echo "at $(g "x y")"`, [][]string{{"g", "x y"}, {"echo", "at $(...)"}}},
	}
	for _, tt := range tests {
		cmds, err := cbSplit(tt.script)
		if err != nil {
			t.Errorf("%q: %v", tt.script, err)
			continue
		}
		var got [][]string
		for _, c := range cmds {
			got = append(got, c.words)
		}
		if fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("%q split into %q; want %q", tt.script, got, tt.want)
		}
	}
}

// cbRuntimeBytes is what an idle instance holds, as
// `go run ./cmd/pscbench rss` measures it (cmd/pscbench/BENCHMARKS.md),
// with room to spare.
const cbRuntimeBytes = 32 << 20

// cbCheckMemory requires --memory to hold the function's bound for its
// --concurrency (function.MemoryBound) twice over, Go's GC headroom at
// GOGC=100, plus the idle runtime, and at least Cloud Run's 512 MiB minimum
// of the second generation execution environment.
func cbCheckMemory(g cbGcloud, fn string, fail func(string, ...any)) {
	conc, err := strconv.Atoi(g.flag("--concurrency"))
	mem, ok := cbMiB(g.flag("--memory"))
	if err != nil || conc < 1 || !ok {
		fail("%s: %s needs a numeric --concurrency and --memory=NMi or NGi, not %q and %q", g.step, fn, g.flag("--concurrency"), g.flag("--memory"))
		return
	}
	if mem < 512 {
		fail("%s: %s has --memory=%dMi, below Cloud Run's 512Mi minimum", g.step, fn, mem)
	}
	if need := cbRuntimeBytes + 2*function.MemoryBound(fn, conc); int64(mem)<<20 < need {
		fail("%s: %s at --concurrency=%d may hold %d MiB, more than --memory=%dMi; lower the concurrency or raise the memory", g.step, fn, conc, need>>20, mem)
	}
}

// cbMiB reads a Cloud Run memory size in MiB (512Mi, 1Gi).
func cbMiB(v string) (int, bool) {
	for suffix, scale := range map[string]int{"Mi": 1, "Gi": 1024} {
		if n, err := strconv.Atoi(strings.TrimSuffix(v, suffix)); err == nil && strings.HasSuffix(v, suffix) && n > 0 {
			return n * scale, true
		}
	}
	return 0, false
}

// TestCloudBuildPoolerRaisesInstanceLimits: through a transaction pooler the
// budget is the pooler's server pool, so instance limits far beyond
// max_connections / DB_MAX_CONNS pass; the same limits direct do not.
func TestCloudBuildPoolerRaisesInstanceLimits(t *testing.T) {
	yamlText, facts := cbReadYAML(t), cbReadFacts(t)
	many := cbClone(cbSampleSubstitutions)
	many["_MAX_INSTANCES"], many["_INGEST_MAX_INSTANCES"] = "100", "50"
	many["_DB_POOLER"] = "transaction"
	if _, errs := cbCheck(yamlText, facts, many); len(errs) > 0 {
		t.Errorf("150 instances through a pooler with 20 server connections: %v", errs)
	}
	many["_DB_POOLER"] = "none"
	if _, errs := cbCheck(yamlText, facts, many); !slices.ContainsFunc(errs, func(err error) bool { return strings.Contains(err.Error(), "connection budget") }) {
		t.Errorf("150 direct instances pass the budget: %v", errs)
	}
}
