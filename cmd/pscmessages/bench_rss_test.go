package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestBenchRSSTiny runs bench-rss end to end at a size that proves the
// plumbing (build, cluster, fresh runners, both loads, VmHWM), not the
// numbers.
func TestBenchRSSTiny(t *testing.T) {
	var out bytes.Buffer
	cfg := rssConfig{concurrency: 2, eventBytes: 1 << 20, rows: 10, rowBytes: 64 << 10, limit: 100, runs: 1}
	if err := benchRSS(t.Context(), cfg, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| 2 concurrent 1 MB Pub/Sub messages | 2× 500 |", "| 2 concurrent GET /?limit=100 over 64 KB rows | 2× 200 |"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
