package store

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"example.com/pscmessages/store/localpg"
	"example.com/pscmessages/store/localpg/localpgtest"
	"example.com/pscmessages/store/metadatatest"
)

// These tests show that the IAM token goes only to a server whose
// certificate DB_ROOT_CERT vouches for: the token comes from the fake
// metadata server, as in production, and the login runs through the same
// loginConfig (pgxpool BeforeConnect) as Open.

const tlsTestRole = "iam_tls_user"

// tlsEnv is a TLS cluster whose role tlsTestRole's password follows the fake
// metadata server's tokens, and the server log to see what reached it.
type tlsEnv struct {
	cluster *localpg.Cluster
	meta    *metadatatest.Server
	log     *lockedBuffer
}

func newTLSEnv(t *testing.T) *tlsEnv {
	t.Helper()
	e := &tlsEnv{log: &lockedBuffer{}}
	// log_connections: the server logs every startup packet it receives
	// ("connection authorized: user=..." or an authentication failure), and
	// the role name travels only in that packet, after the TLS handshake.
	e.cluster = localpgtest.Start(t, localpg.Options{TLS: true, Password: "admin-pw", Log: e.log,
		Settings: map[string]string{"log_connections": "on"}})
	ctx := context.Background()
	if err := e.cluster.Exec(ctx, "CREATE ROLE "+tlsTestRole+" LOGIN"); err != nil {
		t.Fatal(err)
	}
	var err error
	e.meta, err = metadatatest.Start(metadatatest.Options{OnToken: func(tok string) error {
		return e.cluster.Exec(ctx, fmt.Sprintf("ALTER ROLE %s PASSWORD '%s'", tlsTestRole, tok))
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.meta.Close)
	// Google default credentials from the fake metadata server only.
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("CLOUDSDK_CONFIG", home)
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", "")
	t.Setenv("GCE_METADATA_HOST", e.meta.Host())
	return e
}

// ping logs in once, as Open would, to host:port with sslmode and rootCert.
func ping(t *testing.T, host string, port int, sslmode, rootCert string) error {
	t.Helper()
	cfg := Config{Host: host, Port: port, Database: "postgres", User: tlsTestRole, IAMAuth: true,
		SSLMode: sslmode, RootCert: rootCert, ConnectTimeout: 5 * time.Second}
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pc, err := cfg.loginConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	return pool.Ping(ctx)
}

func TestIAMTokenOnlyToAVerifiedServer(t *testing.T) {
	e := newTLSEnv(t)
	port := e.cluster.Port()
	otherCA := newTestCA(t, "another CA")

	t.Run("CA other than DB_ROOT_CERT: refused before authentication", func(t *testing.T) {
		before := e.meta.TokenFetches()
		mark := e.log.Len()
		for _, mode := range []string{"verify-ca", "verify-full"} {
			err := ping(t, "127.0.0.1", port, mode, otherCA.file)
			var unknown x509.UnknownAuthorityError
			if !errors.As(err, &unknown) {
				t.Fatalf("%s with another CA: err = %v, want x509.UnknownAuthorityError", mode, err)
			}
		}
		if e.meta.TokenFetches() == before {
			t.Fatal("no token was fetched; the test would prove nothing")
		}
		// The server never saw a startup packet, let alone a password.
		if got := e.log.From(mark); strings.Contains(got, tlsTestRole) {
			t.Fatalf("the server received a login for %s:\n%s", tlsTestRole, got)
		}
	})

	t.Run("right CA: logs in (the log check sees a login)", func(t *testing.T) {
		mark := e.log.Len()
		for _, mode := range []string{"verify-ca", "verify-full"} {
			if err := ping(t, "127.0.0.1", port, mode, e.cluster.CAFile); err != nil {
				t.Fatalf("%s with the cluster's CA: %v", mode, err)
			}
		}
		if got := e.log.From(mark); !strings.Contains(got, "user="+tlsTestRole) {
			t.Fatalf("the server log does not show the login, so the check above proves nothing:\n%s", got)
		}
	})

	t.Run("right CA, name mismatch under verify-full: refused", func(t *testing.T) {
		// 127.0.0.2 reaches the same server through a byte relay, but the
		// certificate names only localhost, 127.0.0.1 and ::1.
		relay := startRelay(t, "127.0.0.2:0", fmt.Sprintf("127.0.0.1:%d", port))
		mark := e.log.Len()
		err := ping(t, "127.0.0.2", relay, "verify-full", e.cluster.CAFile)
		var mismatch x509.HostnameError
		if !errors.As(err, &mismatch) {
			t.Fatalf("verify-full against a name the certificate lacks: err = %v, want x509.HostnameError", err)
		}
		if got := e.log.From(mark); strings.Contains(got, tlsTestRole) {
			t.Fatalf("the server received a login for %s:\n%s", tlsTestRole, got)
		}
		// verify-ca checks the chain only, so the same path logs in.
		if err := ping(t, "127.0.0.2", relay, "verify-ca", e.cluster.CAFile); err != nil {
			t.Fatalf("verify-ca through the relay: %v", err)
		}
	})
}

// TestImpostorNeverGetsTheToken puts a server that asks for a cleartext
// password at the database's address, with a certificate of its own, and
// records what clients send it after the TLS handshake.
func TestImpostorNeverGetsTheToken(t *testing.T) {
	e := newTLSEnv(t)
	trusted := newTestCA(t, "the instance's CA")
	attacker := newTestCA(t, "an attacker's CA")
	loopback := []net.IP{net.IPv4(127, 0, 0, 1)}
	cases := []struct {
		name     string
		cert     tls.Certificate // what the impostor presents
		sslmode  string
		rootCert string
		leaks    bool
	}{
		// The old default: encrypted, but to anyone.
		{name: "require sends the token to anyone", cert: attacker.serverCert(t, nil, loopback), sslmode: "require", leaks: true},
		{name: "verify-ca refuses another CA", cert: attacker.serverCert(t, nil, loopback), sslmode: "verify-ca", rootCert: trusted.file},
		{name: "verify-full refuses another CA", cert: attacker.serverCert(t, nil, loopback), sslmode: "verify-full", rootCert: trusted.file},
		{name: "verify-full refuses the right CA for another name", cert: trusted.serverCert(t, []string{"other-instance.example.internal"}, nil), sslmode: "verify-full", rootCert: trusted.file},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			imp := startImpostor(t, tc.cert)
			err := ping(t, "127.0.0.1", imp.port, tc.sslmode, tc.rootCert)
			if err == nil {
				t.Fatal("logged in to the impostor")
			}
			token := e.meta.LastToken()
			if token == "" {
				t.Fatal("no token was fetched; the test would prove nothing")
			}
			got := imp.Received()
			if tc.leaks {
				if !bytes.Contains(got, []byte(token)) {
					t.Fatalf("with %s the impostor should have received the token; it received %q", tc.sslmode, got)
				}
				return
			}
			if len(got) != 0 || bytes.Contains(got, []byte(token)) {
				t.Fatalf("the impostor received %d bytes after the handshake (token among them: %v)", len(got), bytes.Contains(got, []byte(token)))
			}
		})
	}
}

