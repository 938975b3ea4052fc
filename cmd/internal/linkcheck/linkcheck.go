// Package linkcheck tells which packages a command links that it must not.
// Only tests import it: each command that ships pins what it leaves out.
package linkcheck

import (
	"fmt"
	"os/exec"
	"slices"
	"strings"
)

// Forbidden lists the packages of the command in dir (its folder), built
// with tags (comma-separated, or ""), that are in forbidden or import one
// of them, as `go list -deps` reports them: empty when the command links
// none.
func Forbidden(dir, tags string, forbidden []string) ([]string, error) {
	deps, err := list(dir, tags)
	if err != nil {
		return nil, err
	}
	var bad []string
	for _, d := range deps {
		if slices.Contains(forbidden, d.pkg) {
			bad = append(bad, d.pkg)
			continue
		}
		for _, imp := range d.imports {
			if slices.Contains(forbidden, imp) {
				bad = append(bad, d.pkg+" (imports "+imp+")")
			}
		}
	}
	return bad, nil
}

// Missing lists those of want that the command in dir, built with tags,
// does not link.
func Missing(dir, tags string, want []string) ([]string, error) {
	deps, err := list(dir, tags)
	if err != nil {
		return nil, err
	}
	var missing []string
	for _, w := range want {
		if !slices.ContainsFunc(deps, func(d dep) bool { return d.pkg == w }) {
			missing = append(missing, w)
		}
	}
	return missing, nil
}

type dep struct {
	pkg     string
	imports []string
}

func list(dir, tags string) ([]dep, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return nil, fmt.Errorf("the go command is needed to list what a command links: %w", err)
	}
	cmd := exec.Command(goTool, "list", "-tags", tags, "-deps", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", ".")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return nil, fmt.Errorf("go list -tags %q -deps: %w: %s", tags, err, ee.Stderr)
		}
		return nil, fmt.Errorf("go list -tags %q -deps: %w", tags, err)
	}
	var deps []dep
	for line := range strings.Lines(string(out)) {
		pkg, imports, _ := strings.Cut(strings.TrimSpace(line), " ")
		deps = append(deps, dep{pkg: pkg, imports: strings.Fields(imports)})
	}
	return deps, nil
}
