package telemetry

import (
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
)

// runnerOwnsSignals is set when a local runner serves the functions: it
// handles SIGTERM itself and shuts telemetry down.
var runnerOwnsSignals atomic.Bool

// RunnerOwnsSignals tells FlushOnSIGTERM that a local runner handles SIGTERM
// itself (and calls Shutdown).
func RunnerOwnsSignals() { runnerOwnsSignals.Store(true) }

// FlushOnSIGTERM flushes telemetry when Cloud Run stops the instance: it
// sends SIGTERM and kills the process 10 s later, and functions-framework-go
// neither handles the signal nor offers a shutdown hook. After the flush the
// signal is raised again, for its default action (exit).
func (t *Telemetry) FlushOnSIGTERM(getenv func(string) string) {
	if t == nil || getenv("K_SERVICE") == "" {
		return
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM)
	go func() {
		<-ch
		signal.Stop(ch)
		if runnerOwnsSignals.Load() {
			return
		}
		_ = t.Shutdown()
		_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
	}()
}
