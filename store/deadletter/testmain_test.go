package deadletter_test

import (
	"context"
	"os"
	"testing"
	"time"

	"example.com/pscmessages/store/localpg"
	"example.com/pscmessages/store/localpg/localpgtest"
)

var cluster *localpg.Cluster

// One throwaway cluster serves every test of the package; each test makes
// its own database in it.
func TestMain(m *testing.M) {
	os.Exit(localpgtest.RunWithCluster(m, localpg.Options{}, &cluster))
}

// testContext bounds what a test waits for the database, so that a lock
// nobody releases fails the test within seconds.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
