package function

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"example.com/pscmessages/store"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"example.com/pscmessages/cmd/telemetry/otlp"
)

// tracedFixture is a service with the SDK installed, exporting to memory.
type tracedFixture struct {
	*fixture
	tel      *instruments
	spans    *tracetest.InMemoryExporter
	metrics  *sdkmetric.ManualReader
	messages *httptest.Server
	events   *httptest.Server
}

func newTracedFixture(t *testing.T, env map[string]string) *tracedFixture {
	t.Helper()
	tf := &tracedFixture{spans: tracetest.NewInMemoryExporter(), metrics: sdkmetric.NewManualReader()}
	tel, err := setupTelemetry(func(string) string { return "" }, otlp.InProcess(&otlp.Exporters{Spans: tf.spans, Metrics: tf.metrics}))
	if err != nil {
		t.Fatal(err)
	}
	tf.tel = tel
	t.Cleanup(func() {
		// Back to the API's no-ops: later tests' stores must not trace.
		otel.SetTracerProvider(tracenoop.NewTracerProvider())
		otel.SetMeterProvider(metricnoop.NewMeterProvider())
		_ = tel.shutdown()
	})
	tf.fixture = newFixture(t, env)
	tf.svc.tel = tel
	tf.messages = httptest.NewServer(tel.instrument(tf.svc, messagesRoute))
	tf.events = httptest.NewServer(tel.instrument(http.HandlerFunc(tf.svc.serveEvent), deliveryRoute))
	t.Cleanup(func() { tf.messages.Close(); tf.events.Close() })
	return tf
}

// ended flushes and returns the spans ended so far.
func (tf *tracedFixture) ended(t *testing.T) tracetest.SpanStubs {
	t.Helper()
	if err := tf.tel.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	return tf.spans.GetSpans()
}

func (tf *tracedFixture) collect(t *testing.T) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := tf.metrics.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	return rm
}

func spanNamed(t *testing.T, spans tracetest.SpanStubs, name string) tracetest.SpanStub {
	t.Helper()
	for _, s := range spans {
		if s.Name == name {
			return s
		}
	}
	var names []string
	for _, s := range spans {
		names = append(names, s.Name)
	}
	t.Fatalf("no span %q among %q", name, names)
	return tracetest.SpanStub{}
}

func attrOf(kvs []attribute.KeyValue, key string) string {
	for _, kv := range kvs {
		if string(kv.Key) == key {
			return kv.Value.Emit()
		}
	}
	return ""
}

const (
	testTraceID  = "4bf92f3577b34da6a3ce929d0e0e4736"
	testParentID = "00f067aa0ba902b7"
)

