package store

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Traces and metrics of the store, through the process's global
// OpenTelemetry providers. Only when the process installed the SDK (the
// function does so when the OTEL_* variables ask, see package
// example.com/pscmessages/cmd/telemetry) does a Store trace and measure; otherwise it holds a nil
// observer and pays a nil check.
//
// Every statement is a span (pgx's QueryTracer, BatchTracer and
// ConnectTracer, set as the pool's ConnConfig.Tracer) with
// db.system=postgresql and never a parameter value: the statement's text is
// kept only when it holds no quoted literal, so neither content nor a
// password written into SQL can leave the process in a span.
//
// A group-commit batch statement is a span of its own, a child of the span
// of the first sampled request it carries and linked to the span of every
// other sampled one; each of those request spans is linked back to it, the
// link saying how long the request waited in the queue
// (pscmessages.batch.queue_wait, in seconds): a slow request shows whose
// batch it rode in, and the batch shows whom it served.
//
// Nothing is traced under a request whose span is not sampled: no statement
// span, and no batch span when none of the batch's requests is sampled. Spans
// are started from a context that holds the parent span alone, so that
// neither the SDK nor its sampler walks a request's long context chain for it.

const instrumentationName = "example.com/pscmessages/store"

// observer holds a Store's instruments; nil when telemetry is off.
type observer struct {
	tracer    trace.Tracer
	batchRows metric.Int64Histogram
	queueWait metric.Float64Histogram
	expired   metric.Int64Counter
	cleanups  metric.Int64Counter
	poolReg   metric.Registration
	attrs     []attribute.KeyValue // of every DB span: system, namespace, server
}

// sdkProvider is what the SDK's tracer and meter providers have and the
// API's defaults and no-ops lack; asking for it spares the store from
// linking the SDK, which only a build with telemetry has.
type sdkProvider interface{ ForceFlush(context.Context) error }

