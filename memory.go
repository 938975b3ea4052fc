package function

import "example.com/pscmessages/store"

// MemoryBound is an upper bound, in bytes, on what the entry point target
// ("Messages" or "IngestPubSub") holds for its requests in flight when
// concurrency of them run at once, with the default limits. The deploy's
// drift test (cmd/pscmessages/cloudbuild_test.go) checks --memory and --concurrency
// against it; go run ./cmd/pscbench rss measures the real peak.
//
//   - IngestPubSub: each delivery holds at most decodeCopies times the
//     largest delivery it decodes, and all of them together at most the
//     body budget (DefaultBodyMemoryBytes); an oversized one is streamed
//     through a 64 KiB buffer.
//   - Messages: a POST holds its body about decodeCopies times over (the
//     body, the decoded JSON, the content, the copy sent to PostgreSQL),
//     all POSTs together at most the body budget; a GET holds its page as
//     read plus the message being encoded.
func MemoryBound(target string, concurrency int) int64 {
	cfg := settings{maxContentBytes: DefaultMaxContentBytes, maxBodyBytes: DefaultMaxBodyBytes}
	c := int64(concurrency)
	switch target {
	case "IngestPubSub":
		return min(c*decodeCopies*deliveryLimit(cfg), DefaultBodyMemoryBytes)
	case "Messages":
		post := decodeCopies * cfg.maxBodyBytes
		get := 2 * pageBytes(cfg)
		return min(c*max(post, get), DefaultBodyMemoryBytes+c*get)
	}
	return 0
}

// pageBytes bounds the content of one page of GET: store.List stops a page
// at store.MaxPageBytes, or after its first message, however large.
func pageBytes(cfg settings) int64 {
	return store.MaxPageBytes + int64(cfg.maxContentBytes)
}
