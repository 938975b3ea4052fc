//go:build e2e

package main

// Every gcloud command of cloudbuild.yaml, judged by gcloud itself: the
// steps run as Cloud Build would run them (bash scripts with bash, gcloud
// steps with the real gcloud CLI), after the defaults and a sample set of
// substitutions, against the recording fake of gcloudfake_test.go. gcloud
// parses and validates every flag before it sends anything, so an argument
// it does not accept fails the step; the requests it sends show what the
// flags mean to Google's APIs.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"example.com/pscmessages/store"
)

// cbGcloudSamples are the substitution sets every step runs with: the
// defaults, and the opt-ins an operator may choose. New substitutions are
// picked up from cloudbuild.yaml by themselves; add a set here when one
// switches to another code path.
var cbGcloudSamples = map[string]map[string]string{
	"defaults":                {},
	"public HTTP function":    {"_ALLOW_UNAUTHENTICATED": "true"},
	"insecure database TLS":   {"_DB_SSLMODE": "require", "_DB_INSECURE_NO_VERIFY": "true"},
	"all routes, other sizes": {"_HTTP_ROUTES": "all", "_MAX_INSTANCES": "2", "_CONCURRENCY": "10", "_INGEST_MEMORY": "1Gi"},
	// Through a transaction pooler the instance limits go far past what
	// max_connections allows direct.
	"transaction pooler": {"_DB_POOLER": "transaction", "_DB_POOLER_SERVER_CONNS": "20", "_MAX_INSTANCES": "100", "_INGEST_MAX_INSTANCES": "50"},
	// PgBouncer cannot take IAM logins: passwords from Secret Manager.
	"pooler with password logins":   {"_DB_POOLER": "transaction", "_DB_LOGIN": "password"},
	"password logins, insecure TLS": {"_DB_LOGIN": "password", "_DB_SSLMODE": "require", "_DB_INSECURE_NO_VERIFY": "true"},
	"telemetry off":                 {"_OTEL_EXPORT": "none"},
	// The two ways Pub/Sub reaches IngestPubSub besides the default wrapped push.
	"eventarc trigger": {"_PUBSUB_TRIGGER": "eventarc"},
	"unwrapped push":   {"_PUSH_PAYLOAD": "unwrapped", "_PUSH_MIN_BACKOFF": "1s", "_PUSH_MAX_BACKOFF": "60s", "_INGEST_TIMEOUT": "120"},
	"pull ingester":    {"_PULL_INGESTER": "true", "_PULL_INSTANCES": "2"},
}

// cbStepRun is one step made ready to run: its program and arguments.
type cbStepRun struct {
	id   string
	name string
	args []string
}

// cbRunnableSteps returns the steps that call gcloud, expanded with subs, in
// file order (which respects waitFor).
func cbRunnableSteps(t *testing.T, yamlText []byte, subs map[string]string) ([]cbStepRun, *cbChecked) {
	t.Helper()
	overrides := cbClone(cbSampleSubstitutions)
	for k, v := range subs {
		overrides[k] = v
	}
	c, errs := cbCheck(yamlText, cbReadFacts(t), overrides)
	if c == nil {
		t.Fatal(errs)
	}
	// Only the defaults' subs map may lack what the overrides add.
	for k, v := range overrides {
		if _, ok := c.subs[k]; !ok {
			t.Fatalf("sample substitution %s=%s is not in cloudbuild.yaml", k, v)
		}
	}
	var steps []cbStepRun
	for _, st := range c.cfg.Steps {
		calls := slices.ContainsFunc(c.commands[st.ID], func(w []string) bool { return w[0] == "gcloud" })
		if !calls {
			continue
		}
		if script, ok := c.scripts[st.ID]; ok {
			steps = append(steps, cbStepRun{id: st.ID, name: "bash", args: []string{"-c", script}})
		} else {
			steps = append(steps, cbStepRun{id: st.ID, name: "gcloud", args: c.commands[st.ID][0][1:]})
		}
	}
	return steps, c
}

