package metadatatest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/compute/metadata"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"
)

const sqlLoginScope = "https://www.googleapis.com/auth/sqlservice.login"

var (
	// srv is the fake that GCE_METADATA_HOST points at for the whole process.
	srv *Server

	onTokenMu   sync.Mutex
	onTokenSeen []string // every token OnToken was called with, in order
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	// Isolation: make sure ADC cannot be satisfied by a credentials file, so
	// the metadata path is the one taken. This must all happen before any
	// code calls metadata.OnGCE (memoised per process).
	home, err := os.MkdirTemp("", "metadatatest-home-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(home)
	os.Unsetenv("GOOGLE_APPLICATION_CREDENTIALS")
	os.Unsetenv("GOOGLE_AUTH_TRUST_BOUNDARY_ENABLED")
	os.Setenv("HOME", home)
	os.Setenv("APPDATA", home)
	os.Setenv("CLOUDSDK_CONFIG", home)

	srv, err = Start(Options{
		OnToken: func(tok string) error {
			onTokenMu.Lock()
			defer onTokenMu.Unlock()
			onTokenSeen = append(onTokenSeen, tok)
			return nil
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer srv.Close()
	os.Setenv("GCE_METADATA_HOST", srv.Host())

	return m.Run()
}

func seenTokens() []string {
	onTokenMu.Lock()
	defer onTokenMu.Unlock()
	return slices.Clone(onTokenSeen)
}

func TestHost(t *testing.T) {
	if h := srv.Host(); !strings.HasPrefix(h, "127.0.0.1:") || h == "127.0.0.1:0" {
		t.Fatalf("Host() = %q, want 127.0.0.1:PORT", h)
	}
}

// TestDefaultTokenSource runs the exact production call.
func TestDefaultTokenSource(t *testing.T) {
	ctx := context.Background()
	before := srv.TokenFetches()

	ts, err := google.DefaultTokenSource(ctx, sqlLoginScope)
	if err != nil {
		t.Fatalf("DefaultTokenSource: %v", err)
	}
	start := time.Now()
	tok, err := ts.Token()
	if err != nil {
		t.Fatalf("Token: %v", err)
	}
	if got := srv.TokenFetches(); got != before+1 {
		t.Errorf("TokenFetches = %d, want %d", got, before+1)
	}
	if tok.AccessToken != srv.LastToken() {
		t.Errorf("AccessToken = %q, want fake's LastToken %q", tok.AccessToken, srv.LastToken())
	}
	if !strings.HasPrefix(tok.AccessToken, TokenPrefix) || len(tok.AccessToken) != len(TokenPrefix)+32 {
		t.Errorf("AccessToken = %q, want %s + 32 hex chars", tok.AccessToken, TokenPrefix)
	}
	if tok.Type() != "Bearer" {
		t.Errorf("Type() = %q, want Bearer", tok.Type())
	}
	// Proves the compute-metadata source (not a credentials file) was used.
	if src := tok.Extra("oauth2.google.tokenSource"); src != "compute-metadata" {
		t.Errorf(`Extra("oauth2.google.tokenSource") = %v, want compute-metadata`, src)
	}
	if want := start.Add(DefaultTokenTTL); tok.Expiry.Before(want.Add(-5*time.Second)) || tok.Expiry.After(want.Add(5*time.Second)) {
		t.Errorf("Expiry = %v, want ≈ %v", tok.Expiry, want)
	}
	if got := srv.Scopes(); !slices.Equal(got, []string{sqlLoginScope}) {
		t.Errorf("Scopes() = %q, want [%q]", got, sqlLoginScope)
	}
}

func TestMultipleScopes(t *testing.T) {
	scopes := []string{sqlLoginScope, "https://www.googleapis.com/auth/cloud-platform"}
	ts, err := google.DefaultTokenSource(context.Background(), scopes...)
	if err != nil {
		t.Fatalf("DefaultTokenSource: %v", err)
	}
	if _, err := ts.Token(); err != nil {
		t.Fatalf("Token: %v", err)
	}
	if got := srv.Scopes(); !slices.Equal(got, scopes) {
		t.Errorf("Scopes() = %q, want %q", got, scopes)
	}
}

func TestFindDefaultCredentials(t *testing.T) {
	creds, err := google.FindDefaultCredentials(context.Background(), sqlLoginScope)
	if err != nil {
		t.Fatalf("FindDefaultCredentials: %v", err)
	}
	if creds.JSON != nil {
		t.Errorf("credentials came from a JSON file, want metadata server: %s", creds.JSON)
	}
	if creds.ProjectID != DefaultProjectID {
		t.Errorf("ProjectID = %q, want %q", creds.ProjectID, DefaultProjectID)
	}
	ud, err := creds.GetUniverseDomain()
	if err != nil || ud != UniverseDomain {
		t.Errorf("GetUniverseDomain() = %q, %v; want %q", ud, err, UniverseDomain)
	}
}

func TestEmailAndProjectID(t *testing.T) {
	ctx := context.Background()
	for _, acct := range []string{"", "default", DefaultEmail} {
		email, err := metadata.EmailWithContext(ctx, acct)
		if err != nil || email != DefaultEmail {
			t.Errorf("EmailWithContext(%q) = %q, %v; want %q", acct, email, err, DefaultEmail)
		}
	}
	pid, err := metadata.ProjectIDWithContext(ctx)
	if err != nil || pid != DefaultProjectID {
		t.Errorf("ProjectIDWithContext = %q, %v; want %q", pid, err, DefaultProjectID)
	}
	if !metadata.OnGCEWithContext(ctx) {
		t.Error("OnGCE = false with GCE_METADATA_HOST set")
	}
}

// TestReuseAndRefresh: a valid token is reused; an expired one is refetched.
func TestReuseAndRefresh(t *testing.T) {
	// x/oauth2 treats a token as expired 10 s before Expiry, so 12 s leaves
	// a ~2 s reuse window.
	srv.SetTokenTTL(12 * time.Second)
	t.Cleanup(func() { srv.SetTokenTTL(DefaultTokenTTL) })

	base, err := google.DefaultTokenSource(context.Background(), sqlLoginScope)
	if err != nil {
		t.Fatalf("DefaultTokenSource: %v", err)
	}
	ts := oauth2.ReuseTokenSource(nil, base)
	before := srv.TokenFetches()

	t1, err := ts.Token()
	if err != nil {
		t.Fatalf("Token #1: %v", err)
	}
	t2, err := ts.Token()
	if err != nil {
		t.Fatalf("Token #2: %v", err)
	}
	if t2.AccessToken != t1.AccessToken {
		t.Errorf("valid token not reused: %q then %q", t1.AccessToken, t2.AccessToken)
	}
	if got := srv.TokenFetches(); got != before+1 {
		t.Errorf("TokenFetches after reuse = %d, want %d", got, before+1)
	}

	// Wait until x/oauth2 considers t1 expired.
	time.Sleep(time.Until(t1.Expiry.Add(-10*time.Second)) + 200*time.Millisecond)
	t3, err := ts.Token()
	if err != nil {
		t.Fatalf("Token #3: %v", err)
	}
	if t3.AccessToken == t1.AccessToken {
		t.Errorf("expired token reused: %q", t3.AccessToken)
	}
	if t3.AccessToken != srv.LastToken() {
		t.Errorf("refetched token %q, want fake's LastToken %q", t3.AccessToken, srv.LastToken())
	}
	if got := srv.TokenFetches(); got != before+2 {
		t.Errorf("TokenFetches after expiry = %d, want %d", got, before+2)
	}
}

func TestOnTokenSeesEveryToken(t *testing.T) {
	var got []string
	for range 3 {
		ts, err := google.DefaultTokenSource(context.Background(), sqlLoginScope)
		if err != nil {
			t.Fatalf("DefaultTokenSource: %v", err)
		}
		tok, err := ts.Token()
		if err != nil {
			t.Fatalf("Token: %v", err)
		}
		got = append(got, tok.AccessToken)
	}
	if got[0] == got[1] || got[1] == got[2] || got[0] == got[2] {
		t.Errorf("tokens not unique: %q", got)
	}
	seen := seenTokens()
	if len(seen) != srv.TokenFetches() {
		t.Errorf("OnToken called %d times, TokenFetches = %d", len(seen), srv.TokenFetches())
	}
	if len(seen) < 3 || !slices.Equal(seen[len(seen)-3:], got) {
		t.Errorf("OnToken saw %q, want suffix %q", seen, got)
	}
	if seen[len(seen)-1] != srv.LastToken() {
		t.Errorf("last OnToken %q != LastToken %q", seen[len(seen)-1], srv.LastToken())
	}
}

// TestSetFailing: the real library surfaces the outage as an error (after
// its 5xx retries), and recovers when the outage ends.
func TestSetFailing(t *testing.T) {
	srv.SetFailing(true)
	t.Cleanup(func() { srv.SetFailing(false) })
	before, last := srv.TokenFetches(), srv.LastToken()

	ts, err := google.DefaultTokenSource(context.Background(), sqlLoginScope)
	if err != nil {
		t.Fatalf("DefaultTokenSource: %v", err)
	}
	_, err = ts.Token()
	var merr *metadata.Error
	if !errors.As(err, &merr) || merr.Code != http.StatusServiceUnavailable {
		t.Fatalf("Token during outage: err = %v, want metadata.Error 503", err)
	}
	if srv.TokenFetches() != before || srv.LastToken() != last {
		t.Errorf("failed request changed TokenFetches/LastToken")
	}

	srv.SetFailing(false)
	tok, err := ts.Token()
	if err != nil {
		t.Fatalf("Token after outage: %v", err)
	}
	if tok.AccessToken != srv.LastToken() {
		t.Errorf("AccessToken = %q, want %q", tok.AccessToken, srv.LastToken())
	}
}

// get issues a raw request to s, with the flavor header when flavor is true.
func get(t *testing.T, s *Server, path string, flavor bool) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+s.Host()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if flavor {
		req.Header.Set("Metadata-Flavor", "Google")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, res.Header, string(body)
}

func TestHTTPBehaviour(t *testing.T) {
	s, err := Start(Options{Email: "sa@p.iam.gserviceaccount.com", ProjectID: "p"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	const tokenPath = "/computeMetadata/v1/instance/service-accounts/default/token"
	tests := []struct {
		path   string
		flavor bool
		code   int
		body   string // exact body if non-empty
	}{
		{"/", false, 200, "computeMetadata/\n"},
		{tokenPath, false, 403, ""},
		{"/computeMetadata/v1/project/project-id", false, 403, ""},
		{"/computeMetadata/v1/nope", false, 403, ""},
		{"/computeMetadata/v1/project/project-id", true, 200, "p"},
		{"/computeMetadata/v1/instance/service-accounts/default/email", true, 200, "sa@p.iam.gserviceaccount.com"},
		{"/computeMetadata/v1/instance/service-accounts/sa@p.iam.gserviceaccount.com/email", true, 200, "sa@p.iam.gserviceaccount.com"},
		{"/computeMetadata/v1/universe/universe-domain", true, 200, "googleapis.com"},
		{"/computeMetadata/v1/instance/service-accounts/other@x/token", true, 404, ""},
		{"/computeMetadata/v1/project/numeric-project-id", true, 404, ""},
		{"/computeMetadata/v1/", true, 404, ""},
		{"/elsewhere", true, 404, ""},
	}
	for _, tt := range tests {
		code, hdr, body := get(t, s, tt.path, tt.flavor)
		if code != tt.code || (tt.body != "" && body != tt.body) {
			t.Errorf("GET %s (flavor=%v) = %d %q, want %d %q", tt.path, tt.flavor, code, body, tt.code, tt.body)
		}
		if hdr.Get("Metadata-Flavor") != "Google" {
			t.Errorf("GET %s: response lacks Metadata-Flavor: Google", tt.path)
		}
	}
	if s.TokenFetches() != 0 || s.LastToken() != "" || s.Scopes() != nil {
		t.Errorf("refused requests issued tokens: fetches=%d last=%q scopes=%q", s.TokenFetches(), s.LastToken(), s.Scopes())
	}

	// Token JSON shape and expires_in rounding.
	for _, tc := range []struct {
		ttl  time.Duration
		want int64
	}{
		{time.Hour, 3600}, {11 * time.Second, 11}, {1500 * time.Millisecond, 2},
		{100 * time.Millisecond, 1}, {0, 1}, {-time.Second, 1},
	} {
		s.SetTokenTTL(tc.ttl)
		code, hdr, body := get(t, s, tokenPath+"?scopes=a%2Cb", true)
		if code != 200 {
			t.Fatalf("token: %d %s", code, body)
		}
		if ct := hdr.Get("Content-Type"); ct != "application/json" {
			t.Errorf("token Content-Type = %q", ct)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(body), &m); err != nil {
			t.Fatalf("token body %q: %v", body, err)
		}
		if len(m) != 3 || m["access_token"] != s.LastToken() || m["token_type"] != "Bearer" || m["expires_in"] != float64(tc.want) {
			t.Errorf("TTL %v: token body %s, want access_token=%q expires_in=%d token_type=Bearer", tc.ttl, body, s.LastToken(), tc.want)
		}
	}
	if got := s.Scopes(); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("Scopes() = %q, want [a b]", got)
	}
	get(t, s, tokenPath, true)
	if got := s.Scopes(); got != nil {
		t.Errorf("Scopes() after unscoped request = %q, want nil", got)
	}

	s.SetFailing(true)
	if code, _, _ := get(t, s, tokenPath, true); code != http.StatusServiceUnavailable {
		t.Errorf("failing token: %d, want 503", code)
	}
	if code, _, _ := get(t, s, "/computeMetadata/v1/project/project-id", true); code != 200 {
		t.Errorf("failing: project-id %d, want 200 (only the token endpoint fails)", code)
	}
	s.SetFailing(false)

	req, _ := http.NewRequest(http.MethodPost, "http://"+s.Host()+tokenPath, nil)
	req.Header.Set("Metadata-Flavor", "Google")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST token: %d, want 405", res.StatusCode)
	}
}

func TestOnTokenError(t *testing.T) {
	var (
		mu    sync.Mutex
		calls []string
		fail  atomic.Bool
	)
	fail.Store(true)
	s, err := Start(Options{OnToken: func(tok string) error {
		mu.Lock()
		calls = append(calls, tok)
		mu.Unlock()
		if fail.Load() {
			return errors.New("db down")
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	const tokenPath = "/computeMetadata/v1/instance/service-accounts/default/token"
	code, _, body := get(t, s, tokenPath, true)
	if code != http.StatusInternalServerError || !strings.Contains(body, "db down") {
		t.Errorf("OnToken error: %d %q, want 500 mentioning the error", code, body)
	}
	if s.TokenFetches() != 0 || s.LastToken() != "" {
		t.Errorf("failed OnToken counted as issued: fetches=%d last=%q", s.TokenFetches(), s.LastToken())
	}
	fail.Store(false)
	code, _, body = get(t, s, tokenPath, true)
	mu.Lock()
	defer mu.Unlock()
	if code != 200 || len(calls) != 2 || calls[1] != s.LastToken() || calls[0] == calls[1] || s.TokenFetches() != 1 {
		t.Errorf("after recovery: %d %q calls=%q last=%q fetches=%d", code, body, calls, s.LastToken(), s.TokenFetches())
	}
}

func TestConcurrentFetches(t *testing.T) {
	s, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	const n = 20
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		toks = map[string]bool{}
	)
	for range n {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodGet, "http://"+s.Host()+"/computeMetadata/v1/instance/service-accounts/default/token?scopes=x", nil)
			req.Header.Set("Metadata-Flavor", "Google")
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer res.Body.Close()
			var tr tokenResponse
			if err := json.NewDecoder(res.Body).Decode(&tr); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			toks[tr.AccessToken] = true
			mu.Unlock()
			_ = s.LastToken()
			_ = s.Scopes()
			s.SetTokenTTL(time.Minute)
		})
	}
	wg.Wait()
	if len(toks) != n || s.TokenFetches() != n {
		t.Errorf("%d unique tokens, %d fetches; want %d each", len(toks), s.TokenFetches(), n)
	}
	if !toks[s.LastToken()] {
		t.Errorf("LastToken %q not among issued tokens", s.LastToken())
	}
}

func TestCloseIdempotent(t *testing.T) {
	s, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	host := s.Host()
	s.Close()
	s.Close()
	if _, err := http.Get("http://" + host + "/"); err == nil {
		t.Error("server still answering after Close")
	}
}
