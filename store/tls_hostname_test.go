package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"example.com/pscmessages/store/localpg"
	"example.com/pscmessages/store/localpg/localpgtest"
)

// TestOpenHostnameMismatchIsPermanent: under verify-full, a server whose
// certificate the configured CA signed but for other names (here reached at
// 127.0.0.2, while its certificate names 127.0.0.1, ::1 and localhost) is
// refused for good, naming DB_ROOT_CERT: retrying cannot change a
// certificate, so a 503 would send clients round a loop that never ends.
func TestOpenHostnameMismatchIsPermanent(t *testing.T) {
	server := localpgtest.Shared(t, localpg.Options{TLS: true})
	port := startRelay(t, "127.0.0.2:0", fmt.Sprintf("%s:%d", server.Host(), server.Port()))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := Config{Database: "postgres", User: "postgres", Password: "unused", SSLMode: "verify-full",
		RootCert: server.CAFile, ConnectTimeout: 5 * time.Second, Migrate: true}

	// The same server and CA at a name the certificate holds: the handshake
	// verifies, so what fails below is the name alone.
	cfg.Host, cfg.Port = server.Host(), server.Port()
	if st, err := Open(ctx, cfg); err != nil {
		t.Fatalf("verify-full at %s: %v", cfg.Host, err)
	} else {
		st.Close()
	}
	cfg.Host, cfg.Port = "127.0.0.2", port
	_, err := Open(ctx, cfg)
	if !errors.Is(err, ErrPermanent) || errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "DB_ROOT_CERT") {
		t.Fatalf("err = %v, want ErrPermanent naming DB_ROOT_CERT", err)
	}
}
