package function

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestDeliveriesEnterOnlyOverHTTP pins the one ingest path: a delivery
// reaches the function as an HTTP request to a registered entry point, read
// within the size limits and the memory budget (serveEvent), and nowhere
// else. So the package registers its entry points with functions.HTTP only
// (the framework's CloudEvent adapter would decode events outside those
// limits), takes no decoded CloudEvent from sdk-go in any exported function
// or method, and every exported HTTP handler is a registered entry point.
func TestDeliveriesEnterOnlyOverHTTP(t *testing.T) {
	fset := token.NewFileSet()
	entries, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	for _, e := range entries {
		if name := e.Name(); strings.HasSuffix(name, ".go") && !strings.HasSuffix(name, "_test.go") {
			f, err := parser.ParseFile(fset, name, nil, parser.SkipObjectResolution)
			if err != nil {
				t.Fatal(err)
			}
			files = append(files, f)
		}
	}
	if len(files) == 0 {
		t.Fatal("no source files in the package directory")
	}
	registered := map[string]bool{} // the Go functions named by functions.HTTP
	var handlers []string           // exported funcs of the shape of an HTTP handler
	for _, f := range files {
		for _, imp := range f.Imports {
			if path, _ := strconv.Unquote(imp.Path.Value); strings.HasPrefix(path, "github.com/cloudevents/sdk-go") {
				t.Errorf("%s imports %s: deliveries are decoded by serveEvent from the HTTP request, not taken as sdk-go events",
					fset.Position(imp.Pos()), path)
			}
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if pkg, ok := sel.X.(*ast.Ident); !ok || pkg.Name != "functions" {
				return true
			}
			if sel.Sel.Name != "HTTP" {
				t.Errorf("%s: functions.%s registers an entry point; only functions.HTTP keeps deliveries within serveEvent's limits",
					fset.Position(call.Pos()), sel.Sel.Name)
				return true
			}
			if len(call.Args) == 2 {
				if fn, ok := call.Args[1].(*ast.Ident); ok {
					registered[fn.Name] = true
				}
			}
			return true
		})
		for _, d := range f.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || !fn.Name.IsExported() || (fn.Recv != nil && !receiverExported(fn.Recv)) {
				continue
			}
			if fn.Recv == nil && isHandlerSignature(fn.Type) {
				handlers = append(handlers, fn.Name.Name)
			}
			for _, p := range fn.Type.Params.List {
				if sel, ok := p.Type.(*ast.SelectorExpr); ok && sel.Sel.Name == "Event" {
					t.Errorf("%s: exported %s takes an event (%s.Event): a second ingest path beside the HTTP entry points",
						fset.Position(fn.Pos()), fn.Name.Name, sel.X)
				}
			}
		}
	}
	if !registered["serveEvent"] {
		t.Errorf("IngestPubSub's handler serveEvent is not registered with functions.HTTP (registered: %v)", registered)
	}
	for _, h := range handlers {
		if !registered[h] {
			t.Errorf("exported HTTP handler %s is not an entry point the framework registers (registered: %v)", h, registered)
		}
	}
	if !slices.Contains(handlers, "Messages") {
		t.Errorf("Messages is not an exported HTTP handler (exported handlers: %v)", handlers)
	}
}

// receiverExported reports whether a method's receiver type is exported.
func receiverExported(recv *ast.FieldList) bool {
	typ := recv.List[0].Type
	if star, ok := typ.(*ast.StarExpr); ok {
		typ = star.X
	}
	id, ok := typ.(*ast.Ident)
	return ok && id.IsExported()
}

// isHandlerSignature reports func(http.ResponseWriter, *http.Request).
func isHandlerSignature(ft *ast.FuncType) bool {
	var types []string
	for _, p := range ft.Params.List {
		s := exprString(p.Type)
		for range max(len(p.Names), 1) {
			types = append(types, s)
		}
	}
	return slices.Equal(types, []string{"http.ResponseWriter", "*http.Request"})
}

func exprString(e ast.Expr) string {
	switch e := e.(type) {
	case *ast.StarExpr:
		return "*" + exprString(e.X)
	case *ast.SelectorExpr:
		return exprString(e.X) + "." + e.Sel.Name
	case *ast.Ident:
		return e.Name
	}
	return ""
}