func TestPostSpansContinueTraceparent(t *testing.T) {
	tf := newTracedFixture(t, nil)
	r := do(t, "POST", tf.messages.URL+"/", `{"content":"traced"}`, map[string]string{
		"Content-Type": "application/json", "traceparent": "00-" + testTraceID + "-" + testParentID + "-01"})
	if r.status != 200 {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	spans := tf.ended(t)
	server := spanNamed(t, spans, "POST /")
	batch := spanNamed(t, spans, "group commit")
	var insert tracetest.SpanStub
	for _, s := range spans {
		if strings.HasPrefix(s.Name, "INSERT ") && s.Parent.SpanID() == batch.SpanContext.SpanID() {
			insert = s
		}
	}
	if insert.Name == "" {
		t.Fatalf("no INSERT span under the batch span among %d spans", len(spans))
	}
	for _, s := range []tracetest.SpanStub{server, batch, insert} {
		if got := s.SpanContext.TraceID().String(); got != testTraceID {
			t.Errorf("span %q in trace %s, want the caller's %s", s.Name, got, testTraceID)
		}
	}
	if server.Parent.SpanID().String() != testParentID || server.SpanKind != trace.SpanKindServer {
		t.Errorf("server span: parent %s kind %v, want %s, server", server.Parent.SpanID(), server.SpanKind, testParentID)
	}
	if batch.Parent.SpanID() != server.SpanContext.SpanID() {
		t.Errorf("want server > batch > INSERT")
	}
	if len(server.Links) != 1 || server.Links[0].SpanContext.SpanID() != batch.SpanContext.SpanID() {
		t.Errorf("the request is not linked to its batch: %+v", server.Links)
	} else if attrOf(server.Links[0].Attributes, "pscmessages.batch.queue_wait") == "" {
		t.Errorf("the link to the batch does not say how long the request waited: %+v", server.Links[0])
	}
	if got := attrOf(insert.Attributes, "db.system"); got != "postgresql" {
		t.Errorf("INSERT span db.system = %q", got)
	}
	if got := attrOf(server.Attributes, "http.route"); got != "/" {
		t.Errorf("server span http.route = %q, want /", got)
	}
}

// TestStoreWorkIsOneTraceEach: the statements the store runs apart from any
// request (setting up the schema when it opens, expiring idempotency keys)
// are children of one span of that work, not a one-span trace each.
func TestStoreWorkIsOneTraceEach(t *testing.T) {
	tf := newTracedFixture(t, nil)
	for i := range 3 {
		if r := do(t, "POST", tf.messages.URL+"/", fmt.Sprintf(`{"content":"work %d"}`, i), map[string]string{"Content-Type": "application/json"}); r.status != 200 {
			t.Fatalf("POST: %d %s", r.status, r.body)
		}
	}
	spans := tf.ended(t)
	prepare := spanNamed(t, spans, "schema setup")
	children := 0
	for _, s := range spans {
		if s.SpanKind == trace.SpanKindClient && !s.Parent.IsValid() {
			t.Errorf("statement span %q is a trace of its own", s.Name)
		}
		if s.Parent.SpanID() == prepare.SpanContext.SpanID() {
			children++
		}
	}
	if children == 0 {
		t.Errorf("no statement under the %q span", prepare.Name)
	}
}

func TestXCloudTraceContextContinued(t *testing.T) {
	tf := newTracedFixture(t, nil)
	// Span 123 is 0x7b.
	r := do(t, "GET", tf.messages.URL+"/messages/7", "", map[string]string{"X-Cloud-Trace-Context": testTraceID + "/123;o=1"})
	if r.status != 404 {
		t.Fatalf("GET: %d %s", r.status, r.body)
	}
	server := spanNamed(t, tf.ended(t), "GET /messages/{id}")
	if server.SpanContext.TraceID().String() != testTraceID || server.Parent.SpanID().String() != "000000000000007b" {
		t.Fatalf("server span trace %s parent %s, want %s / 000000000000007b", server.SpanContext.TraceID(), server.Parent.SpanID(), testTraceID)
	}
	if !server.SpanContext.IsSampled() {
		t.Fatal("o=1 was not kept as sampled")
	}
}

func TestLogLinesCarryTheServerSpan(t *testing.T) {
	tf := newTracedFixture(t, map[string]string{"GOOGLE_CLOUD_PROJECT": "p", "MAX_CONTENT_BYTES": "8"})
	r := do(t, "POST", tf.messages.URL+"/", `{"content":"0123456789"}`, map[string]string{"Content-Type": "application/json", "traceparent": "00-" + testTraceID + "-" + testParentID + "-01"})
	if r.status != 413 {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	server := spanNamed(t, tf.ended(t), "POST /")
	if got := attrOf(server.Attributes, "error.type"); got != "http_413" {
		t.Errorf("error.type = %q, want http_413", got)
	}
	// What a line logged while serving that request names: the server
	// span, not the caller's span of the traceparent header.
	req := httptest.NewRequest("POST", "/", nil).WithContext(trace.ContextWithSpanContext(context.Background(), server.SpanContext))
	req.Header.Set("traceparent", "00-"+testTraceID+"-"+testParentID+"-01")
	tf.svc.requestLog(req).Warn("probe")
	var line map[string]any
	logs := strings.Split(strings.TrimSpace(tf.logs.String()), "\n")
	if err := json.Unmarshal([]byte(logs[len(logs)-1]), &line); err != nil {
		t.Fatalf("log line %q: %v", logs[len(logs)-1], err)
	}
	if line["logging.googleapis.com/spanId"] != server.SpanContext.SpanID().String() ||
		line["logging.googleapis.com/trace"] != "projects/p/traces/"+testTraceID {
		t.Fatalf("log line %v does not name span %s of trace %s", line, server.SpanContext.SpanID(), testTraceID)
	}
}

// publish posts one Eventarc binary-mode delivery of data with attrs.
func (tf *tracedFixture) publish(t *testing.T, id string, data []byte, attrs map[string]string, header map[string]string) response {
	t.Helper()
	body, _ := json.Marshal(map[string]any{
		"message":      map[string]any{"data": base64.StdEncoding.EncodeToString(data), "attributes": attrs, "messageId": id, "publishTime": "2026-12-06T04:00:00Z"},
		"subscription": "projects/p/subscriptions/s",
	})
	h := map[string]string{"Content-Type": "application/json", "ce-specversion": "1.0", "ce-id": id,
		"ce-source": "//pubsub.googleapis.com/projects/p/topics/orders", "ce-type": MessagePublishedType}
	for k, v := range header {
		h[k] = v
	}
	return do(t, "POST", tf.events.URL+"/", string(body), h)
}

func TestConsumerSpanFollowsThePublisher(t *testing.T) {
	tf := newTracedFixture(t, nil)
	const publisherSpan = "1111111111111111"
	eventarc := "00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-2222222222222222-01"
	r := tf.publish(t, "m1", []byte("hello"), map[string]string{"googclient_traceparent": "00-" + testTraceID + "-" + publisherSpan + "-01"},
		map[string]string{"traceparent": eventarc})
	if r.status != 204 {
		t.Fatalf("delivery: %d %s", r.status, r.body)
	}
	spans := tf.ended(t)
	consumer := spanNamed(t, spans, "process orders")
	server := spanNamed(t, spans, "POST /IngestPubSub")
	if consumer.SpanContext.TraceID().String() != testTraceID || consumer.Parent.SpanID().String() != publisherSpan {
		t.Fatalf("consumer span trace %s parent %s, want the publisher's %s/%s", consumer.SpanContext.TraceID(), consumer.Parent.SpanID(), testTraceID, publisherSpan)
	}
	if consumer.SpanKind != trace.SpanKindConsumer {
		t.Errorf("consumer span kind %v", consumer.SpanKind)
	}
	linked := false
	for _, l := range consumer.Links {
		linked = linked || l.SpanContext.SpanID() == server.SpanContext.SpanID()
	}
	if !linked {
		t.Errorf("consumer span is not linked to the HTTP span")
	}
	for k, want := range map[string]string{"messaging.system": "gcp_pubsub", "messaging.destination.name": "orders",
		"messaging.message.id": "m1", "messaging.operation.type": "process", "pscmessages.outcome": "stored"} {
		if got := attrOf(consumer.Attributes, k); got != want {
			t.Errorf("consumer span %s = %q, want %q", k, got, want)
		}
	}
	batch := spanNamed(t, spans, "group commit")
	if batch.SpanContext.TraceID().String() != testTraceID {
		t.Errorf("the batch is not in the publisher's trace")
	}
	// Without googclient_traceparent, the CloudEvent's traceparent is the trace.
	tf.spans.Reset()
	if r := tf.publish(t, "m2", []byte("hello 2"), nil, map[string]string{"traceparent": eventarc}); r.status != 204 {
		t.Fatalf("delivery: %d %s", r.status, r.body)
	}
	consumer = spanNamed(t, tf.ended(t), "process orders")
	if consumer.SpanContext.TraceID().String() != "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
		t.Errorf("consumer span without publisher context is in trace %s", consumer.SpanContext.TraceID())
	}
}

func TestDeliveryOutcomesCounted(t *testing.T) {
	tf := newTracedFixture(t, nil)
	for _, d := range []struct {
		id   string
		data []byte
		want int
	}{{"a", []byte("one"), 204}, {"a", []byte("one"), 204}, {"b", []byte{0xff}, 204}} {
		if r := tf.publish(t, d.id, d.data, nil, nil); r.status != d.want {
			t.Fatalf("delivery %s: %d %s", d.id, r.status, r.body)
		}
	}
	spans := tf.ended(t)
	var deadLetter bool
	for _, s := range spans {
		for _, e := range s.Events {
			if e.Name == "dead_lettered" && attrOf(e.Attributes, "pscmessages.dead_letter.reason") == "not_utf8" {
				deadLetter = true
			}
		}
	}
	if !deadLetter {
		t.Error("no dead_lettered span event with reason not_utf8")
	}
	got := map[string]int64{}
	rm := tf.collect(t)
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch m.Name {
			case "pscmessages.deliveries":
				for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
					o, _ := dp.Attributes.Value("outcome")
					r, _ := dp.Attributes.Value("reason")
					got[strings.Trim(o.Emit()+"/"+r.Emit(), "/")] += dp.Value
				}
			}
		}
	}
	want := map[string]int64{"stored": 1, "duplicate": 1, "dead_lettered/not_utf8": 1}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("deliveries = %v, want %v", got, want)
	}
}

