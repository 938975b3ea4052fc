// Package metadatatest runs a fake GCE metadata server on 127.0.0.1 so that
// tests exercise the unchanged production credential path:
//
//	google.DefaultTokenSource(ctx, "https://www.googleapis.com/auth/sqlservice.login")
//
// from golang.org/x/oauth2/google (and cloud.google.com/go/auth's
// credentials.DetectDefault, which follows the same path), plus
// cloud.google.com/go/compute/metadata lookups of the service-account email
// and the project id. Nothing in production code needs a test hook: the
// metadata client sends every request to $GCE_METADATA_HOST when that
// variable is set, so pointing it at [Server.Host] is enough.
//
// # What a test must set, and why
//
// Application Default Credentials are searched in this order (x/oauth2
// v0.38.0 google.FindDefaultCredentialsWithParams, and cloud.google.com/go/auth
// credentials.DetectDefault):
//
//  1. $GOOGLE_APPLICATION_CREDENTIALS, if non-empty: the named JSON file is
//     used and the metadata server is never consulted.
//  2. The gcloud well-known file
//     $HOME/.config/gcloud/application_default_credentials.json
//     (%APPDATA%\gcloud\application_default_credentials.json on Windows).
//     Note that these libraries derive the path from $HOME / $APPDATA only;
//     they do NOT consult $CLOUDSDK_CONFIG (only the gcloud CLI and the
//     deprecated google.NewSDKConfig do).
//  3. The metadata server, if metadata.OnGCE() is true. OnGCE returns true
//     without any network probe when $GCE_METADATA_HOST is non-empty, and the
//     answer is memoised for the life of the process.
//
// So, in TestMain, before anything can call OnGCE or look for credentials:
//
//	os.Unsetenv("GOOGLE_APPLICATION_CREDENTIALS")
//	os.Setenv("HOME", emptyTempDir)           // hides a developer's gcloud ADC file
//	os.Setenv("APPDATA", emptyTempDir)        // same, on Windows
//	os.Setenv("CLOUDSDK_CONFIG", emptyTempDir) // belt and braces for gcloud-based code
//	os.Setenv("GCE_METADATA_HOST", srv.Host())
//
// Leave GOOGLE_AUTH_TRUST_BOUNDARY_ENABLED unset: when enabled,
// cloud.google.com/go/auth makes extra requests this fake does not serve.
//
// TestMain (rather than t.Setenv in a test) is required because OnGCE is
// memoised per process: if any code asks before GCE_METADATA_HOST is set, it
// will probe 169.254.169.254, conclude "not on GCE" and never change its
// mind. The host itself is re-read on every request, so a test may point
// GCE_METADATA_HOST at a different fake later with t.Setenv.
//
// # Requests the libraries make
//
// All are GET http://$GCE_METADATA_HOST/computeMetadata/v1/<suffix> with the
// header "Metadata-Flavor: Google" (and User-Agent gcloud-golang/0.1):
//
//   - instance/service-accounts/default/token?scopes=<comma-separated scopes>
//     (token source; the response is JSON
//     {"access_token":"…","expires_in":<seconds>,"token_type":"Bearer"};
//     both libraries reject a token with expires_in == 0 or an empty
//     access_token)
//   - project/project-id (FindDefaultCredentials always, eagerly;
//     metadata.ProjectIDWithContext, whose value is cached per process)
//   - instance/service-accounts/default/email (metadata.EmailWithContext)
//   - universe/universe-domain (only from Credentials.GetUniverseDomain; a
//     404 would mean "googleapis.com")
//
// The probe of http://169.254.169.254/ (without Metadata-Flavor; it checks
// the response header) and the DNS lookup of metadata.google.internal happen
// only when GCE_METADATA_HOST is unset, so they never reach this server; "/"
// is served anyway for completeness.
//
// The metadata client retries 5xx answers and connection errors up to 5
// times with jittered exponential backoff (100 ms doubling, about 3 s at
// worst) and the x/oauth2 token source passes no context, so a token fetch
// made while [Server.SetFailing] is on, or while OnToken fails, takes up to
// ~3 s before the error surfaces, and OnToken is called once per attempt.
package metadatatest

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

