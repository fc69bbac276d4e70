package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/lavit-org/lavit/internal/retry"
	"github.com/lavit-org/lavit/internal/wire"
)

// ErrStaleGeneration means the coordinator refused this member: its
// generation is no longer the run's current one, or it is no longer a
// member. The worker must drop what it was doing and reconcile to the
// desired state from its next heartbeat.
var ErrStaleGeneration = errors.New("stale generation")

// Rendezvous posts this member's part of a generation's rendezvous (its
// ring listener address, or rank 0's NCCL unique id) and repeats the post
// until every member has posted, then returns the complete reply: every
// rank's address, or the NCCL id. It gives up at ctx's deadline, saying how
// many members had posted.
func Rendezvous(ctx context.Context, c *wire.Client, req wire.RendezvousRequest) (wire.RendezvousReply, error) {
	const minPoll, maxPoll = 10 * time.Millisecond, 250 * time.Millisecond
	poll := minPoll
	var last wire.RendezvousReply
	for {
		reply := wire.RendezvousReply{}
		rep, err := wire.Rendezvous.Call(ctx, c, &req)
		if err == nil {
			reply = *rep
		}
		switch {
		case err == nil && reply.Complete:
			return reply, nil
		case err == nil:
			last = reply
		case wire.HasCode(err, wire.CodeStale):
			return reply, fmt.Errorf("rendezvous for run %s generation %d: %w: %v", req.Run, req.Generation, ErrStaleGeneration, err)
		case wire.HasCode(err, wire.CodeUnavailable), wire.HasCode(err, wire.CodeNotLeader), errors.Is(err, wire.ErrNoLeader):
			// A leader change: the new leader rebuilds the table from
			// the members' repeated posts.
		default:
			if ctx.Err() == nil {
				return reply, fmt.Errorf("rendezvous for run %s generation %d: %w", req.Run, req.Generation, err)
			}
		}
		if err := retry.Sleep(ctx, poll); err != nil {
			return last, fmt.Errorf("rendezvous for run %s generation %d: %d of %d members posted before the deadline: %w", req.Run, req.Generation, last.Posted, last.World, err)
		}
		poll = min(2*poll, maxPoll)
	}
}
