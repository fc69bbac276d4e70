package wire

import "context"

// Endpoint is one control verb: the subject the leader serves it on, and
// its request and reply types. Every verb is defined once, below; the
// coordinator serves each (coordinator's subscribeControl), and workers,
// coordinators and the CLI call them with Call, so a request or reply type
// can only be paired with its own subject.
type Endpoint[Req, Rep any] struct {
	Subject string
}

// Call sends req to the coordinator leader through c and returns the
// reply. The request's Auth is filled in from c. While no leader answers
// (an election) it retries until ctx's deadline (DefaultCallTimeout
// without one); a refusal comes back as an *Error with a stable code.
func (e Endpoint[Req, Rep]) Call(ctx context.Context, c *Client, req *Req) (*Rep, error) {
	var rep Rep
	if err := c.call(ctx, e.Subject, req, &rep); err != nil {
		return nil, err
	}
	return &rep, nil
}

// The worker-facing verbs.
var (
	Register             = Endpoint[RegisterRequest, RegisterReply]{SubjectRegister}
	Heartbeat            = Endpoint[HeartbeatRequest, HeartbeatReply]{SubjectHeartbeat}
	Deregister           = Endpoint[DeregisterRequest, DeregisterReply]{SubjectDeregister}
	Rendezvous           = Endpoint[RendezvousRequest, RendezvousReply]{SubjectRendezvous}
	ReportProgress       = Endpoint[ProgressRequest, Empty]{SubjectProgress}
	FinishRun            = Endpoint[RunFinishRequest, Empty]{SubjectRunFinish}
	ReportCheckpointPart = Endpoint[CheckpointPartRequest, Empty]{SubjectCkptPart}
)

// The operator-facing verbs (the CLI; workers read runs and checkpoints too).
var (
	GetStatus          = Endpoint[StatusRequest, Status]{SubjectStatus}
	SubmitRun          = Endpoint[RunSubmitRequest, RunSubmitReply]{SubjectRunSubmit}
	ListRuns           = Endpoint[RunListRequest, RunListReply]{SubjectRunList}
	ShowRun            = Endpoint[RunShowRequest, RunInfo]{SubjectRunShow}
	CancelRun          = Endpoint[RunCancelRequest, Empty]{SubjectRunCancel}
	ResumeRun          = Endpoint[RunRequest, Empty]{SubjectRunResume}
	RequestCheckpoint  = Endpoint[RunRequest, Empty]{SubjectRunCkpt}
	ListCheckpoints    = Endpoint[RunRequest, CheckpointListReply]{SubjectCkptList}
	ListWorkers        = Endpoint[WorkersRequest, WorkersReply]{SubjectWorkers}
	ListRaftPeers      = Endpoint[RaftPeersRequest, RaftPeersReply]{SubjectRaftPeers}
	JoinRaft           = Endpoint[RaftJoinRequest, RaftJoinReply]{SubjectRaftJoin}
	RemoveRaftPeer     = Endpoint[RaftRemoveRequest, Empty]{SubjectRaftRemove}
	TransferLeadership = Endpoint[RaftTransferRequest, Empty]{SubjectRaftTransfer}
	Announce           = Endpoint[AnnounceRequest, Empty]{SubjectAnnounce}
)

// Subjects lists every control subject the leader serves, in a fixed
// order (the coordinator's tests check that it serves exactly these).
func Subjects() []string {
	return []string{
		SubjectRegister, SubjectHeartbeat, SubjectDeregister, SubjectRendezvous, SubjectProgress, SubjectRunFinish, SubjectCkptPart,
		SubjectStatus, SubjectRunSubmit, SubjectRunList, SubjectRunShow, SubjectRunCancel, SubjectRunResume, SubjectRunCkpt,
		SubjectCkptList, SubjectWorkers, SubjectRaftPeers, SubjectRaftJoin, SubjectRaftRemove, SubjectRaftTransfer, SubjectAnnounce,
		SubjectTokenCreate, SubjectTokenList, SubjectTokenRevoke, SubjectTokenRotate,
	}
}