const (
	// DefaultEmail is the service-account email served when Options.Email is empty.
	DefaultEmail = "messages-fn@test-project.iam.gserviceaccount.com"
	// DefaultProjectID is the project id served when Options.ProjectID is empty.
	DefaultProjectID = "test-project"
	// DefaultTokenTTL is the token lifetime used when Options.TokenTTL is not positive.
	DefaultTokenTTL = time.Hour
	// UniverseDomain is what universe/universe-domain answers, as on real GCE.
	UniverseDomain = "googleapis.com"

	// TokenPrefix starts every issued token, so a test (or a log reader) can
	// tell a fake token from a real one at a glance. 32 random hex
	// characters follow it.
	TokenPrefix = "ya29.fake-"

	metadataPrefix = "/computeMetadata/v1/"
)

// Options configures a fake metadata server. The zero value is usable.
type Options struct {
	// Email is the default service account's email, returned by
	// instance/service-accounts/default/email. The email is also accepted in
	// place of "default" in service-account paths, as on real GCE.
	// Empty means DefaultEmail.
	Email string
	// ProjectID is returned by project/project-id. Empty means
	// DefaultProjectID.
	ProjectID string
	// TokenTTL is the lifetime reported as expires_in for each issued token
	// (rounded up to whole seconds, minimum 1). Zero or negative means
	// DefaultTokenTTL. Remember that x/oauth2 treats a token as expired 10 s
	// before its expiry, so a TTL of 11 s gives a token usable for ~1 s.
	TokenTTL time.Duration
	// OnToken, if set, is called with every newly issued token before it is
	// returned; a non-nil error makes the token request fail with 500 (and
	// the token is not counted as issued). Tests use it to set a database
	// role's password to the token, so that an IAM-authenticated login with
	// the fetched token succeeds. Calls are serialised, in issue order, so the
	// last successful call always corresponds to LastToken. OnToken may call
	// the Server's accessor methods.
	OnToken func(token string) error
}

// Server is a running fake metadata server. Its methods are safe for
// concurrent use.
type Server struct {
	email     string
	projectID string
	onToken   func(string) error

	ln        net.Listener
	srv       *http.Server
	done      chan struct{} // closed when Serve returns
	closeOnce sync.Once

	// issueMu serialises token issuance (including OnToken) so OnToken sees
	// tokens in the same order LastToken/TokenFetches record them. It is
	// separate from mu so accessors never wait for a slow OnToken.
	issueMu sync.Mutex

	mu        sync.Mutex // guards the fields below
	ttl       time.Duration
	padTo     int // SetTokenPadding
	failing   bool
	fetches   int
	lastToken string
	scopes    []string
}

// Start starts a fake metadata server listening on 127.0.0.1 on a free port.
// Set GCE_METADATA_HOST to [Server.Host] and call [Server.Close] when done.
func Start(opts Options) (*Server, error) {
	s := &Server{
		email:     opts.Email,
		projectID: opts.ProjectID,
		onToken:   opts.OnToken,
		ttl:       opts.TokenTTL,
		done:      make(chan struct{}),
	}
	if s.email == "" {
		s.email = DefaultEmail
	}
	if s.projectID == "" {
		s.projectID = DefaultProjectID
	}
	if s.ttl <= 0 {
		s.ttl = DefaultTokenTTL
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("metadatatest: listen: %w", err)
	}
	s.ln = ln
	s.srv = &http.Server{
		Handler:           http.HandlerFunc(s.serveHTTP),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln) // returns http.ErrServerClosed after Close
	}()
	return s, nil
}

// Host returns "127.0.0.1:PORT", the value for GCE_METADATA_HOST.
func (s *Server) Host() string { return s.ln.Addr().String() }

// Close stops the server, closing open connections, and waits for it to
// finish. It is safe to call more than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		_ = s.srv.Close()
		<-s.done
	})
}

// TokenFetches reports how many tokens have been issued (successful token
// responses). Failed requests (SetFailing, OnToken errors) are not counted.
func (s *Server) TokenFetches() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fetches
}

// LastToken returns the most recently issued token, or "" if none.
func (s *Server) LastToken() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastToken
}

// Scopes returns the scopes (the comma-separated "scopes" query parameter,
// split) of the most recent token request, whether or not it succeeded;
// nil if that request had no scopes or there was none yet.
func (s *Server) Scopes() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.scopes == nil {
		return nil
	}
	return append([]string(nil), s.scopes...)
}

// SetTokenTTL changes the lifetime of tokens issued from now on. Tokens
// already handed out keep their expiry. A non-positive d yields the minimum
// expires_in of 1 s.
func (s *Server) SetTokenTTL(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ttl = d
}

