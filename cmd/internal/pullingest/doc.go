// Package pullingest receives a Pub/Sub subscription with the client
// library's streaming pull and hands each message to a store function, for
// publishers that send in bulk: no HTTP request per message, and the store's
// group commit turns the messages in flight into multi-row inserts.
//
// The contract with the store function is that of IngestPubSub's answers:
// nil (its 2xx) means the message is stored (now or before) or kept as a
// dead letter, so it is acknowledged; an error (its 5xx) means a transient
// failure, so it is nacked (after a pause) and Pub/Sub delivers it again. A message is acknowledged only after
// the store function returned, that is after its commit.
//
// Bounds (Config states each default): at most MaxOutstandingMessages
// messages and MaxOutstandingBytes bytes of data are held at once, received
// but not yet acknowledged; each store call is bounded by StoreTimeout; a
// lease lasts LeaseExtension, so the messages of an ingester killed without
// a drain come back that soon. On
// shutdown (the context ends: SIGTERM) no new messages are taken, the ones
// in flight are stored and acknowledged, for at most DrainTimeout.
//
// With exactly-once delivery enabled on the subscription, an ack is
// confirmed by Pub/Sub (AckWithResult); one that is not (the lease expired,
// say) is delivered again and stored nowhere twice, because the store
// deduplicates by topic, message id and publish time.
package pullingest
