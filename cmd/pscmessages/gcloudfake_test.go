//go:build e2e

package main

// A recording fake of the Google APIs that gcloud calls, so that the real CLI
// can run the commands of cloudbuild.yaml offline. gcloud is pointed at it
// with CLOUDSDK_API_ENDPOINT_OVERRIDES_<API>=http://<api>.fake/ and an HTTP
// proxy (CLOUDSDK_PROXY_*): every request reaches this one server as an
// absolute URI with its JSON body, whatever host gcloud derives (Cloud Run's
// regional hosts become us-central1-run.fake).
//
// The fake is a generic resource store, as Google's REST APIs are built:
// GET a name answers the stored resource or 404; create (POST to a
// collection with ?xxxId=, or PUT to a name, or a Knative POST with
// metadata.name) stores it; PATCH merges; :getIamPolicy/:setIamPolicy keep a
// policy per resource; long-running operations are answered done. A few
// APIs need a field a real server computes (a Cloud Run service's Ready
// condition and URL, the subscription Eventarc creates for a trigger); those
// are filled in by complete().
//
// `gcloud run deploy --source=. --function=F --base-image=goNNN` (Cloud SDK
// 528) reaches its main request offline through: serviceusage (are the APIs
// enabled), the Knative service GET (404 → create), Artifact Registry's
// cloud-run-source-deploy repository (404 → create, an operation), the build
// service account (iam), the run-sources-PROJECT-REGION bucket (404 →
// create, then a list by prefix), a multipart upload of the zipped source
// (gcloud compares size and checksums with its file), Cloud Run's
// builds:submit, the Cloud Build operation it names, and then the Knative
// service POST (create) or PUT (replace) and, on replace, the service's IAM
// policy. Nothing is left unreached.

import (
	"bytes"
	"crypto/md5"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
)

// gcloudAPIs are the APIs whose endpoints gcloud is pointed at the fake for:
// every API a command of cloudbuild.yaml may call. A request to any other
// host fails the test, naming it, so a new one is added here.
var gcloudAPIs = []string{
	"run", "eventarc", "pubsub", "iam", "cloudresourcemanager", "secretmanager", "sql", "sqladmin",
	"artifactregistry", "storage", "cloudbuild", "serviceusage", "compute", "logging",
}

// fakeRequest is one recorded request.
type fakeRequest struct {
	Method string
	Host   string // the API's fake host, e.g. us-central1-run.fake
	Path   string // without the query
	Query  url.Values
	Body   map[string]any // decoded JSON, nil when not JSON
	Raw    []byte
	Status int
	// ContentType is the request's; a source upload is multipart/related.
	ContentType string
}

func (r fakeRequest) String() string {
	q := ""
	if len(r.Query) > 0 {
		q = "?" + r.Query.Encode()
	}
	return fmt.Sprintf("%s %s%s%s → %d", r.Method, r.Host, r.Path, q, r.Status)
}

// gcloudFake is the fake server and what it has stored and seen.
type gcloudFake struct {
	srv       *httptest.Server
	mu        sync.Mutex
	res       map[string]map[string]any // path → resource
	iam       map[string]map[string]any // path → IAM policy
	log       []fakeRequest
	ops       int
	opsByName map[string]map[string]any // operations/op-N → the operation
	// unknown collects requests to hosts outside gcloudAPIs.
	unknown []string
}

func newGcloudFake(t testing.TB) *gcloudFake {
	t.Helper()
	f := &gcloudFake{res: map[string]map[string]any{}, iam: map[string]map[string]any{}, opsByName: map[string]map[string]any{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

// requests returns what was recorded since mark (an index from mark()).
func (f *gcloudFake) requests(from int) []fakeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeRequest(nil), f.log[from:]...)
}

func (f *gcloudFake) mark() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.log)
}

func fakeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func fakeError(code int, status, msg string) map[string]any {
	return map[string]any{"error": map[string]any{"code": code, "status": status, "message": msg}}
}

