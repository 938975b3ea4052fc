package localrun

import (
	"os"
	"testing"

	"example.com/pscmessages/store/localpg"
	"example.com/pscmessages/store/localpg/localpgtest"
)

// The tests that need only a database of their own share one trust cluster
// (sharedDatabase); those that need a cluster of their own (roles, a
// password, durability) start one with localpgtest.Start. Both are copies of
// one template. The local PostgreSQL of a runner this binary starts as a
// child still runs initdb, as the runner does. A child (TestServeProcess,
// TestMainProcess) runs no database test, so it starts no shared cluster.
func TestMain(m *testing.M) {
	_, serve := os.LookupEnv(serveArgsEnv)
	_, main := os.LookupEnv(mainArgsEnv)
	if serve || main {
		os.Exit(localpgtest.Run(m))
	}
	os.Exit(localpgtest.RunWithCluster(m, localpg.Options{}, &shared))
}