// newObserver returns nil unless the process installed the OTel SDK.
func newObserver(cfg *pgxpool.Config) *observer {
	tp := otel.GetTracerProvider()
	if _, ok := tp.(sdkProvider); !ok {
		return nil
	}
	o := &observer{tracer: tp.Tracer(instrumentationName)}
	cc := cfg.ConnConfig
	o.attrs = []attribute.KeyValue{
		attribute.String("db.system", "postgresql"),
		attribute.String("db.system.name", "postgresql"),
		attribute.String("db.namespace", cc.Database),
		attribute.String("server.address", cc.Host),
		attribute.Int("server.port", int(cc.Port)),
	}
	if cc.Tracer == nil {
		cc.Tracer = &dbTracer{o: o}
	}
	if mp := otel.GetMeterProvider(); isSDK(mp) {
		m := mp.Meter(instrumentationName)
		o.batchRows, _ = m.Int64Histogram("pscmessages.batch.rows",
			metric.WithDescription("Rows per group-commit batch statement"), metric.WithUnit("{row}"),
			metric.WithExplicitBucketBoundaries(1, 2, 4, 8, 16, 32, 64, 128, 256))
		o.queueWait, _ = m.Float64Histogram("pscmessages.batch.queue_wait",
			metric.WithDescription("Time a write waited in the group-commit queue before its batch statement started"), metric.WithUnit("s"),
			metric.WithExplicitBucketBoundaries(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
		o.expired, _ = m.Int64Counter("pscmessages.idempotency_keys.expired",
			metric.WithDescription("Idempotency records deleted by the key cleanup"), metric.WithUnit("{key}"))
		o.cleanups, _ = m.Int64Counter("pscmessages.idempotency_keys.cleanups",
			metric.WithDescription("Key cleanup runs by result: done (all expired keys deleted), more (stopped at its bound; the next run goes on), failed"), metric.WithUnit("{run}"))
	}
	return o
}

func isSDK(p any) bool {
	_, ok := p.(sdkProvider)
	return ok
}

// observePool registers the pool's statistics as observable instruments.
func (o *observer) observePool(pool *pgxpool.Pool) {
	if o == nil || o.batchRows == nil {
		return
	}
	m := otel.GetMeterProvider().Meter(instrumentationName)
	conns, _ := m.Int64ObservableUpDownCounter("db.client.connection.count",
		metric.WithDescription("Connections of the pool by state (used: acquired; idle)"), metric.WithUnit("{connection}"))
	maxConns, _ := m.Int64ObservableUpDownCounter("db.client.connection.max",
		metric.WithDescription("Most connections the pool may open"), metric.WithUnit("{connection}"))
	acquires, _ := m.Int64ObservableCounter("pscmessages.db.pool.acquires",
		metric.WithDescription("Connections acquired from the pool"), metric.WithUnit("{acquire}"))
	waits, _ := m.Int64ObservableCounter("pscmessages.db.pool.acquire_waits",
		metric.WithDescription("Acquires that found no idle connection and waited for one"), metric.WithUnit("{acquire}"))
	waitTime, _ := m.Float64ObservableCounter("pscmessages.db.pool.acquire_wait_time",
		metric.WithDescription("Total time acquires waited for a connection"), metric.WithUnit("s"))
	acquireTime, _ := m.Float64ObservableCounter("pscmessages.db.pool.acquire_time",
		metric.WithDescription("Total time of all acquires, waiting or not"), metric.WithUnit("s"))
	used := metric.WithAttributes(attribute.String("db.client.connection.state", "used"))
	idle := metric.WithAttributes(attribute.String("db.client.connection.state", "idle"))
	o.poolReg, _ = m.RegisterCallback(func(_ context.Context, ob metric.Observer) error {
		st := pool.Stat()
		ob.ObserveInt64(conns, int64(st.AcquiredConns()), used)
		ob.ObserveInt64(conns, int64(st.IdleConns()), idle)
		ob.ObserveInt64(maxConns, int64(st.MaxConns()))
		ob.ObserveInt64(acquires, st.AcquireCount())
		ob.ObserveInt64(waits, st.EmptyAcquireCount())
		ob.ObserveFloat64(waitTime, st.EmptyAcquireWaitTime().Seconds())
		ob.ObserveFloat64(acquireTime, st.AcquireDuration().Seconds())
		return nil
	}, conns, maxConns, acquires, waits, waitTime, acquireTime)
}

func (o *observer) close() {
	if o != nil && o.poolReg != nil {
		_ = o.poolReg.Unregister()
	}
}

// queued notes when one write entered the queue and, when the request's span
// (in ctx) is sampled, that span, for statement to link and annotate.
func (o *observer) queued(ctx context.Context, req *writeRequest) {
	if o == nil {
		return
	}
	req.queuedAt = time.Now()
	span := trace.SpanFromContext(ctx)
	req.spanCtx = span.SpanContext()
	if req.spanCtx.IsSampled() {
		req.span = span
	}
}

// batchStarted records the size of a batch and its rows' waits in the queue.
func (o *observer) batchStarted(batch []*writeRequest) {
	if o == nil || o.batchRows == nil {
		return
	}
	now := time.Now()
	o.batchRows.Record(context.Background(), int64(len(batch)))
	for _, r := range batch {
		o.queueWait.Record(context.Background(), now.Sub(r.queuedAt).Seconds())
	}
}

// untraced is the context of a statement none of whose requests is sampled:
// its unsampled span context tells dbTracer to make no span either.
var untraced = trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
	TraceID: trace.TraceID{1}, SpanID: trace.SpanID{1},
}))

