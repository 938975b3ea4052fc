package localrun

import (
	"fmt"
	"sync/atomic"
	"testing"

	"example.com/pscmessages/store/localpg"
)

// shared is the package's trust cluster, started by TestMain.
var shared *localpg.Cluster

var sharedSeq atomic.Int64

// sharedDatabase creates an empty database of the test's own on the shared
// cluster, named prefix and a number, and returns the cluster and the name.
// A test that changes anything beyond its database (roles, settings, the
// server's state) starts a cluster of its own instead.
func sharedDatabase(t testing.TB, prefix string) (*localpg.Cluster, string) {
	t.Helper()
	name := fmt.Sprintf("%s_%d", prefix, sharedSeq.Add(1))
	if err := shared.CreateDatabase(t.Context(), name); err != nil {
		t.Fatal(err)
	}
	return shared, name
}
