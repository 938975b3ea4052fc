package function

import (
	"context"
	"net/http"
	"strings"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"example.com/pscmessages/cmd/telemetry"
)

// The function's telemetry: the process's SDK, set up by package telemetry
// from the OTEL_* variables, with the function's own instruments on it
// (deliveries by outcome, the body memory budget) and the route templates
// its server spans and request metric are labelled with.

// setupTelemetry sets up the process's OpenTelemetry SDK as the environment
// asks (see package telemetry; sdk nil: the one the build registered) and
// the function's own instruments on it; nil when telemetry is off.
func setupTelemetry(getenv func(string) string, sdk telemetry.SDK) (*instruments, error) {
	t, err := telemetry.Setup(getenv, sdk)
	if t == nil || err != nil {
		return nil, err
	}
	return newInstruments(t)
}

// instruments is the process's telemetry and the function's own
// instruments on it; nil when telemetry is off, and then every method does
// nothing.
type instruments struct {
	*telemetry.Telemetry
	deliveries metric.Int64Counter

	mu       sync.RWMutex
	outcomes map[[2]string]metric.AddOption // by outcome and reason
}

// deliveryAttrs is the attribute set of a delivery's outcome and
// dead-letter reason, made once: both come from fixed lists.
func (i *instruments) deliveryAttrs(outcome, reason string) metric.AddOption {
	key := [2]string{outcome, reason}
	i.mu.RLock()
	o, ok := i.outcomes[key]
	i.mu.RUnlock()
	if ok {
		return o
	}
	kvs := []attribute.KeyValue{attribute.String("outcome", outcome)}
	if reason != "" {
		kvs = append(kvs, attribute.String("reason", reason))
	}
	o = metric.WithAttributeSet(attribute.NewSet(kvs...))
	i.mu.Lock()
	i.outcomes[key] = o
	i.mu.Unlock()
	return o
}

func newInstruments(t *telemetry.Telemetry) (*instruments, error) {
	ms := instruments{Telemetry: t, outcomes: map[[2]string]metric.AddOption{}}
	m := t.Meter
	var err error
	ms.deliveries, err = m.Int64Counter("pscmessages.deliveries",
		metric.WithDescription("Pub/Sub deliveries by outcome: stored, duplicate, dead_lettered (with its reason), redelivered (answered with a transient failure, so Pub/Sub delivers it again)"),
		metric.WithUnit("{delivery}"))
	if err != nil {
		return nil, err
	}
	_, err = m.Int64ObservableGauge("pscmessages.memory_budget.in_use",
		metric.WithDescription("Bytes of the request bodies' memory budget (BODY_MEMORY_BYTES) held by bodies being read and decoded: POST, PUT, PATCH and Pub/Sub deliveries"),
		metric.WithUnit("By"),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(budgetInUse.Load())
			return nil
		}))
	if err != nil {
		return nil, err
	}
	_, err = m.Int64ObservableGauge("pscmessages.memory_budget.limit",
		metric.WithDescription("Bytes of the request bodies' memory budget (BODY_MEMORY_BYTES)"),
		metric.WithUnit("By"),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(budgetLimit.Load())
			return nil
		}))
	return &ms, err
}

// instrument wraps one entry point in its server span and request-duration
// metric (see telemetry.Instrument); off, h is returned as it is.
func (i *instruments) instrument(h http.Handler, route func(*http.Request) string) http.Handler {
	if i == nil {
		return h
	}
	return i.Instrument(h, route)
}

// shutdown flushes what is buffered and stops exporting.
func (i *instruments) shutdown() error {
	if i == nil {
		return nil
	}
	return i.Shutdown()
}

// flushOnSIGTERM arms the flush on Cloud Run's SIGTERM (see
// telemetry.FlushOnSIGTERM).
func (i *instruments) flushOnSIGTERM(getenv func(string) string) {
	if i != nil {
		i.FlushOnSIGTERM(getenv)
	}
}

// messagesRoute is the route template of a Messages request: ids are not
// labels (unbounded), and neither is any other path a client makes up.
func messagesRoute(r *http.Request) string {
	switch p := r.URL.Path; {
	case p == "/" || p == "" || p == "/Messages":
		return "/"
	case p == "/messages" || p == "/messages/":
		return "/messages"
	case strings.HasPrefix(p, "/messages/"):
		return "/messages/{id}"
	}
	return "unmatched"
}

// deliveryRoute is the route of every IngestPubSub delivery: its path may
// name a topic or anything a pusher chose, which is no label.
func deliveryRoute(*http.Request) string { return "/IngestPubSub" }
