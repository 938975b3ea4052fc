package main

import (
	"os"
	"testing"

	"example.com/pscmessages/store/localpg/localpgtest"
)

// The clusters of localpgtest.Start are copies of one template. The local
// PostgreSQL of a runner this binary starts as a child still runs initdb,
// as the runner does. The pull ingester some tests built goes afterwards.
func TestMain(m *testing.M) {
	code := localpgtest.Run(m)
	removePscpull()
	os.Exit(code)
}
