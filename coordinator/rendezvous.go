package coordinator

import (
	"crypto/rand"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/lavit-org/lavit/internal/wire"
)

// ncclIDBytes is the size of an NCCL unique id.
const ncclIDBytes = 128

// rendezvousTable is the leader's in-memory meeting point: for each run's
// current generation, what each rank has posted, and the generation's
// ring secret, made when its first member posts. Nothing here is
// committed (a secret never enters the raft log): members repeat their
// post until the table is complete, so a new leader rebuilds it from the
// repeats, and a new generation simply replaces the old entry.
type rendezvousTable struct {
	mu   sync.Mutex
	runs map[string]*meeting
}

// meeting is one generation's rendezvous.
type meeting struct {
	generation uint64
	addrs      []string // by rank; "" until posted
	posted     int
	ncclID     []byte
	secret     []byte // the generation's ring secret
}

// ringSecretBytes is the size of a generation's ring secret.
const ringSecretBytes = 32

func newRendezvousTable() *rendezvousTable {
	return &rendezvousTable{runs: map[string]*meeting{}}
}

// reset forgets everything (a new leader starts empty).
func (t *rendezvousTable) reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	clear(t.runs)
}

// post records one member's post for (run, generation) of world ranks and
// returns the reply.
func (t *rendezvousTable) post(req *wire.RendezvousRequest, world int) wire.RendezvousReply {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.runs[req.Run]
	if m == nil || m.generation != req.Generation || len(m.addrs) != world {
		m = &meeting{generation: req.Generation, addrs: make([]string, world), secret: make([]byte, ringSecretBytes)}
		rand.Read(m.secret) // never fails (crypto/rand)
		t.runs[req.Run] = m
	}
	if m.addrs[req.Rank] == "" {
		m.posted++
	}
	addr := req.Addr
	if addr == "" {
		addr = "-" // nccl members post no address; mark the rank as present
	}
	m.addrs[req.Rank] = addr // a restarted member may re-post a new address
	if req.Rank == 0 && len(req.NCCLID) > 0 {
		m.ncclID = append([]byte(nil), req.NCCLID...)
	}
	reply := wire.RendezvousReply{Posted: m.posted, World: world}
	if m.posted == world {
		reply.Complete = true
		if req.Addr != "" {
			reply.Peers = append([]string(nil), m.addrs...)
			reply.RingSecret = m.secret
		}
		reply.NCCLID = m.ncclID
	}
	return reply
}

// handleRendezvous checks that the caller is a member of the run's current
// generation with that rank, then records its post. A member of an older
// generation gets CodeStale: it must not join the new ring.
func (s *Server) handleRendezvous(req *wire.RendezvousRequest) (*wire.RendezvousReply, *wire.Error) {
	if err := validateRendezvous(req); err != nil {
		return nil, wire.Errorf(wire.CodeBadRequest, "rendezvous: %v", err)
	}
	world, werr := s.checkMember(req.From, req.Instance, req.Run, req.Generation, req.Rank)
	if werr != nil {
		werr.Message = "rendezvous: " + werr.Message
		return nil, werr
	}
	s.live.seen(req.From, time.Now())
	reply := s.meet.post(req, world)
	return &reply, nil
}

func validateRendezvous(r *wire.RendezvousRequest) error {
	if err := wire.ValidateID("worker", r.From); err != nil {
		return err
	}
	if err := wire.ValidateID("run", r.Run); err != nil {
		return err
	}
	if r.Generation == 0 {
		return fmt.Errorf("generation must be at least 1")
	}
	if r.Rank < 0 {
		return fmt.Errorf("rank %d is negative", r.Rank)
	}
	if r.Addr != "" {
		if _, _, err := net.SplitHostPort(r.Addr); err != nil {
			return fmt.Errorf("addr %q is not host:port: %v", r.Addr, err)
		}
	}
	if len(r.NCCLID) != 0 && len(r.NCCLID) != ncclIDBytes {
		return fmt.Errorf("nccl_id is %d bytes, want %d", len(r.NCCLID), ncclIDBytes)
	}
	if len(r.NCCLID) != 0 && r.Rank != 0 {
		return fmt.Errorf("only rank 0 posts the nccl_id (rank %d did)", r.Rank)
	}
	return nil
}
