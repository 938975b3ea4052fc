package localpg

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func templateContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func newTestTemplate(t *testing.T) *Template {
	t.Helper()
	tmpl, err := NewTemplate(templateContext(t), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tmpl.Remove() })
	return tmpl
}

// Clusters copied from one template are separate clusters: what one stores
// the other does not see, and each takes its own password.
func TestTemplateCopiesAreSeparateClusters(t *testing.T) {
	ctx := templateContext(t)
	tmpl := newTestTemplate(t)
	var urls []string
	for _, pw := range []string{"one", "two"} {
		c, err := Start(ctx, Options{Template: tmpl, Password: pw})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Destroy() })
		urls = append(urls, c.SuperuserURL("postgres"))
	}
	conn, err := pgx.Connect(ctx, urls[0])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE TABLE only_in_the_first (x int)"); err != nil {
		t.Fatal(err)
	}
	other, err := pgx.Connect(ctx, urls[1])
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	var n int
	if err := other.QueryRow(ctx, "SELECT count(*) FROM pg_class WHERE relname = 'only_in_the_first'").Scan(&n); err != nil || n != 0 {
		t.Fatalf("the second cluster sees the first one's table: count %d, %v", n, err)
	}
	if _, err := os.Lstat(filepath.Join(tmpl.dir, ownerFile)); err == nil {
		t.Error("starting a copy wrote into the template")
	}
}

// A symbolic link in the template (whose files the server's user owns when
// we are root) is refused, never followed: the copy would otherwise carry a
// file of ours into a cluster the server's user reads.
func TestTemplateCopyRefusesALink(t *testing.T) {
	ctx := templateContext(t)
	tmpl := newTestTemplate(t)
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("ours alone\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, filepath.Join(tmpl.dir, "pg_ident.conf.planted")); err != nil {
		t.Fatal(err)
	}
	c, err := Start(ctx, Options{Template: tmpl})
	if err == nil {
		c.Destroy()
		t.Fatal("a cluster started from a template holding a symbolic link")
	}
	if !strings.Contains(err.Error(), "pg_ident.conf.planted") {
		t.Errorf("the error does not name the link: %v", err)
	}
}
