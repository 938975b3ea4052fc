//go:build e2e

package localrun

// Planting a folder owned by another user needs root, so this test is in
// the end-to-end tier, which CI runs as root; run as another user it fails
// rather than skip.

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestServeRefusesADefaultFolderAnotherUserMade: the default data folder's
// name is easy to guess, so another user can make it first. The runner,
// with and without -fresh, must refuse it, naming it and what to do, and
// create nothing in it.
func TestServeRefusesADefaultFolderAnotherUserMade(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("planting a folder owned by another user needs root (chown): run the e2e tier as root, as CI does")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("this test needs an OS user nobody: %v", err)
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	for _, fresh := range []bool{false, true} {
		t.Run(fmt.Sprintf("fresh=%v", fresh), func(t *testing.T) {
			plantedTMPDIR(t)
			parent := filepath.Dir(defaultPGData())
			if err := os.Mkdir(parent, 0o777); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(parent, uid, -1); err != nil {
				t.Fatal(err)
			}
			c, err := startLocalPostgres(context.Background(), fresh)
			if err == nil {
				c.Destroy()
				t.Fatal("the runner used a data folder another user made")
			}
			for _, want := range []string{parent, "is owned by uid " + nobody.Uid, "LOCAL_PGDATA"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("the refusal does not say %q: %v", want, err)
				}
			}
			if entries, _ := os.ReadDir(parent); len(entries) > 0 {
				t.Errorf("the runner wrote %s into the planted folder", entries[0].Name())
			}
		})
	}
}
