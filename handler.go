package function

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"runtime/debug"
	"strconv"
	"time"
)

// Handler serves the registered functions the way functions-framework-go
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
func Handler(target string) (http.Handler, error) {
	runnerOwnsSignals.Store(true)
	fns := map[string]http.HandlerFunc{"Messages": Messages, "IngestPubSub": serveEvent}
	// The environment does not change in a process: read the timeout once.
	var timeout time.Duration
	if secs, err := strconv.Atoi(os.Getenv("CLOUD_RUN_TIMEOUT_SECONDS")); err == nil {
		timeout = time.Duration(secs) * time.Second
	}
	if target != "" {
		fn, ok := fns[target]
		if !ok {
			return nil, fmt.Errorf("FUNCTION_TARGET=%s: no such function; the functions are Messages and IngestPubSub", target)
		}
		return frameworkWrap(fn, timeout), nil
	}
	mux := http.NewServeMux()
	mux.Handle("/", frameworkWrap(Messages, timeout))
	for name, fn := range fns {
		mux.Handle("/"+name, frameworkWrap(fn, timeout))
	}
	return mux, nil
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