// cbSourceDir is a copy of what `gcloud run deploy --source=.` uploads: the
// root package and go.mod.
func cbSourceDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files, _ := filepath.Glob("../../*.go")
	files = append(files, "../../go.mod", "../../go.sum")
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestCloudBuildGcloud runs every step that calls gcloud, twice: first
// against an empty project (each describe answers "not found", so the create
// branches run), then against what the first run made (the update
// branches). Each substitution sample runs the steps whose commands differ
// from the defaults'. Every step must succeed, and the requests must carry
// what the pipeline means.
func TestCloudBuildGcloud(t *testing.T) {
	if _, err := exec.LookPath("gcloud"); err != nil {
		t.Fatalf("gcloud is not installed (Debian: apt-get install google-cloud-cli): %v", err)
	}
	facts := cbReadFacts(t)
	defaults, _ := cbRunnableSteps(t, cbReadYAML(t), nil)
	dir := cbSourceDir(t)
	names := cbKeys(cbGcloudSamples)
	for _, name := range names {
		steps, c := cbRunnableSteps(t, cbReadYAML(t), cbGcloudSamples[name])
		if name != "defaults" {
			// The steps whose commands differ, and the steps they wait
			// for (which make what they update).
			differ := map[string]bool{}
			for _, st := range steps {
				if !slices.ContainsFunc(defaults, func(d cbStepRun) bool { return d.id == st.id && slices.Equal(d.args, st.args) }) {
					differ[st.id] = true
				}
			}
			need := map[string]bool{}
			for id := range differ {
				need[id] = true
				for dep := range c.deps[id] {
					need[dep] = true
				}
			}
			steps = slices.DeleteFunc(steps, func(st cbStepRun) bool { return !need[st.id] || len(differ) == 0 })
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel() // each sample has its own fake; gcloud mostly waits
			if len(steps) == 0 {
				t.Fatalf("the sample changes no gcloud command; drop it or make it matter")
			}
			fake := newGcloudFake(t)
			env := fake.gcloudEnv(t, cbBuiltins["PROJECT_ID"])
			for _, branch := range []string{"create", "update"} {
				m := fake.mark()
				for _, st := range steps {
					sm := fake.mark()
					out, err := fake.run(t, env, dir, st.name, st.args...)
					if err != nil {
						t.Fatalf("%s run: step %s failed: %v\n%s\nrequests:\n%s", branch, st.id, err, out, fakeDump(fake.requests(sm)))
					}
				}
				if len(fake.unknown) > 0 {
					t.Fatalf("requests to APIs the fake does not know (add them to gcloudAPIs): %v", fake.unknown)
				}
				reqs := fake.requests(m)
				for _, err := range cbJudgeRequests(facts, c.subs, branch, steps, reqs) {
					t.Errorf("%s run: %v", branch, err)
				}
				if t.Failed() {
					t.Logf("requests of the %s run:\n%s", branch, fakeDump(reqs))
					return
				}
				if (name == "defaults" || name == "eventarc trigger" || name == "pull ingester") && branch == "create" {
					cbJudgeCatchesDrift(t, facts, c.subs, steps, reqs)
				}
			}
		})
	}
}

// cbRequestsFor returns the requests matching method and a path suffix.
func cbRequestsFor(reqs []fakeRequest, method, pathPart string) []fakeRequest {
	var out []fakeRequest
	for _, r := range reqs {
		if r.Method == method && strings.Contains(r.Path, pathPart) && r.Status/100 == 2 {
			out = append(out, r)
		}
	}
	return out
}

// cbDig walks a decoded JSON value: cbDig(v, "spec", "template", "metadata").
func cbDig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func cbStr(v any, keys ...string) string {
	s, _ := cbDig(v, keys...).(string)
	return s
}

