package main

import (
	"os"
	"testing"

	"example.com/pscmessages/store/localpg/localpgtest"
)

// The clusters of localpgtest.Start are copies of one template. The local
// PostgreSQL of a runner this binary starts as a child still runs initdb,
// as the runner does.
func TestMain(m *testing.M) { os.Exit(localpgtest.Run(m)) }
