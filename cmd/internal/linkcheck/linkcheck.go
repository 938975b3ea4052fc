// Package linkcheck tells which packages a command links that it must not.
// Only tests import it: each command that ships pins what it leaves out.
package linkcheck

import (
	"fmt"
	"os/exec"
	"slices"
	"strings"
)

// Forbidden lists the packages of the module in dir (a command's folder)
// that are in forbidden or import one of them, as `go list -deps` reports
// them: empty when the command links none.
func Forbidden(dir string, forbidden []string) ([]string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return nil, fmt.Errorf("the go command is needed to list what a command links: %w", err)
	}
	cmd := exec.Command(goTool, "list", "-deps", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", ".")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return nil, fmt.Errorf("go list -deps: %w: %s", err, ee.Stderr)
		}
		return nil, fmt.Errorf("go list -deps: %w", err)
	}
	var bad []string
	for line := range strings.Lines(string(out)) {
		pkg, imports, _ := strings.Cut(strings.TrimSpace(line), " ")
		if slices.Contains(forbidden, pkg) {
			bad = append(bad, pkg)
			continue
		}
		for _, imp := range strings.Fields(imports) {
			if slices.Contains(forbidden, imp) {
				bad = append(bad, pkg+" (imports "+imp+")")
			}
		}
	}
	return bad, nil
}
