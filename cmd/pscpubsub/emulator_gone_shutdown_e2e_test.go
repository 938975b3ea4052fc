//go:build e2e

package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

// interruptBound is what LOCAL.md promises for Ctrl-C: the requests in
// flight get up to 40 s, then the runner exits.
const interruptBound = 40 * time.Second

// TestInterruptWithTheEmulatorGoneStopsInTime: with PUBSUB_EMULATOR_HOST set
// and the emulator killed -9, a Ctrl-C stops the runner within the promised
// bound and exits 0. Nothing is in flight; the acknowledgements an emulator
// that is gone cannot take must not hold the exit (their messages come back
// and are recognised as stored).
func TestInterruptWithTheEmulatorGoneStopsInTime(t *testing.T) {
	env := newEmuEnv(t)
	url := env.database(t)
	r := env.serve(t, url, "gone")
	env.gcloudPublish(t, "gone", `--message={"content": "before the crash"}`)
	psWaitFor(t, 60*time.Second, "the message stored", func() bool { return emuRows(t, url, "before the crash") == 1 })

	env.emu.kill9(t)
	psWaitFor(t, 30*time.Second, "the runner to notice the emulator gone", func() bool {
		return strings.Contains(r.stderr.String(), "emulator is gone")
	})

	start := time.Now()
	r.stopped = true // stopped here, not by the cleanup
	if err := r.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.exited:
	case <-time.After(2 * interruptBound):
		r.cmd.Process.Kill()
		<-r.exited
		t.Fatalf("the runner did not stop within %v of Ctrl-C with the emulator gone", 2*interruptBound)
	}
	took := time.Since(start)
	t.Logf("stopped %.1f s after Ctrl-C", took.Seconds())
	if took > interruptBound {
		t.Errorf("the runner took %.1f s to stop after Ctrl-C with the emulator gone; LOCAL.md promises at most %v", took.Seconds(), interruptBound)
	}
	if !r.cmd.ProcessState.Success() {
		t.Errorf("the runner exited with %v", r.cmd.ProcessState)
	}
}
