package pubsubclient

import (
	"context"
	"fmt"
	"net"
	"time"
)

const (
	// DialTimeout bounds the check that something listens at
	// PUBSUB_EMULATOR_HOST. Without it the client library retries an
	// unreachable emulator for its whole 60 s RPC timeout.
	DialTimeout = 3 * time.Second
	// SetupTimeout bounds the administrative calls a command makes before
	// it receives (creating or reading a topic and subscription), for an
	// address that accepts connections but does not answer Pub/Sub.
	SetupTimeout = 15 * time.Second
)

// CheckEmulator returns an error naming PUBSUB_EMULATOR_HOST when nothing
// accepts connections at addr within DialTimeout.
func CheckEmulator(ctx context.Context, addr string) error {
	d := net.Dialer{Timeout: DialTimeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return emulatorError(addr, err)
	}
	c.Close()
	return nil
}

// emulatorError says which variable points where, and what to do about it.
func emulatorError(addr string, err error) error {
	port := addr
	if _, p, splitErr := net.SplitHostPort(addr); splitErr == nil {
		port = p
	}
	return fmt.Errorf("PUBSUB_EMULATOR_HOST=%s: no Pub/Sub emulator answers there (%v); start one with "+
		"`gcloud beta emulators pubsub start --host-port=127.0.0.1:%s`, or unset PUBSUB_EMULATOR_HOST", addr, err, port)
}
