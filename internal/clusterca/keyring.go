package clusterca

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// Keyring is what one coordinator presents and trusts on its TLS
// connections, changeable while they run: rotating the admin token
// (and so the CA) swaps it without restarting a listener. Every TLS
// configuration it makes reads the keyring at each handshake.
//
// Outside a rotation the node presents a leaf of the current CA and
// trusts that CA alone. During one it presents a leaf of the next CA,
// with a copy of the next CA's certificate signed by the current CA (a
// cross-signature), so that clients and peers still pinned to the
// current CA accept it, and it trusts both. Finishing the rotation makes
// the next CA the current one: the old CA is trusted no more, and
// clients pinned to it are refused.
type Keyring struct {
	name  string
	mu    sync.Mutex // serialises Set
	state atomic.Pointer[keyState]
}

// keyState is one immutable setting of a Keyring.
type keyState struct {
	current, next *CA // next nil: no rotation in progress
	chain         tls.Certificate
	trust         *x509.CertPool
}

// NewKeyring makes the keyring of the coordinator named name, with ca
// as its current CA and no rotation in progress.
func NewKeyring(name string, ca *CA) (*Keyring, error) {
	k := &Keyring{name: name}
	if err := k.Set(ca, nil); err != nil {
		return nil, err
	}
	return k, nil
}

// Set makes current the trusted CA and, with next non-nil, starts (or
// keeps) a rotation to next. Setting what is already set does nothing,
// so callers may repeat it; a new leaf is issued only when the CA that
// signs this node's certificate changes.
func (k *Keyring) Set(current, next *CA) error {
	if current == nil {
		return errors.New("keyring: no current CA")
	}
	if next != nil && next.Fingerprint() == current.Fingerprint() {
		next = nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	old := k.state.Load()
	if old != nil && sameCA(old.current, current) && sameCA(old.next, next) {
		return nil
	}
	signer := current
	if next != nil {
		signer = next
	}
	var leaf tls.Certificate
	if old != nil && sameCA(old.signer(), signer) {
		leaf = tls.Certificate{Certificate: old.chain.Certificate[:1], PrivateKey: old.chain.PrivateKey}
	} else {
		var err error
		if leaf, err = signer.Issue(k.name); err != nil {
			return err
		}
		leaf.Certificate = leaf.Certificate[:1]
	}
	st := &keyState{current: current, next: next, trust: x509.NewCertPool()}
	st.trust.AddCert(current.cert)
	st.chain = tls.Certificate{PrivateKey: leaf.PrivateKey,
		Certificate: [][]byte{leaf.Certificate[0], signer.der}}
	if next != nil {
		cross, err := current.crossSign(next)
		if err != nil {
			return err
		}
		st.trust.AddCert(next.cert)
		st.chain.Certificate = append(st.chain.Certificate, cross, current.der)
	}
	k.state.Store(st)
	return nil
}

func (st *keyState) signer() *CA {
	if st.next != nil {
		return st.next
	}
	return st.current
}

func sameCA(a, b *CA) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Fingerprint() == b.Fingerprint()
}

// Current is the CA this node trusts outside a rotation.
func (k *Keyring) Current() *CA { return k.state.Load().current }

// Next is the CA a rotation in progress moves to (nil: none).
func (k *Keyring) Next() *CA { return k.state.Load().next }

// Signer is the CA that signed this node's certificate: the next CA
// during a rotation, else the current one. Tokens issued now carry its
// fingerprint, so that they stay good once the rotation finishes.
func (k *Keyring) Signer() *CA { return k.state.Load().signer() }

// Chain is the certificate chain this node presents now, leaf first.
func (k *Keyring) Chain() [][]byte { return k.state.Load().chain.Certificate }

// MutualTLS is the configuration of a coordinator's connections to and
// from other coordinators (raft, NATS routes): TLS 1.3, each side
// presents its chain and must present one that a trusted CA issued for
// ServerName.
func (k *Keyring) MutualTLS() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return k.certificate(), nil },
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return k.certificate(), nil
		},
		// The peer's chain is verified against the keyring's trust at
		// each handshake (VerifyConnection), on both sides, instead of
		// against pools fixed when the configuration was made.
		ClientAuth:         tls.RequireAnyClientCert,
		InsecureSkipVerify: true,
		ServerName:         ServerName,
		VerifyConnection:   func(cs tls.ConnectionState) error { return k.verifyPeer(cs.PeerCertificates) },
	}
}

// ServerTLS is the configuration of a coordinator's listeners for
// clients (NATS clients, the HTTP API): it presents this node's chain
// and asks for no certificate (clients prove themselves with a token).
func (k *Keyring) ServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return k.certificate(), nil },
	}
}

func (k *Keyring) certificate() *tls.Certificate {
	c := k.state.Load().chain
	return &c
}

// ErrUntrustedPeer: a peer's certificate is not from a CA this node
// trusts (not a coordinator of this cluster, or one still on a CA that a
// finished rotation retired).
var ErrUntrustedPeer = errors.New("the peer's certificate is not from this cluster's CA")

// TrustOnly is MutualTLS trusting ca alone: a coordinator checks with
// it that a peer has taken a rotation's next CA before finishing it.
func (k *Keyring) TrustOnly(ca *CA) *tls.Config {
	cfg := k.MutualTLS()
	cfg.VerifyConnection = func(cs tls.ConnectionState) error { return verifyChain(cs.PeerCertificates, ca.pool) }
	return cfg
}

// verifyPeer checks a peer's chain (leaf first) against the trusted CAs.
func (k *Keyring) verifyPeer(certs []*x509.Certificate) error {
	return verifyChain(certs, k.state.Load().trust)
}

// verifyChain checks that a chain (leaf first) leads from a leaf for
// ServerName to one of roots.
func verifyChain(certs []*x509.Certificate, roots *x509.CertPool) error {
	if len(certs) == 0 {
		return fmt.Errorf("%w: it presented none", ErrUntrustedPeer)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: intermediates(certs[1:]),
		DNSName:       ServerName,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUntrustedPeer, err)
	}
	return nil
}

func intermediates(certs []*x509.Certificate) *x509.CertPool {
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool
}

// crossSign certifies next's key and name with ca's key: a client that
// trusts ca then accepts certificates that next issued.
func (ca *CA) crossSign(next *CA) ([]byte, error) {
	tmpl := &x509.Certificate{
		SerialNumber:          next.cert.SerialNumber,
		Subject:               next.cert.Subject,
		SubjectKeyId:          next.cert.SubjectKeyId,
		NotBefore:             next.cert.NotBefore,
		NotAfter:              next.cert.NotAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, next.key.Public(), ca.key)
	if err != nil {
		return nil, fmt.Errorf("cross-sign the next cluster CA: %w", err)
	}
	return der, nil
}