func TestMetricShapes(t *testing.T) {
	tf := newTracedFixture(t, nil)
	for i := range 3 {
		if r := postContent(t, tf.messages.URL, fmt.Sprint("m", i)); r.status != 200 {
			t.Fatalf("POST: %d", r.status)
		}
	}
	do(t, "GET", tf.messages.URL+"/messages/999", "", nil)
	names := map[string]metricdata.Metrics{}
	for _, sm := range tf.collect(t).ScopeMetrics {
		for _, m := range sm.Metrics {
			names[m.Name] = m
		}
	}
	for _, n := range []string{"http.server.request.duration", "pscmessages.batch.rows", "pscmessages.batch.queue_wait",
		"db.client.connection.count", "db.client.connection.max", "pscmessages.db.pool.acquires", "pscmessages.db.pool.acquire_waits",
		"pscmessages.db.pool.acquire_wait_time", "pscmessages.memory_budget.in_use"} {
		if _, ok := names[n]; !ok {
			t.Errorf("no metric %s", n)
		}
	}
	routes := map[string]bool{}
	for _, dp := range names["http.server.request.duration"].Data.(metricdata.Histogram[float64]).DataPoints {
		route, _ := dp.Attributes.Value("http.route")
		status, _ := dp.Attributes.Value("http.response.status_code")
		routes[route.Emit()+" "+status.Emit()] = true
	}
	if !routes["/ 200"] || !routes["/messages/{id} 404"] {
		t.Errorf("request durations by route and status: %v", routes)
	}
}