// cbJudgeRequests checks that the requests gcloud sent carry what the
// pipeline means. steps are the steps that ran: a sample that runs only the
// HTTP function's deploy is judged on that alone.
func cbJudgeRequests(facts cbFacts, subs map[string]string, branch string, steps []cbStepRun, reqs []fakeRequest) []error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	ran := func(id string) bool { return slices.ContainsFunc(steps, func(s cbStepRun) bool { return s.id == id }) }
	project := cbBuiltins["PROJECT_ID"]
	email := func(id string) string { return id + "@" + project + ".iam.gserviceaccount.com" }

	// Cloud Run services: Knative (v1 API) create on the first run, replace on the second.
	method := map[string]string{"create": "POST", "update": "PUT"}[branch]
	services := map[string]map[string]any{} // function target → service
	var pullService map[string]any
	for _, r := range cbRequestsFor(reqs, method, "/apis/serving.knative.dev/v1/namespaces/"+project+"/services") {
		if containers, _ := cbDig(r.Body, "spec", "template", "spec", "containers").([]any); len(containers) == 1 {
			// Functions take no arguments: a service with some runs the
			// pull ingester's command.
			if args, _ := cbDig(containers[0], "args").([]any); len(args) > 0 {
				pullService = r.Body
				continue
			}
		}
		fn := cbStr(r.Body, "metadata", "annotations", "run.googleapis.com/build-function-target")
		if _, ok := facts.EntryPoints[fn]; !ok {
			fail("service %s is built for function target %q, not an entry point the code registers (%v)", cbStr(r.Body, "metadata", "name"), fn, cbKeys(facts.EntryPoints))
			continue
		}
		services[fn] = r.Body
	}
	accounts := map[string]string{}
	serviceName := map[string]string{} // function → service name
	for fn, svc := range services {
		name := cbStr(svc, "metadata", "name")
		serviceName[fn] = name
		tmpl := cbDig(svc, "spec", "template")
		ann := func(k string) string { return cbStr(tmpl, "metadata", "annotations", k) }
		if want := "runtimes/go" + strings.ReplaceAll(facts.GoVersion, ".", ""); !strings.HasSuffix(cbStr(svc, "metadata", "annotations", "run.googleapis.com/build-base-image"), want) {
			fail("%s: built on %q; go.mod's go %s needs %s", name, cbStr(svc, "metadata", "annotations", "run.googleapis.com/build-base-image"), facts.GoVersion, want)
		}
		if v := ann("run.googleapis.com/vpc-access-egress"); v != "private-ranges-only" {
			fail("%s: VPC egress %q; the PSC endpoint is reached through Direct VPC egress with private ranges only", name, v)
		}
		var nics []map[string]string
		if err := json.Unmarshal([]byte(ann("run.googleapis.com/network-interfaces")), &nics); err != nil || len(nics) != 1 ||
			nics[0]["network"] != subs["_NETWORK"] || nics[0]["subnetwork"] != subs["_SUBNET"] {
			fail("%s: network interfaces %q; want network %s, subnet %s", name, ann("run.googleapis.com/network-interfaces"), subs["_NETWORK"], subs["_SUBNET"])
		}
		sa := cbStr(tmpl, "spec", "serviceAccountName")
		if other, ok := accounts[sa]; ok || sa == "" || !strings.HasSuffix(sa, ".iam.gserviceaccount.com") {
			fail("%s: runs as %q (shared with %q?); each function needs a service account of its own", name, sa, other)
		}
		accounts[sa] = fn
		prefix := map[bool]string{true: "_INGEST", false: ""}[facts.EntryPoints[fn] == "CloudEvent"]
		if v := ann("autoscaling.knative.dev/maxScale"); v != subs[prefix+"_MAX_INSTANCES"] {
			fail("%s: max instances %q, want %s=%s", name, v, prefix+"_MAX_INSTANCES", subs[prefix+"_MAX_INSTANCES"])
		}
		conc, _ := cbDig(tmpl, "spec", "containerConcurrency").(float64)
		if strconv.Itoa(int(conc)) != subs[prefix+"_CONCURRENCY"] {
			fail("%s: concurrency %v, want %s=%s", name, conc, prefix+"_CONCURRENCY", subs[prefix+"_CONCURRENCY"])
		}
		containers, _ := cbDig(tmpl, "spec", "containers").([]any)
		if len(containers) != 1 {
			fail("%s: %d containers", name, len(containers))
			continue
		}
		ctr := containers[0]
		mem := cbStr(ctr, "resources", "limits", "memory")
		if mem != subs[prefix+"_MEMORY"] {
			fail("%s: memory limit %q, want %s=%s", name, mem, prefix+"_MEMORY", subs[prefix+"_MEMORY"])
		}
		env := map[string]string{}
		list, _ := cbDig(ctr, "env").([]any)
		secretEnv := map[string]string{} // variable → the secret it comes from
		for _, e := range list {
			env[cbStr(e, "name")] = cbStr(e, "value")
			if ref := cbStr(e, "valueFrom", "secretKeyRef", "name"); ref != "" {
				secretEnv[cbStr(e, "name")] = ref
				env[cbStr(e, "name")] = "value of secret " + ref
			}
		}
		for k := range env {
			if !facts.EnvVars[k] {
				fail("%s: sets %s, which the code does not read", name, k)
			}
		}
		cbJudgeTelemetry(name, env, subs, fail)
		cfg, err := store.ConfigFromEnv(cbGetenv(env))
		switch {
		case err != nil:
			fail("%s: the code rejects the environment gcloud sets: %v", name, err)
		case cfg.IAMAuth != (subs["_DB_LOGIN"] != "password") || cfg.Migrate:
			fail("%s: IAM login %v, migrates %v; want _DB_LOGIN=%s and no migrations", name, cfg.IAMAuth, cfg.Migrate, subs["_DB_LOGIN"])
		case !cfg.IAMAuth && (cfg.User+"@"+project+".iam.gserviceaccount.com" != sa || secretEnv["DB_PASSWORD"] != cfg.User+"-db-password"):
			fail("%s: password login as %q with DB_PASSWORD from secret %q; want the role named after %s and its secret ROLE-db-password", name, cfg.User, secretEnv["DB_PASSWORD"], sa)
		case cfg.Pooler != cbPooler(subs["_DB_POOLER"]):
			fail("%s: DB_POOLER %q, want _DB_POOLER=%s", name, cfg.Pooler, subs["_DB_POOLER"])
		}
		if path := env["DB_ROOT_CERT"]; path != "" {
			mounted := false
			vols, _ := cbDig(tmpl, "spec", "volumes").([]any)
			mounts, _ := cbDig(ctr, "volumeMounts").([]any)
			for _, m := range mounts {
				for _, v := range vols {
					if cbStr(v, "name") == cbStr(m, "name") && cbStr(v, "secret", "secretName") == subs["_DB_SERVER_CA_SECRET"] {
						items, _ := cbDig(v, "secret", "items").([]any)
						for _, it := range items {
							mounted = mounted || filepath.Join(cbStr(m, "mountPath"), cbStr(it, "path")) == path
						}
					}
				}
			}
			if !mounted {
				fail("%s: DB_ROOT_CERT=%s is not a file of the mounted secret %s", name, path, subs["_DB_SERVER_CA_SECRET"])
			}
		}
		ingress := cbStr(svc, "metadata", "annotations", "run.googleapis.com/ingress")
		if facts.EntryPoints[fn] == "CloudEvent" && ingress != subs["_INGEST_INGRESS"] {
			fail("%s: ingress %q, want %s", name, ingress, subs["_INGEST_INGRESS"])
		}
	}
	if ran("deploy-pull") && subs["_PULL_INGESTER"] == "true" {
		tmpl := cbDig(pullService, "spec", "template")
		ann := func(k string) string { return cbStr(tmpl, "metadata", "annotations", k) }
		sa := cbStr(tmpl, "spec", "serviceAccountName")
		var args []string
		if containers, _ := cbDig(tmpl, "spec", "containers").([]any); len(containers) == 1 {
			as, _ := cbDig(containers[0], "args").([]any)
			for _, a := range as {
				args = append(args, fmt.Sprint(a))
			}
		}
		wantArgs := []string{"-subscription=projects/" + project + "/subscriptions/" + subs["_PULL_SUBSCRIPTION"], "-topic=projects/" + project + "/topics/" + subs["_TOPIC"]}
		builds := 0
		for _, r := range cbRequestsFor(reqs, "POST", "/builds:submit") {
			if cbStr(r.Body, "buildpackBuild", "environmentVariables", "GOOGLE_BUILDABLE") == cbPullBuildable {
				builds++
			}
		}
		switch {
		case pullService == nil:
			fail("_PULL_INGESTER=true deployed no service running the pull ingester")
		case !slices.Equal(args, wantArgs):
			fail("pull ingester: container args %q, want %q (cmd/pscpull takes flags only)", args, wantArgs)
		case builds != 1:
			fail("pull ingester: %d builds of GOOGLE_BUILDABLE=%s, want 1", builds, cbPullBuildable)
		case !strings.EqualFold(ann("run.googleapis.com/cpu-throttling"), "false"):
			fail("pull ingester: cpu-throttling %q; a throttled instance pulls nothing", ann("run.googleapis.com/cpu-throttling"))
		case ann("autoscaling.knative.dev/minScale") != subs["_PULL_INSTANCES"] || ann("autoscaling.knative.dev/maxScale") != subs["_PULL_INSTANCES"]:
			fail("pull ingester: instances %q to %q; want always _PULL_INSTANCES=%s", ann("autoscaling.knative.dev/minScale"), ann("autoscaling.knative.dev/maxScale"), subs["_PULL_INSTANCES"])
		case sa != email(subs["_PULL_SA"]) || accounts[sa] != "":
			fail("pull ingester runs as %q; want %s, no function's", sa, email(subs["_PULL_SA"]))
		case cbStr(pullService, "metadata", "annotations", "run.googleapis.com/ingress") != "internal":
			fail("pull ingester: ingress %q; nothing needs to reach it", cbStr(pullService, "metadata", "annotations", "run.googleapis.com/ingress"))
		}
		if branch == "create" {
			rs := cbRequestsFor(reqs, "PUT", "/v1/projects/"+project+"/subscriptions/"+subs["_PULL_SUBSCRIPTION"])
			if len(rs) != 1 || cbStr(rs[0].Body, "deadLetterPolicy", "deadLetterTopic") != "projects/"+project+"/topics/"+subs["_DEAD_LETTER_TOPIC"] || cbDig(rs[0].Body, "pushConfig", "pushEndpoint") != nil {
				fail("the pull subscription %s is not created as a pull subscription with the dead-letter policy", subs["_PULL_SUBSCRIPTION"])
			}
		}
	} else if pullService != nil {
		fail("the pull ingester was deployed with _PULL_INGESTER=%s", subs["_PULL_INGESTER"])
	}
	deployed := 0
	for _, id := range []string{"deploy-messages", "deploy-ingest"} {
		if ran(id) {
			deployed++
		}
	}
	if len(services) != deployed {
		fail("%d services deployed by %d deploy steps", len(services), deployed)
	}
	for _, r := range cbRequestsFor(reqs, "POST", "/builds:submit") {
		fn := cbStr(r.Body, "buildpackBuild", "functionTarget")
		_, ok := facts.EntryPoints[fn]
		if fn == "" {
			// The pull ingester: a command, built from its main package.
			ok = cbStr(r.Body, "buildpackBuild", "environmentVariables", "GOOGLE_BUILDABLE") == cbPullBuildable
		}
		if goflags := cbStr(r.Body, "buildpackBuild", "environmentVariables", "GOFLAGS"); fn != "" && "GOFLAGS="+goflags != cbFunctionBuildEnv {
			fail("build request of %s: GOFLAGS=%q; want %s, or the deployed function answers every request 500 when OTEL_EXPORTER_OTLP_ENDPOINT is set", fn, goflags, cbFunctionBuildEnv)
		}
		if !ok || cbStr(r.Body, "buildpackBuild", "baseImage") != "go"+strings.ReplaceAll(facts.GoVersion, ".", "") ||
			cbStr(r.Body, "serviceAccount") != "projects/"+project+"/serviceAccounts/"+email(subs["_SOURCE_BUILD_SA"]) {
			fail("build request %s: want an entry point (or GOOGLE_BUILDABLE=%s), base image go%s and the builder account", r.Raw, cbPullBuildable, facts.GoVersion)
		}
	}

	// Who may invoke what: the last policy set on each service.
	policies := map[string][]any{}
	for _, r := range cbRequestsFor(reqs, "POST", ":setIamPolicy") {
		bindings, _ := cbDig(r.Body, "policy", "bindings").([]any)
		policies[strings.TrimSuffix(r.Path[strings.Index(r.Path, "/projects/")+1:], ":setIamPolicy")] = bindings
	}
	members := func(resource, role string) []string {
		var out []string
		for _, b := range policies[resource] {
			if cbStr(b, "role") == role {
				for _, m := range cbDig(b, "members").([]any) {
					out = append(out, m.(string))
				}
			}
		}
		return out
	}
	svcPath := func(name string) string {
		return "projects/" + project + "/locations/" + subs["_REGION"] + "/services/" + name
	}
	for res := range policies {
		for _, m := range members(res, "roles/run.invoker") {
			public := m == "allUsers" || m == "allAuthenticatedUsers"
			if public && (subs["_ALLOW_UNAUTHENTICATED"] != "true" || res != svcPath(subs["_SERVICE"])) {
				fail("%s is opened to %s", res, m)
			}
		}
	}
	if subs["_ALLOW_UNAUTHENTICATED"] == "true" && ran("deploy-messages") && !slices.Contains(members(svcPath(subs["_SERVICE"]), "roles/run.invoker"), "allUsers") {
		fail("_ALLOW_UNAUTHENTICATED=true but %s is not public", subs["_SERVICE"])
	}
	direct := subs["_PUBSUB_TRIGGER"] == "direct"
	invoker := map[bool]string{true: subs["_PUSH_SA"], false: subs["_TRIGGER_SA"]}[direct]
	if ran("ingest-invoker") {
		if got := members(svcPath(subs["_INGEST_SERVICE"]), "roles/run.invoker"); !slices.Equal(got, []string{"serviceAccount:" + email(invoker)}) {
			fail("run.invoker on %s: %v; want only the delivering account %s", subs["_INGEST_SERVICE"], got, email(invoker))
		}
	}

	// The push subscription: created on the first run, updated in place on
	// the second.
	pushPath := "/v1/projects/" + project + "/subscriptions/" + subs["_PUSH_SUBSCRIPTION"]
	if ran("trigger") && direct {
		var sub map[string]any
		if branch == "create" {
			if rs := cbRequestsFor(reqs, "PUT", pushPath); len(rs) == 1 && rs[0].Path == pushPath {
				sub = rs[0].Body
			}
		} else {
			for _, r := range cbRequestsFor(reqs, "PATCH", pushPath) {
				if cbDig(r.Body, "subscription", "pushConfig") != nil {
					sub, _ = cbDig(r.Body, "subscription").(map[string]any)
				}
			}
		}
		url := "https://" + subs["_INGEST_SERVICE"] + "-abc123-uc.a.run.app" // the fake's URL of the service
		switch {
		case sub == nil:
			fail("want one push subscription %s request", branch)
		case cbStr(sub, "pushConfig", "pushEndpoint") != url+"/projects/"+project+"/topics/"+subs["_TOPIC"]:
			fail("push endpoint %q; want the ingest service's URL %s with the topic in its path", cbStr(sub, "pushConfig", "pushEndpoint"), url)
		case cbStr(sub, "pushConfig", "oidcToken", "serviceAccountEmail") != email(subs["_PUSH_SA"]) || accounts[cbStr(sub, "pushConfig", "oidcToken", "serviceAccountEmail")] != "":
			fail("push identity %q; want %s, no function's", cbStr(sub, "pushConfig", "oidcToken", "serviceAccountEmail"), email(subs["_PUSH_SA"]))
		case cbStr(sub, "pushConfig", "oidcToken", "audience") != url:
			fail("push token audience %q; want the service URL %s", cbStr(sub, "pushConfig", "oidcToken", "audience"), url)
		case (cbDig(sub, "pushConfig", "noWrapper") != nil) != (subs["_PUSH_PAYLOAD"] == "unwrapped"):
			fail("push wrapper %v; want _PUSH_PAYLOAD=%s", cbDig(sub, "pushConfig", "noWrapper"), subs["_PUSH_PAYLOAD"])
		case subs["_PUSH_PAYLOAD"] == "unwrapped" && cbDig(sub, "pushConfig", "noWrapper", "writeMetadata") != true:
			fail("unwrapped push without writeMetadata: no message id to deduplicate on")
		case fmt.Sprint(cbDig(sub, "ackDeadlineSeconds")) != subs["_INGEST_TIMEOUT"]:
			fail("ack deadline %v; want the function's request timeout %s", cbDig(sub, "ackDeadlineSeconds"), subs["_INGEST_TIMEOUT"])
		case cbStr(sub, "retryPolicy", "minimumBackoff") != subs["_PUSH_MIN_BACKOFF"] || cbStr(sub, "retryPolicy", "maximumBackoff") != subs["_PUSH_MAX_BACKOFF"]:
			fail("retry policy %v; want %s to %s", cbDig(sub, "retryPolicy"), subs["_PUSH_MIN_BACKOFF"], subs["_PUSH_MAX_BACKOFF"])
		case branch == "create" && cbStr(sub, "topic") != "projects/"+project+"/topics/"+subs["_TOPIC"]:
			fail("push subscription topic %q; want _TOPIC", cbStr(sub, "topic"))
		}
		if len(cbRequestsFor(reqs, "POST", "/triggers")) > 0 {
			fail("direct push also created an Eventarc trigger")
		}
	}
	// The trigger: created on the first run, updated in place on the second.
	if ran("trigger") && !direct {
		var tr []fakeRequest
		if branch == "create" {
			tr = cbRequestsFor(reqs, "POST", "/triggers")
		} else {
			tr = cbRequestsFor(reqs, "PATCH", "/triggers/"+subs["_TRIGGER"])
		}
		if len(tr) != 1 {
			fail("want one trigger %s request, got %d", branch, len(tr))
		} else {
			b := tr[0].Body
			filters, _ := cbDig(b, "eventFilters").([]any)
			if len(filters) != 1 || cbStr(filters[0], "attribute") != "type" || cbStr(filters[0], "value") != facts.EventType {
				fail("trigger filters %v; IngestPubSub accepts type=%s", filters, facts.EventType)
			}
			if cbStr(b, "destination", "cloudRun", "service") != serviceName["IngestPubSub"] && serviceName["IngestPubSub"] != "" ||
				cbStr(b, "destination", "cloudRun", "service") != subs["_INGEST_SERVICE"] || cbStr(b, "destination", "cloudRun", "region") != subs["_REGION"] {
				fail("trigger destination %v; want %s in %s", cbDig(b, "destination"), subs["_INGEST_SERVICE"], subs["_REGION"])
			}
			if sa := cbStr(b, "serviceAccount"); sa != email(subs["_TRIGGER_SA"]) || accounts[sa] != "" {
				fail("trigger identity %q; want %s, no function's", sa, email(subs["_TRIGGER_SA"]))
			}
			if topic := cbStr(b, "transport", "pubsub", "topic"); branch == "create" && topic != "projects/"+project+"/topics/"+subs["_TOPIC"] {
				fail("trigger transport topic %q; want _TOPIC %s", topic, subs["_TOPIC"])
			}
		}
	}

	// Topics, and the dead-letter policy on the subscription Eventarc made.
	if ran("topics") && branch == "create" {
		for _, topic := range []string{subs["_TOPIC"], subs["_DEAD_LETTER_TOPIC"]} {
			exact := slices.DeleteFunc(cbRequestsFor(reqs, "PUT", "/topics/"+topic), func(r fakeRequest) bool { return r.Path != "/v1/projects/"+project+"/topics/"+topic })
			if len(exact) != 1 {
				fail("topic %s is not created", topic)
			}
		}
		inspect := cbRequestsFor(reqs, "PUT", "/subscriptions/"+subs["_DEAD_LETTER_TOPIC"]+"-inspect")
		if len(inspect) != 1 || cbStr(inspect[0].Body, "topic") != "projects/"+project+"/topics/"+subs["_DEAD_LETTER_TOPIC"] {
			fail("no subscription keeps what reaches the dead-letter topic")
		}
	}
	if ran("dead-letter") {
		subPath := map[bool]string{true: pushPath, false: "/subscriptions/eventarc-"}[direct]
		patches := slices.DeleteFunc(cbRequestsFor(reqs, "PATCH", subPath), func(r fakeRequest) bool {
			return cbDig(r.Body, "subscription", "deadLetterPolicy") == nil
		})
		if len(patches) != 1 {
			fail("want one PATCH of the trigger's subscription, got %d", len(patches))
		} else {
			dl := cbDig(patches[0].Body, "subscription", "deadLetterPolicy")
			attempts, _ := cbDig(dl, "maxDeliveryAttempts").(float64)
			if cbStr(dl, "deadLetterTopic") != "projects/"+project+"/topics/"+subs["_DEAD_LETTER_TOPIC"] || strconv.Itoa(int(attempts)) != subs["_MAX_DELIVERY_ATTEMPTS"] {
				fail("dead-letter policy %v; want %s after %s attempts", dl, subs["_DEAD_LETTER_TOPIC"], subs["_MAX_DELIVERY_ATTEMPTS"])
			}
			agent := "serviceAccount:service-" + cbBuiltins["PROJECT_NUMBER"] + "@gcp-sa-pubsub.iam.gserviceaccount.com"
			sub := strings.TrimPrefix(patches[0].Path, "/v1/")
			if !slices.Contains(members("projects/"+project+"/topics/"+subs["_DEAD_LETTER_TOPIC"], "roles/pubsub.publisher"), agent) ||
				!slices.Contains(members(sub, "roles/pubsub.subscriber"), agent) {
				fail("the Pub/Sub service agent needs publisher on %s and subscriber on %s to forward dead letters", subs["_DEAD_LETTER_TOPIC"], sub)
			}
		}
	}
	return errs
}

