package deadletter_test

import (
	"context"
	"fmt"
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
	teardown := localpgtest.Setup()
	var err error
	cluster, err = localpg.Start(context.Background(), localpg.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: cannot start a throwaway PostgreSQL cluster:", err)
		teardown()
		os.Exit(1)
	}
	code := m.Run()
	cluster.Destroy()
	teardown()
	os.Exit(code)
}

// testContext bounds what a test waits for the database, so that a lock
// nobody releases fails the test within seconds.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