func (f *gcloudFake) serve(w http.ResponseWriter, r *http.Request) {
	raw, _ := io.ReadAll(r.Body)
	rec := fakeRequest{Method: r.Method, Host: r.URL.Host, Path: r.URL.Path, Query: r.URL.Query(), Raw: raw, ContentType: r.Header.Get("Content-Type")}
	if rec.Host == "" {
		rec.Host = r.Host
	}
	var body map[string]any
	if json.Unmarshal(raw, &body) == nil {
		rec.Body = body
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	status, resp := f.answer(rec)
	rec.Status = status
	f.log = append(f.log, rec)
	fakeJSON(w, status, resp)
}

// apiOf is the API a fake host belongs to: us-central1-run.fake → run.
func apiOf(host string) string {
	h := strings.TrimSuffix(strings.Split(host, ":")[0], ".fake")
	if i := strings.LastIndexByte(h, '-'); i >= 0 {
		if a := h[i+1:]; a != "" && strings.Contains(h[:i], "-") {
			return a
		}
	}
	return h
}

// answer decides the fake's reply; f.mu is held.
func (f *gcloudFake) answer(r fakeRequest) (int, any) {
	api := apiOf(r.Host)
	known := false
	for _, a := range gcloudAPIs {
		known = known || a == api
	}
	if !known {
		f.unknown = append(f.unknown, r.String())
		return 501, fakeError(501, "UNIMPLEMENTED", "the fake does not know API host "+r.Host)
	}
	path := r.Path
	verb := ""
	if i := strings.LastIndexByte(path, ':'); i > strings.LastIndexByte(path, '/') {
		path, verb = path[:i], path[i+1:]
	}
	key := api + path
	if api == "storage" {
		if status, resp, ok := f.storage(r, key); ok {
			return status, resp
		}
	}
	switch {
	case verb == "getIamPolicy":
		if p, ok := f.iam[key]; ok {
			return 200, p
		}
		if _, ok := f.res[key]; !ok && !strings.Contains(path, "/projects/") {
			return 404, fakeError(404, "NOT_FOUND", path+" not found")
		}
		return 200, map[string]any{"etag": "BwYAAAAAAAA=", "version": 1}
	case verb == "setIamPolicy":
		p, _ := r.Body["policy"].(map[string]any)
		if p == nil {
			p = map[string]any{}
		}
		f.iam[key] = p
		return 200, p
	case api == "run" && verb == "submit":
		return 200, f.submitBuild(r, path)
	case verb != "":
		return 200, map[string]any{}
	case strings.Contains(path, "/operations/"):
		if op, ok := f.opsByName[path[strings.Index(path, "/operations/")+1:]]; ok {
			return 200, op
		}
		i := strings.Index(path, "projects/")
		return 200, map[string]any{"name": path[max(i, 0):], "done": true}
	}
	switch r.Method {
	case http.MethodGet:
		if res, ok := f.res[key]; ok {
			return 200, res
		}
		if res := f.prerequisite(api, path); res != nil {
			return 200, res
		}
		return 404, fakeError(404, "NOT_FOUND", "Resource '"+path+"' was not found")
	case http.MethodDelete:
		delete(f.res, key)
		return 200, f.operation(api, nil)
	case http.MethodPut, http.MethodPatch:
		res := map[string]any{}
		if old, ok := f.res[key]; ok {
			res = old
		} else if r.Method == http.MethodPatch && r.Query.Get("allowMissing") != "true" {
			return 404, fakeError(404, "NOT_FOUND", "Resource '"+path+"' was not found")
		}
		for k, v := range r.Body {
			res[k] = v
		}
		// Pub/Sub's PATCH wraps the resource: {"subscription": {...}, "updateMask": ...}.
		for _, k := range []string{"subscription", "topic"} {
			if inner, ok := r.Body[k].(map[string]any); ok && r.Method == http.MethodPatch {
				delete(res, k)
				delete(res, "updateMask")
				for kk, v := range inner {
					res[kk] = v
				}
			}
		}
		f.complete(api, path, res)
		f.res[key] = res
		if api == "pubsub" {
			return 200, res
		}
		return 200, f.operation(api, res)
	case http.MethodPost:
		name := ""
		for k, v := range r.Query {
			if strings.HasSuffix(k, "Id") && len(v) > 0 && k != "requestId" {
				name = v[0]
			}
		}
		if md, ok := r.Body["metadata"].(map[string]any); ok && name == "" {
			name, _ = md["name"].(string) // Knative (Cloud Run v1)
		}
		if name == "" {
			return 200, f.operation(api, r.Body)
		}
		child := key + "/" + name
		if _, ok := f.res[child]; ok {
			return 409, fakeError(409, "ALREADY_EXISTS", path+"/"+name+" already exists")
		}
		res := map[string]any{}
		for k, v := range r.Body {
			res[k] = v
		}
		f.complete(api, path+"/"+name, res)
		f.res[child] = res
		return 200, f.operation(api, res)
	}
	return 405, fakeError(405, "METHOD_NOT_ALLOWED", r.Method)
}

// operation is a finished long-running operation, or for Knative the
// resource itself.
func (f *gcloudFake) operation(api string, res map[string]any) any {
	if api == "run" && res != nil {
		if _, ok := res["apiVersion"]; ok {
			return res
		}
	}
	f.ops++
	name := fmt.Sprintf("operations/op-%d", f.ops)
	op := map[string]any{"name": "projects/p/locations/l/" + name, "done": true}
	if res != nil {
		op["response"] = res
	}
	f.opsByName[name] = op
	return op
}

// storage answers the Cloud Storage JSON API's bucket creation and the
// multipart upload of the source archive. gcloud compares the object's
// checksum with its local file, so the answer carries the real ones.
func (f *gcloudFake) storage(r fakeRequest, key string) (int, any, bool) {
	switch {
	case r.Method == http.MethodGet && strings.HasSuffix(r.Path, "/storage/v1/b"): // list
		var items []any
		for k, v := range f.res {
			if strings.HasPrefix(k, key+"/") && !strings.Contains(strings.TrimPrefix(k, key+"/"), "/") {
				items = append(items, v)
			}
		}
		return 200, map[string]any{"kind": "storage#buckets", "items": items}, true
	case r.Method == http.MethodPost && strings.HasSuffix(r.Path, "/storage/v1/b"):
		name, _ := r.Body["name"].(string)
		res := map[string]any{"kind": "storage#bucket", "id": name}
		for k, v := range r.Body {
			res[k] = v
		}
		f.res[key+"/"+name] = res
		return 200, res, true
	case r.Method == http.MethodPost && strings.HasPrefix(r.Path, "/upload/storage/v1/b/"):
		bucket := strings.Split(strings.TrimPrefix(r.Path, "/upload/storage/v1/b/"), "/")[0]
		data := r.Raw
		// apitools writes boundary='===…==' (Python's email package),
		// which mime.ParseMediaType refuses.
		if _, b, ok := strings.Cut(r.ContentType, "boundary="); ok && strings.HasPrefix(r.ContentType, "multipart/") {
			mr := multipart.NewReader(bytes.NewReader(r.Raw), strings.Trim(b, `'"`))
			for i := 0; ; i++ {
				part, err := mr.NextPart()
				if err != nil {
					break
				}
				b, _ := io.ReadAll(part)
				if i == 1 {
					data = b
				}
			}
		}
		md5sum := md5.Sum(data)
		crc := make([]byte, 4)
		binary.BigEndian.PutUint32(crc, crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli)))
		name := r.Query.Get("name")
		obj := map[string]any{
			"kind": "storage#object", "bucket": bucket, "name": name, "size": fmt.Sprint(len(data)),
			"md5Hash": base64.StdEncoding.EncodeToString(md5sum[:]), "crc32c": base64.StdEncoding.EncodeToString(crc),
			"generation": "1", "metageneration": "1", "contentType": "application/zip",
		}
		f.res["storage/storage/v1/b/"+bucket+"/o/"+name] = obj
		return 200, obj, true
	}
	return 0, nil, false
}