// TestCloudBuildGcloudJudges: what gcloud refuses fails its step, before any
// request; facts about gcloud's flags are gcloud's to judge, not a copy kept
// in cloudbuild_test.go. Each case runs the steps it names, in order, on a
// fresh fake (earlier ones set up what the last one needs).
func TestCloudBuildGcloudJudges(t *testing.T) {
	yamlText := string(cbReadYAML(t))
	dir := cbSourceDir(t)
	tests := []struct {
		name     string
		from, to string
		steps    []string
		want     string // in gcloud's output
	}{
		{name: "more delivery attempts than Pub/Sub allows", from: "--max-delivery-attempts=${_MAX_DELIVERY_ATTEMPTS}", to: "--max-delivery-attempts=1000",
			steps: []string{"deploy-ingest", "trigger", "dead-letter"}, want: "less than or equal to 100"},
		// The first --min-retry-delay is the update branch's: the second run takes it.
		{name: "backoff in words", from: "--min-retry-delay=${_PUSH_MIN_BACKOFF}", to: "--min-retry-delay=soon",
			steps: []string{"deploy-ingest", "trigger", "trigger"}, want: "min-retry-delay"},
		{name: "misspelt egress", from: "--vpc-egress=private-ranges-only \\\n          --ingress", to: "--vpc-egress=private-ranges \\\n          --ingress",
			steps: []string{"deploy-ingest"}, want: "--vpc-egress"},
		{name: "retention in words", from: "--message-retention-duration=7d", to: "--message-retention-duration=a week",
			steps: []string{"topics"}, want: "message-retention-duration"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if !strings.Contains(yamlText, tt.from) {
				t.Fatalf("cloudbuild.yaml no longer contains %q; update the case", tt.from)
			}
			steps, _ := cbRunnableSteps(t, []byte(strings.Replace(yamlText, tt.from, tt.to, 1)), nil)
			fake := newGcloudFake(t)
			env := fake.gcloudEnv(t, cbBuiltins["PROJECT_ID"])
			for i, id := range tt.steps {
				k := slices.IndexFunc(steps, func(s cbStepRun) bool { return s.id == id })
				if k < 0 {
					t.Fatalf("no step %s calls gcloud", id)
				}
				m := fake.mark()
				out, err := fake.run(t, env, dir, steps[k].name, steps[k].args...)
				last := i == len(tt.steps)-1
				switch {
				case !last && err != nil:
					t.Fatalf("step %s failed: %v\n%s", id, err, out)
				case last && err == nil:
					t.Fatalf("gcloud accepted the mutated step %s:\n%s\n%s", id, out, fakeDump(fake.requests(m)))
				case last && !strings.Contains(strings.ToLower(out), strings.ToLower(tt.want)):
					t.Fatalf("step %s failed, but not with %q:\n%s", id, tt.want, out)
				}
			}
		})
	}
}