// SetTokenPadding makes the token endpoint pad each access token it issues
// from now on with trailing "." characters up to n characters in all, as some
// Google token endpoints have done; 0 turns padding off. OnToken and
// LastToken see the token without its padding: that is the credential a
// client must present.
func (s *Server) SetTokenPadding(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.padTo = n
}

// SetFailing simulates a metadata outage: while true, the token endpoint
// answers 503 (other paths keep working). Note the client retries 5xx for up
// to ~3 s before giving up.
func (s *Server) SetFailing(failing bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failing = failing
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	// Every real metadata response carries this header; the client's GCE
	// probe of "/" relies on it.
	w.Header().Set("Metadata-Flavor", "Google")
	w.Header().Set("Server", "Metadata Server for VM")

	if r.URL.Path == "/" {
		// The real server lists the API root without requiring the flavor
		// header (the OnGCE probe does not send it).
		writeText(w, "computeMetadata/\n")
		return
	}
	if !strings.HasPrefix(r.URL.Path, metadataPrefix) {
		http.NotFound(w, r)
		return
	}
	// Like the real server: without the header, the request may be a
	// browser or SSRF, so it is refused.
	if r.Header.Get("Metadata-Flavor") != "Google" {
		http.Error(w, "Missing Metadata-Flavor:Google header.", http.StatusForbidden)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "Method not allowed.", http.StatusMethodNotAllowed)
		return
	}

	suffix := strings.TrimPrefix(r.URL.Path, metadataPrefix)
	switch suffix {
	case "project/project-id":
		writeText(w, s.projectID)
		return
	case "universe/universe-domain":
		writeText(w, UniverseDomain)
		return
	}
	if rest, ok := strings.CutPrefix(suffix, "instance/service-accounts/"); ok {
		acct, leaf, ok := strings.Cut(rest, "/")
		if ok && (acct == "default" || acct == s.email) {
			switch leaf {
			case "email":
				writeText(w, s.email)
				return
			case "token":
				s.serveToken(w, r)
				return
			}
		}
	}
	http.NotFound(w, r)
}

// tokenResponse is the metadata server's token JSON, as decoded by
// x/oauth2/google's computeSource and cloud.google.com/go/auth.
type tokenResponse struct {
	AccessToken string `json:"access_token"`
	ExpiresIn   int64  `json:"expires_in"`
	TokenType   string `json:"token_type"`
}

func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	var scopes []string
	if v := r.URL.Query().Get("scopes"); v != "" {
		scopes = strings.Split(v, ",")
	}

	s.issueMu.Lock()
	defer s.issueMu.Unlock()

	s.mu.Lock()
	s.scopes = scopes
	failing, ttl, padTo := s.failing, s.ttl, s.padTo
	s.mu.Unlock()

	if failing {
		http.Error(w, "metadatatest: simulated metadata outage", http.StatusServiceUnavailable)
		return
	}
	tok, err := newToken()
	if err != nil {
		http.Error(w, "metadatatest: "+err.Error(), http.StatusInternalServerError)
		return
	}
	if s.onToken != nil {
		if err := s.onToken(tok); err != nil {
			http.Error(w, "metadatatest: OnToken: "+err.Error(), http.StatusInternalServerError)
			return
		}
	}

	s.mu.Lock()
	s.fetches++
	s.lastToken = tok
	s.mu.Unlock()

	sent := tok
	if n := padTo - len(tok); n > 0 {
		sent += strings.Repeat(".", n)
	}
	body, err := json.Marshal(tokenResponse{
		AccessToken: sent,
		ExpiresIn:   expiresIn(ttl),
		TokenType:   "Bearer",
	})
	if err != nil { // cannot happen for this struct
		http.Error(w, "metadatatest: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(body)
}

// expiresIn converts a TTL to whole seconds, rounding up, minimum 1 (0 would
// make the client libraries reject the token as incomplete).
func expiresIn(ttl time.Duration) int64 {
	secs := int64((ttl + time.Second - 1) / time.Second)
	if ttl <= 0 || secs < 1 {
		return 1
	}
	return secs
}

func newToken() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", errors.New("generating token: " + err.Error())
	}
	return TokenPrefix + hex.EncodeToString(b[:]), nil
}

func writeText(w http.ResponseWriter, v string) {
	w.Header().Set("Content-Type", "application/text")
	_, _ = w.Write([]byte(v))
}
