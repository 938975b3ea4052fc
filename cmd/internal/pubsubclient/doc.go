// Package pubsubclient holds what the Pub/Sub commands share about their
// client: the project they default to, the client configuration, and the
// check that an emulator answers at PUBSUB_EMULATOR_HOST. cmd/pscpubsub (the
// local bridge and publish) and cmd/pscpull (the deployed pull ingester) use
// it; it links neither pstest nor package testing, since the ingester's
// binary must not.
package pubsubclient