// cbJudgeCatchesDrift edits recorded requests as a drifted pipeline would
// send them and expects cbJudgeRequests to notice each edit.
func cbJudgeCatchesDrift(t *testing.T, facts cbFacts, subs map[string]string, steps []cbStepRun, reqs []fakeRequest) {
	t.Helper()
	tests := []struct {
		name, path, from, to, want string
		// kind is the _PUBSUB_TRIGGER a case applies to ("" for both), or
		// "pull" for the pull ingester's sample, which runs only its steps.
		kind string
	}{
		{"all traffic through the VPC", "/services", `"private-ranges-only"`, `"all-traffic"`, "VPC egress", ""},
		{"another subnet", "/services", `\"subnetwork\": \"` + subs["_SUBNET"] + `\"`, `\"subnetwork\": \"other\"`, "network interfaces", ""},
		{"env var the code does not read", "/services", `"name": "DB_HOST"`, `"name": "DB_HOSTNAME"`, "does not read", ""},
		{"functions migrate", "/services", `"name": "DB_MIGRATE", "value": "false"`, `"name": "DB_MIGRATE", "value": "true"`, "migrates true", ""},
		{"wrong function target", "/services", `build-function-target": "IngestPubSub"`, `build-function-target": "Ingest"`, "not an entry point", ""},
		{"old base image", "/services", `runtimes/go1`, `runtimes/go0`, "needs runtimes/go", ""},
		{"no memory limit", "/services", `"memory": "` + subs["_MEMORY"] + `"`, `"memory": "64Mi"`, "memory limit", ""},
		{"ingress for everyone", "/services", `"run.googleapis.com/ingress": "internal"`, `"run.googleapis.com/ingress": "all"`, "ingress", ""},
		{"public ingest", ":setIamPolicy", `"serviceAccount:` + subs["_TRIGGER_SA"] + `@`, `"allUsers", "serviceAccount:` + subs["_TRIGGER_SA"] + `@`, "opened to allUsers", "eventarc"},
		{"public push ingest", ":setIamPolicy", `"serviceAccount:` + subs["_PUSH_SA"] + `@`, `"allUsers", "serviceAccount:` + subs["_PUSH_SA"] + `@`, "opened to allUsers", "direct"},
		{"other event type", "/triggers", facts.EventType, "google.cloud.storage.object.v1.finalized", "filters", "eventarc"},
		{"trigger as a function", "/triggers", `"serviceAccount": "` + subs["_TRIGGER_SA"] + `@`, `"serviceAccount": "` + subs["_INGEST_SA"] + `@`, "trigger identity", "eventarc"},
		{"no dead-letter topic", "/subscriptions/eventarc-", `"deadLetterTopic": "projects/my-project/topics/` + subs["_DEAD_LETTER_TOPIC"], `"deadLetterTopic": "projects/my-project/topics/other`, "dead-letter policy", "eventarc"},
		{"push as a function", "/subscriptions/" + subs["_PUSH_SUBSCRIPTION"], `"serviceAccountEmail": "` + subs["_PUSH_SA"] + `@`, `"serviceAccountEmail": "` + subs["_INGEST_SA"] + `@`, "push identity", "direct"},
		{"push to the root", "/subscriptions/" + subs["_PUSH_SUBSCRIPTION"], `/projects/my-project/topics/` + subs["_TOPIC"] + `"`, `/"`, "push endpoint", "direct"},
		{"short ack deadline", "/subscriptions/" + subs["_PUSH_SUBSCRIPTION"], `"ackDeadlineSeconds": ` + subs["_INGEST_TIMEOUT"], `"ackDeadlineSeconds": 10`, "ack deadline", "direct"},
		{"no retry policy", "/subscriptions/" + subs["_PUSH_SUBSCRIPTION"], `"minimumBackoff": "` + subs["_PUSH_MIN_BACKOFF"] + `"`, `"minimumBackoff": "0s"`, "retry policy", "direct"},
		{"no push dead-letter topic", "/subscriptions/" + subs["_PUSH_SUBSCRIPTION"], `"deadLetterTopic": "projects/my-project/topics/` + subs["_DEAD_LETTER_TOPIC"], `"deadLetterTopic": "projects/my-project/topics/other`, "dead-letter policy", "direct"},
		{"trigger invokes too", ":setIamPolicy", `"serviceAccount:` + subs["_PUSH_SA"] + `@`, `"serviceAccount:` + subs["_TRIGGER_SA"] + `@my-project.iam.gserviceaccount.com", "serviceAccount:` + subs["_PUSH_SA"] + `@`, "want only the delivering account", "direct"},
		{"function built without telemetry", "/builds:submit", `"GOFLAGS": "-tags=otlp"`, `"GOFLAGS": "-tags=none"`, "want GOFLAGS=-tags=otlp", ""},
		{"pull ingester built with the local bridge", "/builds:submit", `"GOOGLE_BUILDABLE": "./cmd/pscpull"`, `"GOOGLE_BUILDABLE": "./cmd/pscpubsub"`, "GOOGLE_BUILDABLE=./cmd/pscpull", "pull"},
		{"pull ingester given a command word", "/services", `"-subscription=`, `"pull", "-subscription=`, "cmd/pscpull takes flags only", "pull"},
	}
	for _, tt := range tests {
		if pull := subs["_PULL_INGESTER"] == "true"; pull != (tt.kind == "pull") || !pull && tt.kind != "" && tt.kind != subs["_PUBSUB_TRIGGER"] {
			continue
		}
		edited := make([]fakeRequest, len(reqs))
		hit := false
		for i, r := range reqs {
			edited[i] = r
			raw := string(r.Raw)
			if r.Method != "GET" && strings.Contains(r.Path, tt.path) && strings.Contains(raw, tt.from) {
				raw = strings.Replace(raw, tt.from, tt.to, 1)
				edited[i].Raw = []byte(raw)
				edited[i].Body = nil
				json.Unmarshal(edited[i].Raw, &edited[i].Body)
				hit = true
			}
		}
		if !hit {
			t.Errorf("drift %q: no request contains %s; update the case", tt.name, tt.from)
			continue
		}
		errs := cbJudgeRequests(facts, subs, "create", steps, edited)
		if !slices.ContainsFunc(errs, func(err error) bool { return strings.Contains(err.Error(), tt.want) }) {
			t.Errorf("drift %q: no error mentions %q; got %v", tt.name, tt.want, errs)
		}
	}
}