func TestTelemetryCarriesNoContentOrSecrets(t *testing.T) {
	const (
		content = "content-marker-5f1d"
		token   = "ya29.token-marker-8c2e"
	)
	base := testDB(t)
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	password, ok := u.User.Password()
	if !ok || len(password) < 6 {
		t.Fatalf("the test database URL has no password to look for")
	}
	withPassword := base
	tf := newTracedFixture(t, map[string]string{"DATABASE_URL": withPassword, "MAX_CONTENT_BYTES": "64"})
	auth := map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + token, "Idempotency-Key": "k-" + token}
	do(t, "POST", tf.messages.URL+"/", `{"content":"`+content+`"}`, auth)
	do(t, "POST", tf.messages.URL+"/messages", `{"content":"`+content+` 2"}`, auth)
	do(t, "POST", tf.messages.URL+"/", `{"content":"`+strings.Repeat(content, 10)+`"}`, auth) // refused: too long
	do(t, "GET", tf.messages.URL+"/?limit=5", "", auth)
	tf.publish(t, "s1", []byte(content+" via pubsub"), map[string]string{"note": content}, nil)
	tf.publish(t, "s2", []byte(`{"content": 42, "x": "`+content+`"}`), nil, nil) // dead letter
	tf.publish(t, "s3", []byte("not json \xff "+content), nil, nil)              // dead letter
	secrets := []string{content, token, password, withPassword, base}
	check := func(where string, kvs []attribute.KeyValue) {
		for _, kv := range kvs {
			v := kv.Value.Emit()
			for _, s := range secrets {
				if strings.Contains(v, s) {
					t.Errorf("%s: attribute %s = %q carries %q", where, kv.Key, v, s)
				}
			}
		}
	}
	spans := tf.ended(t)
	if len(spans) < 10 {
		t.Fatalf("only %d spans", len(spans))
	}
	for _, s := range spans {
		check("span "+s.Name, s.Attributes)
		check("resource", s.Resource.Attributes())
		for _, e := range s.Events {
			check("event "+e.Name+" of "+s.Name, e.Attributes)
		}
		for _, l := range s.Links {
			check("link of "+s.Name, l.Attributes)
		}
		for _, sec := range secrets {
			if strings.Contains(s.Name, sec) || strings.Contains(s.Status.Description, sec) {
				t.Errorf("span %q (status %q) carries %q", s.Name, s.Status.Description, sec)
			}
		}
	}
	for _, sm := range tf.collect(t).ScopeMetrics {
		for _, m := range sm.Metrics {
			for _, set := range dataPointAttrs(m.Data) {
				check("metric "+m.Name, set.ToSlice())
			}
		}
	}
}

