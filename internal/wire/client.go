package wire

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// ErrNoLeader means no coordinator leader answered: none is running, or an
// election is in progress.
var ErrNoLeader = errors.New("no coordinator leader is answering (is lavit-coord up running, and does it have a raft leader?)")

// Client makes control calls to the coordinator leader over NATS, through
// the typed endpoints (Endpoint.Call).
type Client struct {
	NC    *nats.Conn
	Token string
	From  string
}

// DefaultCallTimeout bounds a call when the context has no deadline.
const DefaultCallTimeout = 5 * time.Second

// call sends req on subject and decodes the reply body into resp (see
// Endpoint.Call, the typed way in). The request's Auth is filled in from
// the client. While no leader answers (an election is in progress) it
// retries until the context's deadline.
func (c *Client) call(ctx context.Context, subject string, req any, resp any) error {
	if a, ok := req.(interface{ setAuth(Auth) }); ok {
		a.setAuth(Auth{V: Version, Token: c.Token, From: c.From})
	}
	data, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("%s: encode request: %w", subject, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultCallTimeout)
		defer cancel()
	}
	for {
		err := c.callOnce(ctx, subject, data, resp)
		if !errors.Is(err, ErrNoLeader) && !HasCode(err, CodeNotLeader) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(noLeaderRetry):
		}
	}
}

// noLeaderRetry is the pause between tries while no leader answers.
const noLeaderRetry = 100 * time.Millisecond

func (c *Client) callOnce(ctx context.Context, subject string, data []byte, resp any) error {
	msg, err := c.NC.RequestWithContext(ctx, subject, data)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return fmt.Errorf("%s: %w", subject, ErrNoLeader)
		}
		return fmt.Errorf("%s: %w", subject, err)
	}
	return DecodeReply(subject, msg.Data, resp)
}

func (a *Auth) setAuth(v Auth) { *a = v }