// statement starts the span of one batch statement over rows; end records
// its result. With no sampled request among rows it starts none.
func (o *observer) statement(rows []*writeRequest) (context.Context, func(error)) {
	if o == nil {
		return context.Background(), func(error) {}
	}
	var parent *writeRequest
	var links []trace.Link
	for _, r := range rows {
		switch {
		case r.span == nil:
		case parent == nil:
			parent = r
		default:
			links = append(links, trace.Link{SpanContext: r.spanCtx})
		}
	}
	if parent == nil {
		return untraced, func(error) {}
	}
	ctx, span := o.tracer.Start(trace.ContextWithSpan(context.Background(), parent.span), "group commit",
		trace.WithSpanKind(trace.SpanKindInternal), trace.WithLinks(links...),
		trace.WithAttributes(attribute.Int("pscmessages.batch.rows", len(rows))))
	now := time.Now()
	for _, r := range rows {
		if r.span != nil {
			r.span.AddLink(trace.Link{SpanContext: span.SpanContext(), Attributes: []attribute.KeyValue{
				attribute.Float64("pscmessages.batch.queue_wait", now.Sub(r.queuedAt).Seconds())}})
		}
	}
	return ctx, func(err error) {
		if err != nil {
			recordError(span, err)
		}
		span.End()
	}
}

// operation starts the span of work the store does apart from any request
// (setting up the schema when it opens, expiring idempotency keys), so that
// its statements are one trace under it rather than a trace each; end
// records its result. Under a request's span (a pool opened by a request)
// it is that span's child.
func (o *observer) operation(ctx context.Context, name string) (context.Context, func(error)) {
	if o == nil {
		return ctx, func(error) {}
	}
	ctx, span := o.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindInternal))
	return ctx, func(err error) {
		if err != nil {
			recordError(span, err)
		}
		span.End()
	}
}

// retried notes on every sampled request waiting for rows that its batch ran
// again after a conflict.
func (o *observer) retried(rows []*writeRequest, attempt int, err error) {
	if o == nil {
		return
	}
	for _, r := range rows {
		if r.span != nil {
			r.span.AddEvent("retry", trace.WithAttributes(attribute.Int("attempt", attempt), attribute.String("error.type", sqlState(err))))
		}
	}
}

// cleaned counts one key-cleanup run.
func (o *observer) cleaned(n int, more bool, err error) {
	if o == nil || o.expired == nil {
		return
	}
	o.expired.Add(context.Background(), int64(n))
	result := "done"
	switch {
	case err != nil:
		result = "failed"
	case more:
		result = "more"
	}
	o.cleanups.Add(context.Background(), 1, metric.WithAttributes(attribute.String("result", result)))
}

// recordError marks span failed with the SQLSTATE (or the class) of err,
// never its message, which may quote a row.
func recordError(span trace.Span, err error) {
	kind := sqlState(err)
	span.SetStatus(codes.Error, kind)
	span.SetAttributes(attribute.String("error.type", kind))
}

func sqlState(err error) string {
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr):
		return pgErr.Code
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline_exceeded"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	return "connection"
}

// dbTracer makes a span of every statement, batch and connect.
type dbTracer struct{ o *observer }

var (
	_ pgx.QueryTracer   = (*dbTracer)(nil)
	_ pgx.BatchTracer   = (*dbTracer)(nil)
	_ pgx.ConnectTracer = (*dbTracer)(nil)
)

// start returns ctx with the statement's span, or ctx as it is when the
// span it holds is not sampled: end then finds that span, which is not
// recording, and its End does nothing.
func (t *dbTracer) start(ctx context.Context, name string, attrs func() []attribute.KeyValue) context.Context {
	parent := trace.SpanFromContext(ctx)
	if sc := parent.SpanContext(); sc.IsValid() && !sc.IsSampled() {
		return ctx
	}
	_, span := t.o.tracer.Start(trace.ContextWithSpan(context.Background(), parent), name,
		trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(t.o.attrs...))
	if attrs != nil && span.IsRecording() {
		span.SetAttributes(attrs()...)
	}
	return trace.ContextWithSpan(ctx, span)
}

func end(ctx context.Context, err error) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	if err != nil {
		recordError(span, err)
	}
	span.End()
}

func (t *dbTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() && !sc.IsSampled() {
		return ctx // spares summarize, as start would make no span
	}
	op, target := summarize(d.SQL)
	return t.start(ctx, strings.TrimSpace(op+" "+target), func() []attribute.KeyValue { return statementAttrs(op, target, d.SQL) })
}