func dataPointAttrs(data metricdata.Aggregation) []attribute.Set {
	var sets []attribute.Set
	switch d := data.(type) {
	case metricdata.Sum[int64]:
		for _, dp := range d.DataPoints {
			sets = append(sets, dp.Attributes)
		}
	case metricdata.Sum[float64]:
		for _, dp := range d.DataPoints {
			sets = append(sets, dp.Attributes)
		}
	case metricdata.Gauge[int64]:
		for _, dp := range d.DataPoints {
			sets = append(sets, dp.Attributes)
		}
	case metricdata.Histogram[float64]:
		for _, dp := range d.DataPoints {
			sets = append(sets, dp.Attributes)
		}
	case metricdata.Histogram[int64]:
		for _, dp := range d.DataPoints {
			sets = append(sets, dp.Attributes)
		}
	}
	return sets
}

func TestTelemetryConfigErrorsNameTheVariable(t *testing.T) {
	for k, v := range map[string]string{
		"OTEL_SDK_DISABLED":           "maybe",
		"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
		"OTEL_TRACES_SAMPLER":         "sometimes",
		"OTEL_TRACES_SAMPLER_ARG":     "1.5",
		"OTEL_METRICS_EXPORTER":       "prometheus",
		"OTEL_EXPORTER_OTLP_ENDPOINT": "::not a url",
	} {
		_, err := loadSettings(func(name string) string {
			switch name {
			case k:
				return v
			case "DATABASE_URL":
				return "postgres://u@127.0.0.1/db"
			}
			return ""
		})
		if err == nil || !strings.Contains(err.Error(), k) || strings.Contains(err.Error(), v) {
			t.Errorf("%s=%s: %v; want an error naming the variable, not its value", k, v, err)
		}
	}
}

func TestReplayIsASpanWithItsOutcome(t *testing.T) {
	tf := newTracedFixture(t, nil)
	postContent(t, tf.messages.URL, "opens the pool")
	payload, _ := json.Marshal(map[string]any{"message": map[string]any{
		"data": base64.StdEncoding.EncodeToString([]byte("replayed")), "messageId": "r1", "publishTime": "2026-12-06T04:00:00Z"}})
	d := store.DeadLetter{EventID: "r1", EventSource: "//pubsub.googleapis.com/projects/p/topics/orders", EventType: MessagePublishedType, Payload: payload}
	for _, want := range []string{"stored", "already_stored"} {
		tf.spans.Reset()
		if _, err := tf.svc.tracedReplay(context.Background(), d); err != nil {
			t.Fatal(err)
		}
		span := spanNamed(t, tf.ended(t), "replay dead letter")
		if len(span.Events) == 0 || span.Events[len(span.Events)-1].Name != "replay" ||
			attrOf(span.Events[len(span.Events)-1].Attributes, "pscmessages.outcome") != want {
			t.Fatalf("replay span events %+v; want a replay event with outcome %s", span.Events, want)
		}
	}
}
