package localpg

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"time"
)

// writeTLS makes sure the data directory holds a server certificate for the
// loopback names, signed by a throwaway CA whose certificate goes to CAFile.
// Existing files are kept, so that clients of a reused Dir keep trusting the
// same CA. The CA key is never stored: nothing else is ever signed with it.
func (c *Cluster) writeTLS() error {
	c.CAFile = filepath.Join(c.Dir, caFile)
	if exist(c.CAFile, filepath.Join(c.Dir, certFile), filepath.Join(c.Dir, keyFile)) {
		return nil
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	// A nil SerialNumber makes CreateCertificate pick a random one.
	caTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "localpg throwaway CA"},
		NotBefore:             now.Add(-time.Hour), // tolerate clock skew
		NotAfter:              now.AddDate(10, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	certDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    now.AddDate(10, 0, 0),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	pemBlock := func(typ string, der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}) }
	// The server refuses a key that others can read.
	if err := c.writeFile(keyFile, pemBlock("PRIVATE KEY", keyDER), 0o600); err != nil {
		return err
	}
	if err := c.writeFile(certFile, pemBlock("CERTIFICATE", certDER), 0o644); err != nil {
		return err
	}
	return c.writeFile(caFile, pemBlock("CERTIFICATE", caDER), 0o644)
}

func exist(paths ...string) bool {
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			return false
		}
	}
	return true
}
