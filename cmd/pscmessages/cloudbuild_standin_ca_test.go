package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// The deployed functions read DB_ROOT_CERT from a Secret Manager mount that
// does not exist on the machine running the drift test, and the code reads
// and parses that file while it checks the configuration. cbStandInCA is a
// real CA certificate the checker puts at that path's place, so the rest of
// the environment is judged by the code as it would be on Cloud Run.
var cbStandInCA = sync.OnceValues(func() (string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "drift-test stand-in CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "cbca")
	if err != nil {
		return "", err
	}
	cbStandInDir = dir
	path := filepath.Join(dir, "ca.pem")
	return path, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
})

// cbStandInDir is the folder of cbStandInCA's file, removed by TestMain.
var cbStandInDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if cbStandInDir != "" {
		os.RemoveAll(cbStandInDir)
	}
	os.Exit(code)
}

// cbGetenv is env as the code would read it on Cloud Run, with the mounted
// CA file replaced by the stand-in.
func cbGetenv(env map[string]string) func(string) string {
	return func(k string) string {
		if k == "DB_ROOT_CERT" && env[k] != "" {
			if path, err := cbStandInCA(); err == nil {
				return path
			}
		}
		return env[k]
	}
}
