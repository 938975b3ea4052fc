package function

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// A request whose caller decided not to sample it leaves nothing to export:
// no server span, and no batch or statement span under it.
func TestUnsampledRequestMakesNoSpans(t *testing.T) {
	tf := newTracedFixture(t, nil)
	if r := postContent(t, tf.messages.URL, "opens the pool"); r.status != 200 {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	tf.ended(t)
	tf.spans.Reset()
	r := do(t, "POST", tf.messages.URL+"/", `{"content":"not sampled"}`, map[string]string{
		"Content-Type": "application/json", "traceparent": "00-" + testTraceID + "-" + testParentID + "-00"})
	if r.status != 200 {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	for _, s := range tf.ended(t) {
		if s.SpanContext.TraceID().String() == testTraceID {
			t.Errorf("the unsampled request left span %q", s.Name)
		}
	}
}

// Requests that ride in one batch: the batch span is a child of one sampled
// request span and linked to every other, each sampled request span is
// linked to it, and an unsampled request is in none of it.
func TestBatchSpanLinksEveryRequestItServes(t *testing.T) {
	tf := newTracedFixture(t, nil)
	if r := postContent(t, tf.messages.URL, "opens the pool"); r.status != 200 {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	release := holdLock(t, tf.url, "messages")
	var wg sync.WaitGroup
	post := func(i int, flags string) {
		defer wg.Done()
		traceID := fmt.Sprintf("%032x", i+1)
		r := do(t, "POST", tf.messages.URL+"/", fmt.Sprintf(`{"content":"batched %d"}`, i), map[string]string{
			"Content-Type": "application/json", "traceparent": "00-" + traceID + "-" + testParentID + "-" + flags})
		if r.status != 200 {
			t.Errorf("POST %d: %d %s", i, r.status, r.body)
		}
	}
	// The first holds the writer at the lock; the others queue behind it and
	// then go in one batch.
	wg.Add(1)
	go post(0, "01")
	awaitLockWait(t, tf.url)
	for i := 1; i <= 4; i++ {
		wg.Add(1)
		go post(i, "01")
	}
	wg.Add(1)
	go post(5, "00") // unsampled
	time.Sleep(time.Second)
	tf.ended(t) // the warm-up's
	tf.spans.Reset()
	release()
	wg.Wait()

	spans := tf.ended(t)
	byID := map[string]tracetest.SpanStub{}
	for _, s := range spans {
		byID[s.SpanContext.SpanID().String()] = s
		if s.SpanContext.TraceID().String() == fmt.Sprintf("%032x", 6) {
			t.Errorf("the unsampled request's trace has span %q", s.Name)
		}
	}
	var served int
	for _, s := range spans {
		if s.Name != "POST /" {
			continue
		}
		if len(s.Links) != 1 {
			t.Errorf("request span of trace %s has links %+v, want its batch", s.SpanContext.TraceID(), s.Links)
			continue
		}
		batch, ok := byID[s.Links[0].SpanContext.SpanID().String()]
		if !ok || batch.Name != "group commit" {
			t.Errorf("request span of trace %s is linked to %q", s.SpanContext.TraceID(), batch.Name)
			continue
		}
		served++
		back := batch.Parent.SpanID() == s.SpanContext.SpanID()
		for _, l := range batch.Links {
			back = back || l.SpanContext.SpanID() == s.SpanContext.SpanID()
		}
		if !back {
			t.Errorf("batch %s serves the request of trace %s but is not tied to its span", batch.SpanContext.SpanID(), s.SpanContext.TraceID())
		}
	}
	if served != 5 {
		t.Fatalf("%d sampled request spans linked to their batch, want 5", served)
	}
	var shared bool
	for _, s := range spans {
		shared = shared || s.Name == "group commit" && len(s.Links) >= 3
	}
	if !shared {
		t.Fatal("the four queued requests did not share a batch span")
	}
}

// A method outside HTTP's own is neither a span name nor a label.
func TestOtherMethodsAreNotLabels(t *testing.T) {
	tf := newTracedFixture(t, nil)
	r := do(t, "BREW", tf.messages.URL+"/", "", map[string]string{"traceparent": "00-" + testTraceID + "-" + testParentID + "-01"})
	if r.status != 405 {
		t.Fatalf("BREW: %d %s", r.status, r.body)
	}
	server := spanNamed(t, tf.ended(t), "HTTP /")
	if got := attrOf(server.Attributes, "http.request.method"); got != "_OTHER" {
		t.Errorf("http.request.method = %q, want _OTHER", got)
	}
	for _, sm := range tf.collect(t).ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "http.server.request.duration" {
				continue
			}
			for _, dp := range m.Data.(metricdata.Histogram[float64]).DataPoints {
				if v, _ := dp.Attributes.Value("http.request.method"); v.AsString() != "_OTHER" {
					t.Errorf("request duration labelled method %q", v.AsString())
				}
			}
		}
	}
}
