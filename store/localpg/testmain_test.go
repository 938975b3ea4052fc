package localpg_test

import (
	"os"
	"testing"

	"example.com/pscmessages/store/localpg/localpgtest"
)

// The clusters of localpgtest.Start are copies of one template; the tests
// that call localpg.Start themselves run initdb.
func TestMain(m *testing.M) { os.Exit(localpgtest.Run(m)) }
