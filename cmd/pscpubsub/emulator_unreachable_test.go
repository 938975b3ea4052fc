package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestEmulatorHostUnreachable: PUBSUB_EMULATOR_HOST naming an address where
// nothing listens stops the runner and the publish command promptly, with a
// message that names the variable, instead of a minute of retries.
func TestEmulatorHostUnreachable(t *testing.T) {
	dead := "127.0.0.1:" + psFreePort(t) // nothing listens there now
	const bound = 20 * time.Second       // the old behaviour: 60 s of retries

	t.Run("runner", func(t *testing.T) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestPubSubServeProcess$")
		cmd.Env = append(runnerEnv(psUnset...), serveArgsEnv+"=-pubsub", "HOST=127.0.0.1", "PORT="+psFreePort(t),
			"DATABASE_URL=postgres://127.0.0.1:1/none", "PUBSUB_EMULATOR_HOST="+dead)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		stdin, err := cmd.StdinPipe() // its closing would tell the child we are gone
		if err != nil {
			t.Fatal(err)
		}
		defer stdin.Close()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err == nil {
				t.Fatalf("the runner exited 0:\n%s", out.String())
			}
		case <-time.After(bound):
			cmd.Process.Kill()
			<-done
			t.Fatalf("the runner still ran after %v:\n%s", bound, out.String())
		}
		if !strings.Contains(out.String(), "PUBSUB_EMULATOR_HOST="+dead) {
			t.Fatalf("the error does not name PUBSUB_EMULATOR_HOST=%s:\n%s", dead, out.String())
		}
	})

	t.Run("publish", func(t *testing.T) {
		t.Setenv("PUBSUB_EMULATOR_HOST", dead)
		ctx, cancel := context.WithTimeout(context.Background(), bound)
		defer cancel()
		var stdout, stderr bytes.Buffer
		err := publish(ctx, []string{"hello"}, nil, &stdout, &stderr)
		if ctx.Err() != nil {
			t.Fatalf("publish still ran after %v", bound)
		}
		if err == nil || !strings.Contains(err.Error()+stderr.String(), "PUBSUB_EMULATOR_HOST="+dead) {
			t.Fatalf("err = %v, stderr %q; want an error naming PUBSUB_EMULATOR_HOST=%s", err, stderr.String(), dead)
		}
	})
}
