package coordinator

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
)

// hashToken is what the FSM stores: the token itself never enters the log.
func hashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// tokenMatches compares a presented token against a stored hash in
// constant time.
func tokenMatches(presented, storedHash string) bool {
	if storedHash == "" || presented == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(hashToken(presented)), []byte(storedHash)) == 1
}
