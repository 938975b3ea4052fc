package function

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime/debug"
	"time"

	"example.com/pscmessages/cmd/logging"
	"example.com/pscmessages/cmd/telemetry"
	"example.com/pscmessages/store"
)

// Service is the function on a configuration of its own, as a local runner
// serves it: its own pool, opened on first use, and its own logger. The
// deployed entry points (Messages, IngestPubSub) are the process's service
// on the environment instead.
type Service struct {
	svc *service
	cfg settings
}

// New returns the function on cfg (from ConfigFromEnv), logging to logTo.
func New(cfg Config, logTo io.Writer) *Service {
	load := func() (settings, error) { return cfg.s, nil }
	getenv := cfg.s.getenv
	if getenv == nil { // the zero Config, not from ConfigFromEnv: no database
		getenv = func(string) string { return "" }
		load = func() (settings, error) { return settings{}, store.ErrNotConfigured }
	}
	svc := buildService(load, logging.New(logTo, cfg.s.log), getenv)
	svc.tel = tel
	return &Service{svc: svc, cfg: cfg.s}
}

// Check stops a runner at start on what would fail every request: files
// the configuration names that cannot be read, or an OpenTelemetry setup
// that failed.
func (f *Service) Check() error {
	if telErr != nil {
		return telErr
	}
	return f.cfg.db.Check()
}

// Close closes the pool, letting pending writes finish, then flushes the
// spans and metrics still buffered.
func (f *Service) Close() {
	f.svc.Close()
	if err := tel.shutdown(); err != nil {
		f.svc.log.Warn("telemetry not flushed", "error", logging.OneLine(err.Error()))
	}
}

// Handler serves the functions the way functions-framework-go
// v1.9.2 does (funcframework.StartHostPort), for a local runner that needs
// its own http.Server: the framework builds its server inside StartHostPort
// and exposes neither the handler nor a way to shut it down, so a runner
// that wants read/idle timeouts and a graceful shutdown cannot use it.
//
// The routing is the framework's: with target "" each function answers at
// its own path (/Messages, /IngestPubSub) and Messages also at / (the
// tutorial's contract); with a target, that function answers at every path.
// Each call is wrapped as the framework wraps an HTTP function: a panic is
// answered 500 with X-Google-Status: crash, and CLOUD_RUN_TIMEOUT_SECONDS,
// when set, bounds the request's context.
func (f *Service) Handler(target string) (http.Handler, error) {
	telemetry.RunnerOwnsSignals()
	messages := tel.instrument(http.HandlerFunc(f.svc.ServeHTTP), messagesRoute)
	events := tel.instrument(http.HandlerFunc(f.svc.serveEvent), deliveryRoute)
	fns := map[string]http.Handler{"Messages": messages, "IngestPubSub": events}
	timeout := f.cfg.timeout
	if err := CheckTarget(target); err != nil {
		return nil, err
	}
	if target != "" {
		return frameworkWrap(fns[target].ServeHTTP, timeout), nil
	}
	mux := http.NewServeMux()
	mux.Handle("/", frameworkWrap(messages.ServeHTTP, timeout))
	for name, fn := range fns {
		mux.Handle("/"+name, frameworkWrap(fn.ServeHTTP, timeout))
	}
	return mux, nil
}

// CheckTarget reports a FUNCTION_TARGET that names no function; "" serves
// them all.
func CheckTarget(target string) error {
	switch target {
	case "", "Messages", "IngestPubSub":
		return nil
	}
	return fmt.Errorf("FUNCTION_TARGET=%s: no such function; the functions are Messages and IngestPubSub", target)
}

// frameworkWrap does what funcframework's wrapHTTPFunction does around a
// function, minus its per-request trace ids (used only by its log writer,
// which this package does not use).
func frameworkWrap(fn http.HandlerFunc, timeout time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if timeout != 0 {
			ctx, cancel := context.WithTimeout(r.Context(), timeout)
			defer cancel()
			r = r.WithContext(ctx)
		}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				const msg = "A panic occurred during user function execution. Please see logs for more details."
				fmt.Fprintf(os.Stderr, "%s\npanic message: %v\nstack trace: %s\n", msg, p, debug.Stack())
				w.Header().Set("X-Google-Status", "crash")
				w.WriteHeader(http.StatusInternalServerError)
				fmt.Fprintln(w, msg)
			}
		}()
		fn(w, r)
	})
}