func (t *dbTracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryEndData) {
	if span := trace.SpanFromContext(ctx); span.IsRecording() && d.Err == nil {
		span.SetAttributes(attribute.Int64("db.response.returned_rows", d.CommandTag.RowsAffected()))
	}
	end(ctx, d.Err)
}

func (t *dbTracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	return t.start(ctx, "BATCH", func() []attribute.KeyValue {
		return []attribute.KeyValue{attribute.Int("db.operation.batch.size", d.Batch.Len())}
	})
}

func (t *dbTracer) TraceBatchQuery(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchQueryData) {
	op, target := summarize(d.SQL)
	span := trace.SpanFromContext(ctx)
	if span.IsRecording() {
		span.AddEvent(strings.TrimSpace(op+" "+target), trace.WithAttributes(statementAttrs(op, target, d.SQL)...))
	}
}

func (t *dbTracer) TraceBatchEnd(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchEndData) {
	end(ctx, d.Err)
}

func (t *dbTracer) TraceConnectStart(ctx context.Context, _ pgx.TraceConnectStartData) context.Context {
	return t.start(ctx, "connect", nil)
}

func (t *dbTracer) TraceConnectEnd(ctx context.Context, d pgx.TraceConnectEndData) {
	end(ctx, d.Err)
}

// maxQueryText bounds the statement text kept in a span.
const maxQueryText = 2048

// statementAttrs describes a statement without its parameters. Its text is
// kept only when it holds no quoted literal ('...', $$...$$, E'...'): the
// store's statements pass every value as a parameter, and one that did not
// could be writing a password or content into the SQL.
func statementAttrs(op, target, sql string) []attribute.KeyValue {
	attrs := []attribute.KeyValue{attribute.String("db.operation.name", op)}
	if target != "" {
		attrs = append(attrs, attribute.String("db.collection.name", target))
	}
	if !strings.Contains(sql, "'") && !strings.Contains(sql, "$$") {
		if len(sql) > maxQueryText {
			sql = sql[:maxQueryText]
		}
		attrs = append(attrs, attribute.String("db.query.text", strings.TrimSpace(sql)))
	}
	return attrs
}

// summarize finds a statement's operation and the table it acts on: for a
// WITH query, its first data-modifying statement, else SELECT.
func summarize(sql string) (op, target string) {
	words := strings.Fields(skipComments(sql))
	if len(words) == 0 {
		return "", ""
	}
	first := strings.ToUpper(words[0])
	if first != "WITH" {
		return first, targetAfter(first, words[1:])
	}
	for i, w := range words {
		switch u := strings.ToUpper(w); u {
		case "INSERT", "UPDATE", "DELETE", "MERGE":
			return u, targetAfter(u, words[i+1:])
		}
	}
	return "SELECT", ""
}

// skipComments is sql after the comments that open it (-- to the end of
// the line, /* to */), such as a migration file's header.
func skipComments(sql string) string {
	for {
		sql = strings.TrimLeft(sql, " \t\r\n")
		switch {
		case strings.HasPrefix(sql, "--"):
			i := strings.IndexByte(sql, '\n')
			if i < 0 {
				return ""
			}
			sql = sql[i+1:]
		case strings.HasPrefix(sql, "/*"):
			i := strings.Index(sql, "*/")
			if i < 0 {
				return ""
			}
			sql = sql[i+2:]
		default:
			return sql
		}
	}
}

func targetAfter(op string, rest []string) string {
	skip := map[string]string{"INSERT": "INTO", "DELETE": "FROM", "MERGE": "INTO"}[op]
	if op != "INSERT" && op != "UPDATE" && op != "DELETE" && op != "MERGE" {
		return ""
	}
	for i, w := range rest {
		if skip != "" && i == 0 && strings.EqualFold(w, skip) {
			continue
		}
		return strings.Trim(strings.ToLower(w), `"(`)
	}
	return ""
}
