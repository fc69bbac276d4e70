package wire

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/lavit-org/lavit/internal/clusterca"
)

// Every client of the coordinators' NATS presents its lavit token as the
// NATS connection token, over TLS that pins the cluster's CA, and
// receives its replies under an inbox prefix derived from that token: the
// embedded server lets a client subscribe to its own prefix only, so no
// client can read another's replies.
//
// Tokens: the admin token (any string the first coordinator generated or
// was given) or an issued token, "lavit.<id>.<secret>.<ca>", whose last
// field is the hex sha256 of the cluster CA's certificate. The CA field
// is not secret and not checked by the coordinators: it is how the
// holder of the token pins the CA with nothing else to copy (as kubeadm's
// and k3s's join tokens carry the CA's hash). The admin token pins the CA
// by deriving it (internal/clusterca).

// issuedTokenPrefix starts every issued token.
const issuedTokenPrefix = "lavit."

// SplitToken separates an issued token's CA fingerprint from the
// credential the coordinators check. Other tokens are all credential.
func SplitToken(token string) (credential, caFingerprint string) {
	if strings.HasPrefix(token, issuedTokenPrefix) && strings.Count(token, ".") == 3 {
		i := strings.LastIndexByte(token, '.')
		return token[:i], token[i+1:]
	}
	return token, ""
}

// ErrTokenWithoutCA: an issued token that carries no CA fingerprint, so
// its holder cannot check that it talks to its own cluster.
var ErrTokenWithoutCA = errors.New("this token carries no CA fingerprint (tokens made before TLS do not): make a new one with 'lavit-coord token create'")

// ClientTLS is the TLS configuration of a client holding token: it
// accepts only coordinators whose certificate comes from the cluster CA
// the token names (or, for the admin token, derives).
func ClientTLS(token string) (*tls.Config, error) {
	cred, fp := SplitToken(token)
	switch {
	case fp != "":
		cfg, err := clusterca.PinnedTLS(fp)
		if err != nil {
			return nil, fmt.Errorf("token: %w", err)
		}
		return cfg, nil
	case strings.HasPrefix(cred, issuedTokenPrefix):
		return nil, ErrTokenWithoutCA
	}
	ca, err := clusterca.Derive(cred)
	if err != nil {
		return nil, err
	}
	return ca.ClientTLS(), nil
}

// InboxPrefix is the reply-inbox prefix of a client holding token: a
// digest of its credential, never the token itself.
func InboxPrefix(token string) string {
	cred, _ := SplitToken(token)
	sum := sha256.Sum256([]byte("lavit inbox\x00" + cred))
	return "_INBOX." + hex.EncodeToString(sum[:12])
}

// ConnectOptions are the nats.Connect options of a client holding token:
// TLS pinned to the token's cluster CA, the token's credential and the
// matching inbox prefix. A token that cannot pin a CA fails the connect
// with an error that says so.
func ConnectOptions(token string) []nats.Option {
	return append(PlaintextConnectOptions(token), func(o *nats.Options) error {
		cfg, err := ClientTLS(token)
		if err != nil {
			return err
		}
		o.Secure, o.TLSConfig = true, cfg
		return nil
	})
}

// PlaintextConnectOptions are ConnectOptions without TLS: only for an
// external NATS (lavit-coord up --nats-url) that does not speak TLS. The
// token travels in clear; lavit's embedded NATS refuses such clients.
func PlaintextConnectOptions(token string) []nats.Option {
	cred, _ := SplitToken(token)
	return []nats.Option{nats.Token(cred), nats.CustomInboxPrefix(InboxPrefix(cred))}
}
