package main

import (
	"os"
	"testing"

	"example.com/pscmessages/store/localpg/localpgtest"
)

// The clusters of localpgtest.Start are copies of one template.
func TestMain(m *testing.M) { os.Exit(localpgtest.Run(m)) }
