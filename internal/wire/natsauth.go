package wire

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/nats-io/nats.go"
)

// Every client of the coordinators' NATS presents its lavit token as the
// NATS connection token, and receives its replies under an inbox prefix
// derived from that token: the embedded server lets a client subscribe
// to its own prefix only, so no client can read another's replies.

// InboxPrefix is the reply-inbox prefix of a client holding token: a
// digest, never the token itself.
func InboxPrefix(token string) string {
	sum := sha256.Sum256([]byte("lavit inbox\x00" + token))
	return "_INBOX." + hex.EncodeToString(sum[:12])
}

// ConnectOptions are the nats.Connect options of a client holding token:
// the token and the matching inbox prefix.
func ConnectOptions(token string) []nats.Option {
	return []nats.Option{nats.Token(token), nats.CustomInboxPrefix(InboxPrefix(token))}
}