// submitBuild answers Cloud Run's builds:submit, which `run deploy --source`
// calls with the uploaded archive, as a build that succeeded at once: the
// operation it returns, and the Cloud Build operation gcloud then polls.
func (f *gcloudFake) submitBuild(r fakeRequest, path string) map[string]any {
	f.ops++
	parent := strings.TrimSuffix(strings.TrimPrefix(path, "/v2/"), "/builds") // projects/P/locations/R
	project := strings.Split(parent, "/")[1]
	id := fmt.Sprintf("build-%d", f.ops)
	build := map[string]any{
		"@type": "type.googleapis.com/google.devtools.cloudbuild.v1.Build",
		"id":    id, "name": parent + "/builds/" + id, "projectId": project, "status": "SUCCESS",
		"logUrl":  "https://console.cloud.google.com/cloud-build/builds/" + id,
		"results": map[string]any{"images": []any{map[string]any{"name": r.Body["imageUri"], "digest": "sha256:" + strings.Repeat("ab", 32)}}},
	}
	f.opsByName["operations/"+id] = map[string]any{"name": parent + "/operations/" + id, "done": true, "response": build}
	return map[string]any{
		"buildOperation": map[string]any{
			"name": parent + "/operations/" + id,
			"metadata": map[string]any{
				"@type": "type.googleapis.com/google.devtools.cloudbuild.v1.BuildOperationMetadata",
				"build": map[string]any{"id": id, "name": parent + "/builds/" + id, "projectId": project, "logUrl": build["logUrl"]},
			},
		},
		"baseImageUri": "us-central1-docker.pkg.dev/serverless-runtimes/google-22/runtimes/go126",
	}
}

