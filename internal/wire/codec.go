package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// versioned is implemented by every request (through Auth).
type versioned interface {
	version() int
}

func (a Auth) version() int { return a.V }

// DecodeRequest checks a request body's size, JSON and version, in that
// order, and returns an *Error a reply can carry.
func DecodeRequest(subject string, data []byte, req any) *Error {
	if len(data) > MaxMessageBytes {
		return Errorf(CodeTooLarge, "%s: message is %d bytes, over the %d-byte limit", subject, len(data), MaxMessageBytes)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return Errorf(CodeBadRequest, "%s: empty message", subject)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(req); err != nil {
		return Errorf(CodeBadRequest, "%s: malformed message: %v", subject, err)
	}
	if dec.More() {
		return Errorf(CodeBadRequest, "%s: malformed message: trailing data after the JSON object", subject)
	}
	if v, ok := req.(versioned); ok && v.version() != Version {
		return Errorf(CodeBadVersion, "%s: protocol version %d is not supported (this coordinator speaks %d)", subject, v.version(), Version)
	}
	return nil
}

// EncodeReply marshals a reply carrying body or err.
func EncodeReply(body any, err *Error) []byte {
	r := Reply{V: Version, Error: err}
	if err == nil && body != nil {
		b, merr := json.Marshal(body)
		if merr != nil {
			r.Error = Errorf(CodeInternal, "encode reply: %v", merr)
		} else {
			r.Body = b
		}
	}
	out, merr := json.Marshal(r)
	if merr != nil {
		// Only reachable with a broken encoder; keep the reply well-formed.
		return []byte(`{"v":1,"error":{"code":"internal","message":"encode reply failed"}}`)
	}
	return out
}

// DecodeReply unmarshals a reply into body, or returns its *Error.
func DecodeReply(subject string, data []byte, body any) error {
	if len(data) > 16*MaxMessageBytes {
		return fmt.Errorf("%s: reply is %d bytes, too large", subject, len(data))
	}
	var r Reply
	if err := json.Unmarshal(data, &r); err != nil {
		return fmt.Errorf("%s: malformed reply: %w", subject, err)
	}
	if r.Error != nil {
		return r.Error
	}
	if body == nil {
		return nil
	}
	if len(r.Body) == 0 {
		return errors.New(subject + ": reply has no body")
	}
	if err := json.Unmarshal(r.Body, body); err != nil {
		return fmt.Errorf("%s: malformed reply body: %w", subject, err)
	}
	return nil
}

// GetAuth returns the request's authentication block.
func (a Auth) GetAuth() Auth { return a }
