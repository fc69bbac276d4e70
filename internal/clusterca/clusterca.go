// Package clusterca is the coordinators' certificate authority. It is
// derived from the cluster's admin token, which every coordinator already
// holds (it needs it to join): each derives the same CA (an Ed25519 key
// from HKDF-SHA256 of the token, a self-signed certificate with fixed
// fields, so the same bytes everywhere) and issues itself a leaf
// certificate for mutual TLS between coordinators. Nothing to copy
// between nodes, and whoever lacks the token has no certificate the
// cluster accepts. The CA changes only with the admin token.
package clusterca

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// CA is a cluster's certificate authority.
type CA struct {
	cert *x509.Certificate
	der  []byte
	key  ed25519.PrivateKey
	pool *x509.CertPool
}

// Derive makes the CA of the cluster whose admin token is adminToken.
func Derive(adminToken string) (*CA, error) {
	if len(adminToken) < 16 {
		return nil, errors.New("cluster CA: the admin token is too short to derive a key from")
	}
	seed, err := hkdf.Key(sha256.New, []byte(adminToken), []byte("lavit"), "lavit cluster ca v1", ed25519.SeedSize)
	if err != nil {
		return nil, fmt.Errorf("cluster CA: derive the key: %w", err)
	}
	key := ed25519.NewKeyFromSeed(seed)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "lavit cluster CA"},
		NotBefore:             time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(2120, 1, 1, 0, 0, 0, 0, time.UTC),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	// Ed25519 signatures are deterministic: the same certificate bytes on
	// every node.
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &CA{cert: cert, der: der, key: key, pool: pool}, nil
}

// Fingerprint is the sha256 of the CA certificate, hex.
func (ca *CA) Fingerprint() string {
	sum := sha256.Sum256(ca.der)
	return hex.EncodeToString(sum[:])
}

// Issue makes a leaf certificate for a coordinator named name, with a
// fresh key, good for client and server authentication.
func (ca *CA) Issue(name string) (tls.Certificate, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate for %s: %w", name, err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate for %s: %w", name, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name, Organization: []string{"lavit coordinators"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate for %s: %w", name, err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}, nil
}

// MutualTLS is the TLS configuration of a coordinator's connections to
// and from other coordinators: TLS 1.3, each side presents leaf and
// must present a certificate this CA issued. Peers are authenticated by
// the CA alone, not by host name: raft addresses are often bare IPs.
func (ca *CA) MutualTLS(leaf tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{leaf},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.pool,
		RootCAs:      ca.pool,
		// The dialling side verifies the chain below instead of a host
		// name; the accepting side's ClientCAs check is the standard one.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return ca.verify(cs.PeerCertificates)
		},
	}
}

// verify checks that certs (the peer's chain, leaf first) lead to this CA.
func (ca *CA) verify(certs []*x509.Certificate) error {
	if len(certs) == 0 {
		return errors.New("the peer presented no certificate (not a coordinator of this cluster)")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: ca.pool, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return fmt.Errorf("the peer's certificate is not from this cluster's CA: %w", err)
	}
	return nil
}
