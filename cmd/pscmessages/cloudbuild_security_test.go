package main

import (
	"bytes"
	"os/exec"
	"slices"
	"strings"
	"testing"

	function "example.com/pscmessages"
)

// checkSecurity: the deploy is safe by default. The HTTP function's routes
// come from _HTTP_ROUTES, which defaults to the append-only mode, and both
// functions verify the database server with the instance's CA, mounted from
// Secret Manager at the path DB_ROOT_CERT names.
func (c *cbChecked) checkSecurity(facts cbFacts, fail func(string, ...any)) {
	defaults := c.cfg.Substitutions
	if defaults["_HTTP_ROUTES"] != function.RoutesAppend {
		fail(`_HTTP_ROUTES must default to "append", not %q: a public deploy would let anyone edit and delete`, defaults["_HTTP_ROUTES"])
	}
	if m := defaults["_DB_SSLMODE"]; m != "verify-ca" && m != "verify-full" {
		fail("_DB_SSLMODE must default to verify-ca or verify-full, not %q: the IAM token would go to whatever answers", m)
	}
	if defaults["_DB_INSECURE_NO_VERIFY"] != "false" {
		fail(`_DB_INSECURE_NO_VERIFY must default to "false"`)
	}
	for _, g := range c.find("run", "deploy") {
		fn := g.flag("--function")
		env := map[string]string{}
		for _, f := range []string{"--set-env-vars", "--update-env-vars"} {
			for _, list := range g.flags[f] {
				for k, v := range cbEnvVars(list) {
					env[k] = v
				}
			}
		}
		if facts.EntryPoints[fn] == "HTTP" {
			if v, ok := env["HTTP_ROUTES"]; !ok || v != c.subs["_HTTP_ROUTES"] {
				fail("%s: %s does not set HTTP_ROUTES from _HTTP_ROUTES (got %q)", g.step, fn, v)
			} else if v != function.RoutesAppend && v != function.RoutesAll {
				fail("%s: HTTP_ROUTES=%q is not a mode the code knows", g.step, v)
			}
		}
		if env["DB_SSLMODE"] == "require" {
			continue // the preflight insists on _DB_INSECURE_NO_VERIFY=true
		}
		root := env["DB_ROOT_CERT"]
		want := root + "=" + c.subs["_DB_SERVER_CA_SECRET"] + ":"
		if root == "" || !slices.ContainsFunc(g.flags["--set-secrets"], func(v string) bool { return strings.HasPrefix(v, want) }) {
			fail("%s: %s verifies the server (%s) but mounts no CA at DB_ROOT_CERT=%q from _DB_SERVER_CA_SECRET with --set-secrets", g.step, fn, env["DB_SSLMODE"], root)
		}
	}
}

// cbPreflight runs the preflight step with overrides and returns its output.
func cbPreflight(t *testing.T, overrides map[string]string) (string, error) {
	t.Helper()
	subs := map[string]string{}
	for k, v := range cbSampleSubstitutions {
		subs[k] = v
	}
	for k, v := range overrides {
		subs[k] = v
	}
	c, _ := cbCheck(cbReadYAML(t), cbReadFacts(t), subs)
	if c == nil {
		t.Fatal("cloudbuild.yaml does not decode")
	}
	var out bytes.Buffer
	cmd := exec.Command("bash", "-c", c.scripts["preflight"])
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// TestCloudBuildSecurityModes runs the preflight with the substitutions an
// operator may choose, and checks that the whole file still checks out.
func TestCloudBuildSecurityModes(t *testing.T) {
	for _, tc := range []struct {
		name      string
		overrides map[string]string
		fails     bool
		say       string // in the build log
	}{
		{name: "defaults", say: "verified with verify-ca"},
		{name: "verify-full by the PSC DNS name", overrides: map[string]string{"_DB_SSLMODE": "verify-full", "_DB_HOST": "1a2b3c4d5e6f.abcdef123456.us-central1.sql.goog."}, say: "verified with verify-full"},
		{name: "verify-full against an IP", overrides: map[string]string{"_DB_SSLMODE": "verify-full"}, fails: true, say: "must be the instance's PSC DNS name"},
		{name: "require without the opt-in", overrides: map[string]string{"_DB_SSLMODE": "require"}, fails: true, say: "_DB_INSECURE_NO_VERIFY=true"},
		{name: "require with the opt-in", overrides: map[string]string{"_DB_SSLMODE": "require", "_DB_INSECURE_NO_VERIFY": "true"}, say: "INSECURE"},
		{name: "opt-in with a verifying mode", overrides: map[string]string{"_DB_INSECURE_NO_VERIFY": "true"}, fails: true, say: "only goes with"},
		{name: "verify-ca without a secret", overrides: map[string]string{"_DB_SERVER_CA_SECRET": ""}, fails: true, say: "needs _DB_SERVER_CA_SECRET"},
		{name: "disable", overrides: map[string]string{"_DB_SSLMODE": "disable"}, fails: true, say: "_DB_SSLMODE must be"},
		{name: "public and editable", overrides: map[string]string{"_ALLOW_UNAUTHENTICATED": "true", "_HTTP_ROUTES": "all"}, say: "WARNING: _HTTP_ROUTES=all"},
		{name: "unknown routes", overrides: map[string]string{"_HTTP_ROUTES": "everything"}, fails: true, say: "_HTTP_ROUTES must be append or all"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := cbPreflight(t, tc.overrides)
			if (err != nil) != tc.fails {
				t.Fatalf("preflight err = %v, want failure %v; output:\n%s", err, tc.fails, out)
			}
			if !strings.Contains(out, tc.say) {
				t.Fatalf("preflight output does not say %q:\n%s", tc.say, out)
			}
			if !tc.fails {
				overrides := map[string]string{}
				for k, v := range cbSampleSubstitutions {
					overrides[k] = v
				}
				for k, v := range tc.overrides {
					overrides[k] = v
				}
				if _, errs := cbCheck(cbReadYAML(t), cbReadFacts(t), overrides); len(errs) > 0 {
					t.Fatalf("checker: %v", errs)
				}
			}
		})
	}
}