// prerequisite answers for what DEPLOY.md sets up before the pipeline
// runs: the enabled APIs and the service accounts.
func (f *gcloudFake) prerequisite(api, path string) map[string]any {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	switch {
	case api == "serviceusage" && len(parts) >= 2 && parts[len(parts)-2] == "services":
		return map[string]any{"name": strings.Trim(path, "/")[3:], "state": "ENABLED"}
	case api == "iam" && len(parts) >= 2 && parts[len(parts)-2] == "serviceAccounts":
		email := parts[len(parts)-1]
		return map[string]any{"name": strings.Trim(path, "/")[3:], "email": email}
	}
	return nil
}

// complete fills in what a real server computes for a stored resource.
func (f *gcloudFake) complete(api, path string, res map[string]any) {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	last := parts[len(parts)-1]
	if _, ok := res["name"]; !ok {
		if i := strings.Index(path, "projects/"); i >= 0 {
			res["name"] = path[i:]
		}
	}
	switch {
	case api == "run":
		if md, ok := res["metadata"].(map[string]any); ok { // Knative service
			gen := 1.0
			if g, ok := md["generation"].(float64); ok {
				gen = g + 1
			}
			md["generation"] = gen
			res["status"] = map[string]any{
				"observedGeneration":        gen,
				"latestCreatedRevisionName": last + "-00001",
				"latestReadyRevisionName":   last + "-00001",
				"url":                       "https://" + last + "-abc123-uc.a.run.app",
				"address":                   map[string]any{"url": "https://" + last + "-abc123-uc.a.run.app"},
				"conditions": []any{
					map[string]any{"type": "Ready", "status": "True"},
					map[string]any{"type": "ConfigurationsReady", "status": "True"},
					map[string]any{"type": "RoutesReady", "status": "True"},
				},
			}
		} else {
			res["uri"] = "https://" + last + "-abc123-uc.a.run.app"
			res["terminalCondition"] = map[string]any{"type": "Ready", "state": "CONDITION_SUCCEEDED"}
			res["latestReadyRevision"] = path + "/revisions/" + last + "-00001"
			res["latestCreatedRevision"] = path + "/revisions/" + last + "-00001"
		}
	case api == "eventarc" && strings.Contains(path, "/triggers/"):
		tr, _ := res["transport"].(map[string]any)
		if tr == nil {
			tr = map[string]any{}
			res["transport"] = tr
		}
		ps, _ := tr["pubsub"].(map[string]any)
		if ps == nil {
			ps = map[string]any{}
			tr["pubsub"] = ps
		}
		if _, ok := ps["subscription"]; !ok {
			project := parts[2]
			ps["subscription"] = "projects/" + project + "/subscriptions/eventarc-us-central1-" + last + "-sub-123"
			f.res["pubsub/v1/"+ps["subscription"].(string)] = map[string]any{"name": ps["subscription"], "topic": ps["topic"]}
		}
	}
}

// gcloudEnv runs gcloud against the fake: no credentials, every API at
// http://<api>.fake/ through the fake as a proxy, a config of its own.
func (f *gcloudFake) gcloudEnv(t testing.TB, project string) []string {
	t.Helper()
	var env []string
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, "CLOUDSDK_") || strings.HasSuffix(strings.ToLower(name), "_proxy") {
			continue
		}
		env = append(env, kv)
	}
	u, _ := url.Parse(f.srv.URL)
	env = append(env,
		"CLOUDSDK_CONFIG="+t.TempDir(),
		"CLOUDSDK_CORE_PROJECT="+project,
		"CLOUDSDK_AUTH_DISABLE_CREDENTIALS=true",
		"CLOUDSDK_CORE_DISABLE_PROMPTS=1",
		"CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK=true",
		"CLOUDSDK_CORE_DISABLE_USAGE_REPORTING=true",
		"CLOUDSDK_PROXY_TYPE=http",
		"CLOUDSDK_PROXY_ADDRESS="+u.Hostname(),
		"CLOUDSDK_PROXY_PORT="+u.Port(),
	)
	for _, api := range gcloudAPIs {
		env = append(env, "CLOUDSDK_API_ENDPOINT_OVERRIDES_"+strings.ToUpper(api)+"=http://"+api+".fake/")
	}
	return env
}

// run runs a command (gcloud, or bash for a script step) with the fake's
// environment in dir and returns its combined output.
func (f *gcloudFake) run(t testing.TB, env []string, dir string, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env, cmd.Dir = env, dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// fakeDump lists requests for a failure message.
func fakeDump(reqs []fakeRequest) string {
	var b strings.Builder
	for _, r := range reqs {
		fmt.Fprintf(&b, "  %s\n", r)
		if len(r.Raw) > 0 && len(r.Raw) < 4000 {
			fmt.Fprintf(&b, "    %s\n", r.Raw)
		}
	}
	return b.String()
}

func sortedKeys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
