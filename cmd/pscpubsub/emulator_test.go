//go:build e2e

package main

// The official Pub/Sub emulator and the real gcloud CLI, for the tests that
// check the runner against the tools users run: `gcloud beta emulators pubsub
// start` and `gcloud pubsub topics publish`. Both come from the Cloud SDK
// (Debian: google-cloud-cli and google-cloud-cli-pubsub-emulator, with a Java
// runtime); .ci/run installs them. A test that cannot start them fails.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// emulator is a running official Pub/Sub emulator: the gcloud wrapper and
// its java child, in a process group of their own.
type emulator struct {
	Project string
	Addr    string // 127.0.0.1:PORT, what PUBSUB_EMULATOR_HOST takes
	config  string // CLOUDSDK_CONFIG of this emulator and of the gcloud calls
	cmd     *exec.Cmd
	log     *psBuffer
	exited  chan struct{}
	// watcher stops the group if this process dies; lifeline is its stdin.
	watcher  *exec.Cmd
	lifeline io.WriteCloser
}

// emulatorStartTimeout bounds the JVM's start on a loaded machine; it starts
// in about 2 s on an idle one.
const emulatorStartTimeout = 90 * time.Second

// startEmulator starts the official emulator for project on a free loopback
// port and stops it (the whole process group) when the test ends.
func startEmulator(t testing.TB, project string) *emulator {
	t.Helper()
	if _, err := exec.LookPath("gcloud"); err != nil {
		t.Fatalf("gcloud is not installed (Debian: apt-get install google-cloud-cli google-cloud-cli-pubsub-emulator): %v", err)
	}
	e := &emulator{Project: project, Addr: "127.0.0.1:" + psFreePort(t), config: t.TempDir()}
	e.start(t)
	t.Cleanup(func() {
		e.stop(t)
		if t.Failed() {
			t.Logf("emulator log (tail):\n%s", psTail(e.log.String(), 3000))
		}
	})
	return e
}

// env is the environment of every gcloud command run against this emulator:
// no account, no credentials, the Pub/Sub API at the emulator.
func (e *emulator) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, "CLOUDSDK_") || strings.HasPrefix(name, "PUBSUB_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"CLOUDSDK_CONFIG="+e.config,
		"CLOUDSDK_CORE_PROJECT="+e.Project,
		"CLOUDSDK_AUTH_DISABLE_CREDENTIALS=true",
		"CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB=http://"+e.Addr+"/",
		"CLOUDSDK_CORE_DISABLE_PROMPTS=1",
		"CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK=true",
		"CLOUDSDK_CORE_DISABLE_USAGE_REPORTING=true",
	)
}

// start runs the emulator on e.Addr and returns once it answers HTTP.
func (e *emulator) start(t testing.TB) {
	t.Helper()
	_, port, _ := strings.Cut(e.Addr, ":")
	e.log = &psBuffer{}
	e.exited = make(chan struct{})
	// The port may still be held for a moment by a JVM that just exited.
	deadline := time.Now().Add(emulatorStartTimeout)
	for {
		e.cmd = exec.Command("gcloud", "beta", "emulators", "pubsub", "start",
			"--project="+e.Project, "--host-port=127.0.0.1:"+port)
		e.cmd.Env = e.env()
		e.cmd.Stdout, e.cmd.Stderr = e.log, e.log
		// Its own group: killing the gcloud wrapper alone leaves java running.
		e.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := e.cmd.Start(); err != nil {
			t.Fatalf("starting the Pub/Sub emulator: %v", err)
		}
		e.watch(t)
		exited := make(chan struct{})
		go func() { e.cmd.Wait(); close(exited) }()
		err := e.waitReady(exited, deadline)
		if err == nil {
			e.exited = exited
			return
		}
		e.killGroup()
		<-exited
		e.unwatch()
		if !strings.Contains(e.log.String(), "Address already in use") || time.Now().After(deadline) {
			t.Fatalf("the Pub/Sub emulator did not start (%v); is google-cloud-cli-pubsub-emulator installed, with Java?\n%s", err, psTail(e.log.String(), 3000))
		}
		e.log = &psBuffer{}
		time.Sleep(200 * time.Millisecond)
	}
}

func (e *emulator) waitReady(exited <-chan struct{}, deadline time.Time) error {
	client := &http.Client{Timeout: time.Second}
	for {
		select {
		case <-exited:
			return errors.New("it exited")
		default:
		}
		if resp, err := client.Get("http://" + e.Addr + "/"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer at %s within %v", e.Addr, emulatorStartTimeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// watch starts a shell, outside the emulator's group, that stops the group
// when this process dies without cleaning up (a test binary killed by
// -timeout runs no t.Cleanup): it waits for EOF on a pipe from this process.
func (e *emulator) watch(t testing.TB) {
	t.Helper()
	w := exec.Command("sh", "-c", `read -r _; kill -TERM -- -"$1" 2>/dev/null; exit 0`, "sh", strconv.Itoa(e.cmd.Process.Pid))
	lifeline, err := w.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatalf("starting the emulator's watcher: %v", err)
	}
	e.watcher, e.lifeline = w, lifeline
}

// unwatch ends the watcher once the group is gone.
func (e *emulator) unwatch() {
	e.lifeline.Close()
	e.watcher.Wait()
}

// killGroup stops the wrapper and java with SIGTERM, then SIGKILL, and waits
// until no process of the group is left.
func (e *emulator) killGroup() {
	pgid := e.cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGTERM)
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(-pgid, 0) == nil {
		if time.Now().After(deadline) {
			syscall.Kill(-pgid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop stops the emulator; everything it held is lost, as on a real restart.
func (e *emulator) stop(t testing.TB) {
	t.Helper()
	if e.cmd == nil {
		return
	}
	e.killGroup()
	<-e.exited
	e.unwatch()
	e.cmd = nil
}

// kill9 kills the emulator's whole group with SIGKILL, as a crash or an
// OOM kill would: nothing of it shuts down in order.
func (e *emulator) kill9(t testing.TB) {
	t.Helper()
	if e.cmd == nil {
		return
	}
	syscall.Kill(-e.cmd.Process.Pid, syscall.SIGKILL)
	<-e.exited
	e.unwatch()
	e.cmd = nil
}

// restart stops the emulator and starts a fresh one on the same address.
func (e *emulator) restart(t testing.TB) {
	t.Helper()
	e.stop(t)
	e.start(t)
}

// gcloud runs the real gcloud CLI against the emulator and returns its
// stdout; a failure fails the test with gcloud's own message.
func (e *emulator) gcloud(t testing.TB, args ...string) string {
	t.Helper()
	out, err := e.tryGcloud(args...)
	if err != nil {
		t.Fatalf("gcloud %s: %v", strings.Join(gcloudPreview(args), " "), err)
	}
	return out
}

func (e *emulator) tryGcloud(args ...string) (string, error) {
	cmd := exec.Command("gcloud", args...)
	cmd.Env = e.env()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// gcloudPreview shortens long arguments (an oversized --message) for errors.
func gcloudPreview(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if len(a) > 80 {
			a = fmt.Sprintf("%s…(%d bytes)", a[:60], len(a))
		}
		out[i] = a
	}
	return out
}