// TestPaddedTokenLogsIn: the fake metadata server pads tokens with dots, as
// some Google token endpoints have; the login uses the token without them.
func TestPaddedTokenLogsIn(t *testing.T) {
	e := newTLSEnv(t)
	e.meta.SetTokenPadding(256)
	if err := ping(t, "127.0.0.1", e.cluster.Port(), "verify-full", e.cluster.CAFile); err != nil {
		t.Fatalf("login with a padded token: %v", err)
	}
}

func TestTrimTokenPadding(t *testing.T) {
	for in, want := range map[string]string{
		"ya29.abc":       "ya29.abc",
		"ya29.abc......": "ya29.abc",
		"ya29.abc.":      "ya29.abc",
		"":               "",
	} {
		if got := trimTokenPadding(in); got != want {
			t.Errorf("trimTokenPadding(%q) = %q, want %q", in, got, want)
		}
	}
}

// ---- helpers ----

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Len()
}

// From returns what was written after mark, once the server had a moment to
// log what it received.
func (l *lockedBuffer) From(mark int) string {
	time.Sleep(300 * time.Millisecond)
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()[mark:]
}

// testCA is a throwaway certificate authority; file is its PEM certificate.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		Subject:   pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, file: file}
}

func (ca *testCA) serverCert(t *testing.T, names []string, ips []net.IP) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		Subject:  pkix.Name{CommonName: "server"},
		DNSNames: names, IPAddresses: ips,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// impostor speaks just enough of the PostgreSQL protocol to get a password:
// it accepts the SSLRequest, completes a TLS handshake with its own
// certificate, reads the startup message, asks for a cleartext password and
// reads the answer. Everything it reads after the handshake is recorded.
type impostor struct {
	port     int
	mu       sync.Mutex
	received bytes.Buffer
}

func (i *impostor) Received() []byte {
	i.mu.Lock()
	defer i.mu.Unlock()
	return bytes.Clone(i.received.Bytes())
}

func startImpostor(t *testing.T, cert tls.Certificate) *impostor {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	imp := &impostor{port: ln.Addr().(*net.TCPAddr).Port}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				imp.serve(c, cert)
			}()
		}
	}()
	return imp
}

func (i *impostor) serve(c net.Conn, cert tls.Certificate) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var req [8]byte // length 8, code 80877103
	if _, err := io.ReadFull(c, req[:]); err != nil || binary.BigEndian.Uint32(req[4:]) != 80877103 {
		return
	}
	if _, err := c.Write([]byte{'S'}); err != nil {
		return
	}
	tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
	if err := tc.Handshake(); err != nil {
		return // the client refused our certificate
	}
	record := func(b []byte) {
		i.mu.Lock()
		defer i.mu.Unlock()
		i.received.Write(b)
	}
	// Startup message: int32 length (itself included), then the body.
	var n [4]byte
	if _, err := io.ReadFull(tc, n[:]); err != nil {
		return
	}
	record(n[:])
	body := make([]byte, max(0, int(binary.BigEndian.Uint32(n[:]))-4))
	if _, err := io.ReadFull(tc, body); err != nil {
		return
	}
	record(body)
	// AuthenticationCleartextPassword.
	if _, err := tc.Write([]byte{'R', 0, 0, 0, 8, 0, 0, 0, 3}); err != nil {
		return
	}
	// PasswordMessage: 'p', int32 length, the password.
	var head [5]byte
	if _, err := io.ReadFull(tc, head[:]); err != nil {
		return
	}
	record(head[:])
	pw := make([]byte, min(64<<10, max(0, int(binary.BigEndian.Uint32(head[1:]))-4)))
	io.ReadFull(tc, pw)
	record(pw)
}

// startRelay forwards connections from a listener on listen to target, byte
// for byte, and returns its port.
func startRelay(t *testing.T, listen, target string) int {
	t.Helper()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				s, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer s.Close()
				done := make(chan struct{})
				go func() { io.Copy(s, c); s.(*net.TCPConn).CloseWrite(); close(done) }()
				io.Copy(c, s)
				c.(*net.TCPConn).CloseWrite()
				<-done
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}
