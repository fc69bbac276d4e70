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
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// ServerName is the DNS name in every coordinator's certificate, and the
// name TLS clients of this package verify: coordinators are found by
// address (often a bare IP), and what proves a peer is a coordinator is
// the CA that signed its certificate, not its host name.
const ServerName = "lavit-coordinator"

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

// CertPEM is the CA's certificate in PEM, for tools that verify the
// coordinators themselves (curl --cacert, a Prometheus scrape config),
// with the server name ServerName.
func (ca *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.der})
}

// Fingerprint is the sha256 of the CA certificate, hex.
func (ca *CA) Fingerprint() string {
	sum := sha256.Sum256(ca.der)
	return hex.EncodeToString(sum[:])
}

// Issue makes a leaf certificate for a coordinator named name, with a
// fresh key, good for client and server authentication. The chain it
// returns includes the CA's certificate, so that a client that knows only
// the CA's fingerprint (PinnedTLS) can find it.
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
		DNSNames:     []string{ServerName},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate for %s: %w", name, err)
	}
	return tls.Certificate{Certificate: [][]byte{der, ca.der}, PrivateKey: priv}, nil
}

// MutualTLS is the TLS configuration of a coordinator's connections to
// and from other coordinators (raft, NATS routes): TLS 1.3, each side
// presents leaf and must present a certificate this CA issued.
func (ca *CA) MutualTLS(leaf tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{leaf},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.pool,
		RootCAs:      ca.pool,
		ServerName:   ServerName,
	}
}

// ServerTLS is the TLS configuration of a coordinator's listeners for
// clients (NATS clients, the HTTP API): it presents leaf and asks for no
// client certificate (clients prove themselves with a token).
func (ca *CA) ServerTLS(leaf tls.Certificate) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{leaf}}
}

// ClientTLS is the TLS configuration of a client that holds this CA (a
// coordinator, or whoever holds the admin token): it trusts coordinators
// of this cluster and nothing else.
func (ca *CA) ClientTLS() *tls.Config {
	cfg, _ := PinnedTLS(ca.Fingerprint()) // a valid fingerprint
	return cfg
}

// ErrWrongCluster: the server's certificate is not from the expected
// cluster CA. A client sees it when its token is another cluster's (or
// wrong), or when something else answers at the address.
var ErrWrongCluster = errors.New("the server is not a coordinator of this token's cluster (its certificate is not from the cluster CA the token names: a wrong token, or another server at that address)")

// PinnedTLS is the TLS configuration of a client that knows only the
// CA's fingerprint (hex sha256 of its certificate, as a worker token
// carries it): the server's chain must hold a CA certificate of that
// fingerprint that signed the server's certificate.
func PinnedTLS(fingerprint string) (*tls.Config, error) {
	want, err := hex.DecodeString(fingerprint)
	if err != nil || len(want) != sha256.Size {
		return nil, fmt.Errorf("CA fingerprint %q: want %d hex digits (a sha256)", fingerprint, 2*sha256.Size)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The chain is verified below against the pinned CA instead of
		// the system's roots.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyPinned(cs.PeerCertificates, want)
		},
	}, nil
}

// verifyPinned checks that certs (a server's chain, leaf first) hold a CA
// certificate whose sha256 is want, and that it issued the leaf for
// ServerName.
func verifyPinned(certs []*x509.Certificate, want []byte) error {
	if len(certs) == 0 {
		return fmt.Errorf("%w: it presented no certificate", ErrWrongCluster)
	}
	for _, c := range certs[1:] {
		sum := sha256.Sum256(c.Raw)
		if !c.IsCA || string(sum[:]) != string(want) {
			continue
		}
		pool := x509.NewCertPool()
		pool.AddCert(c)
		// The other certificates may link the leaf to the pinned CA: during
		// a rotation the leaf is the next CA's, cross-signed by the
		// current one (Keyring).
		opts := x509.VerifyOptions{Roots: pool, Intermediates: intermediates(certs[1:]), DNSName: ServerName}
		if _, err := certs[0].Verify(opts); err != nil {
			return fmt.Errorf("%w: %w", ErrWrongCluster, err)
		}
		return nil
	}
	return fmt.Errorf("%w: its chain holds no CA of fingerprint %x…", ErrWrongCluster, want[:8])
}
