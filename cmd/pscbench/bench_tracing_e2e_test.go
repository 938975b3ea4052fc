//go:build e2e

package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"example.com/pscmessages/cmd/internal/jaegertest"
	"example.com/pscmessages/store/localpg"
	"example.com/pscmessages/store/localpg/localpgtest"
)

// BenchmarkPostTracing measures what tracing costs a POST: three runners on
// one database, with telemetry off, on at 10 % sampling and on at 100 %,
// exporting to a real OTLP receiver (Jaeger), loaded in turn, round after
// round, at each concurrency, so that drift of the machine falls on all three
// alike. It reports the median rate of each and the cost against off.
//
//	go test -tags e2e -run '^$' -bench BenchmarkPostTracing -benchtime 1x ./cmd/pscbench
//
// To keep Jaeger, PostgreSQL and the load generator off the runners' core,
// run it under taskset and name the runners' cores in
// TRACING_BENCH_RUNNER_CPUS (pinned with taskset -a -p once started):
//
//	TRACING_BENCH_RUNNER_CPUS=0 taskset -c 1 go test -tags e2e ...
func BenchmarkPostTracing(b *testing.B) {
	jaegertest.Start(b)
	cluster := localpgtest.Start(b, localpg.Options{Durable: true})
	if err := cluster.CreateDatabase(context.Background(), "tracing"); err != nil {
		b.Fatal(err)
	}
	url := cluster.SuperuserURL("tracing")
	modes := []struct {
		name string
		env  map[string]string
	}{
		{"off", map[string]string{}},
		{"10%", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": jaegertest.OTLP, "OTEL_SERVICE_NAME": "pscmessages-bench",
			"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}},
		{"100%", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": jaegertest.OTLP, "OTEL_SERVICE_NAME": "pscmessages-bench"}},
	}
	bin, err := buildRunner(context.Background(), b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	bases := make([]string, len(modes))
	pids := make([]int, len(modes))
	for i, m := range modes {
		m.env["DATABASE_URL"] = url
		bases[i], pids[i] = startTracingRunner(b, bin, m.env)
		if cpus := os.Getenv("TRACING_BENCH_RUNNER_CPUS"); cpus != "" {
			if out, err := exec.Command("taskset", "-a", "-p", "-c", cpus, fmt.Sprint(pids[i])).CombinedOutput(); err != nil {
				b.Fatalf("pinning the runner to CPUs %s: %v\n%s", cpus, err, out)
			}
		}
	}
	const rounds = 5
	window, warmup := 3*time.Second, time.Second
	ctx := context.Background()
	var report strings.Builder
	fmt.Fprintf(&report, "\n| c | tracing | POST/s (median of %d) | cost | runner CPU µs/POST (median) | cost |\n|---|---|---|---|---|---|\n", rounds)
	for _, c := range []int{8, 32} {
		rates := make([][]float64, len(modes))
		// The runner's own CPU per POST is the function's cost apart from
		// the receiver's, which shares this machine's cores.
		cpuPer := make([][]float64, len(modes))
		for round := range rounds {
			for k := range modes {
				i := (k + round) % len(modes) // each mode goes first in turn
				post := loadRequest{method: "POST", url: bases[i] + "/", body: []byte(`{"content":"` + benchContent + `"}`)}
				before, _ := readStat(pids[i])
				st, _ := closedLoop(ctx, rawClient{}, post, c, warmup, window, &cpuMeter{})
				after, _ := readStat(pids[i])
				if st.errors > 0 {
					b.Fatalf("%s c=%d: %d errors, first %v", modes[i].name, c, st.errors, st.firstErr)
				}
				rates[i] = append(rates[i], st.rate)
				// Warm-up included on both sides: CPU over every POST sent.
				used := (after.utime + after.stime) - (before.utime + before.stime)
				cpuPer[i] = append(cpuPer[i], float64(used.Microseconds())/(st.rate*(warmup+window).Seconds()))
			}
		}
		off, offCPU := median(rates[0]), median(cpuPer[0])
		for i, m := range modes {
			med, cpu := median(rates[i]), median(cpuPer[i])
			b.ReportMetric(med, fmt.Sprintf("post/s_c%d_%s", c, strings.TrimSuffix(m.name, "%")))
			b.ReportMetric(cpu, fmt.Sprintf("cpu-us/post_c%d_%s", c, strings.TrimSuffix(m.name, "%")))
			fmt.Fprintf(&report, "| %d | %s | %.0f | %+.1f %% | %.0f | %+.1f %% |\n", c, m.name, med, 100*(off-med)/off, cpu, 100*(cpu-offCPU)/offCPU)
		}
	}
	b.Log(report.String())
}

// startTracingRunner starts the runner binary with env on a free port, its
// own telemetry settings only, and waits for its first 200; the benchmark's
// cleanup stops it and fails on an unclean exit.
func startTracingRunner(b *testing.B, bin string, env map[string]string) (base string, pid int) {
	b.Helper()
	port, err := freeLoopbackPort()
	if err != nil {
		b.Fatal(err)
	}
	base = "http://127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(bin)
	// What the test's environment says about the database, the target, the
	// address, Pub/Sub or telemetry is not the runner's.
	for _, kv := range os.Environ() {
		if !slices.ContainsFunc([]string{"OTEL_", "DB_", "DATABASE_URL=", "FUNCTION_TARGET=", "PUBSUB_", "GOOGLE_CLOUD_PROJECT=", "HOST=", "PORT="},
			func(p string) bool { return strings.HasPrefix(kv, p) }) {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "HOST=127.0.0.1", "PORT="+strconv.Itoa(port))
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	b.Cleanup(func() {
		stopProcess(cmd, exited)
		if !cmd.ProcessState.Success() {
			b.Errorf("runner exited with %v\n%s", cmd.ProcessState, logs.String())
		}
	})
	get := loadRequest{method: http.MethodGet, url: base + "/"}
	client := &http.Client{Timeout: 10 * time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for get.do(context.Background(), client) != nil {
		if time.Now().After(deadline) {
			b.Fatalf("no 200 from the runner within 60 s\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return base, cmd.Process.Pid
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}
