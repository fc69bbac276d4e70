package wire

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// requestTypes makes a fresh value of every request type the leader
// decodes, by subject.
var requestTypes = map[string]func() any{
	SubjectRegister:     func() any { return new(RegisterRequest) },
	SubjectHeartbeat:    func() any { return new(HeartbeatRequest) },
	SubjectDeregister:   func() any { return new(DeregisterRequest) },
	SubjectRendezvous:   func() any { return new(RendezvousRequest) },
	SubjectProgress:     func() any { return new(ProgressRequest) },
	SubjectRunFinish:    func() any { return new(RunFinishRequest) },
	SubjectCkptPart:     func() any { return new(CheckpointPartRequest) },
	SubjectStatus:       func() any { return new(StatusRequest) },
	SubjectRunSubmit:    func() any { return new(RunSubmitRequest) },
	SubjectRunList:      func() any { return new(RunListRequest) },
	SubjectRunShow:      func() any { return new(RunShowRequest) },
	SubjectRunCancel:    func() any { return new(RunCancelRequest) },
	SubjectRunResume:    func() any { return new(RunRequest) },
	SubjectRunCkpt:      func() any { return new(RunRequest) },
	SubjectCkptList:     func() any { return new(RunRequest) },
	SubjectWorkers:      func() any { return new(WorkersRequest) },
	SubjectRaftPeers:    func() any { return new(RaftPeersRequest) },
	SubjectRaftJoin:     func() any { return new(RaftJoinRequest) },
	SubjectRaftRemove:   func() any { return new(RaftRemoveRequest) },
	SubjectRaftTransfer: func() any { return new(RaftTransferRequest) },
	SubjectAnnounce:     func() any { return new(AnnounceRequest) },
	SubjectTokenCreate:  func() any { return new(TokenCreateRequest) },
	SubjectTokenList:    func() any { return new(TokenListRequest) },
	SubjectTokenRevoke:  func() any { return new(TokenRevokeRequest) },
	SubjectTokenRotate:  func() any { return new(TokenRotateRequest) },
}

// replyTypes makes a fresh value of every reply body type a client
// decodes.
var replyTypes = []func() any{
	func() any { return new(RegisterReply) }, func() any { return new(HeartbeatReply) },
	func() any { return new(DeregisterReply) }, func() any { return new(RendezvousReply) },
	func() any { return new(Empty) }, func() any { return new(Status) },
	func() any { return new(RunSubmitReply) }, func() any { return new(RunListReply) },
	func() any { return new(RunInfo) }, func() any { return new(CheckpointListReply) },
	func() any { return new(WorkersReply) }, func() any { return new(RaftPeersReply) },
	func() any { return new(RaftJoinReply) },
	func() any { return new(TokenCreateReply) }, func() any { return new(TokenListReply) },
	func() any { return new(TokenRotateReply) },
}

func TestFuzzTablesCoverEverySubject(t *testing.T) {
	for _, s := range Subjects() {
		if requestTypes[s] == nil {
			t.Errorf("subject %s has no request type in requestTypes", s)
		}
	}
	if len(requestTypes) != len(Subjects()) {
		t.Errorf("requestTypes has %d subjects, Subjects() %d", len(requestTypes), len(Subjects()))
	}
}

// seedRequests are valid requests, one per kind, as clients send them.
func seedRequests() []any {
	auth := Auth{V: Version, Token: "t", From: "w1"}
	return []any{
		&RegisterRequest{Auth: auth, Instance: "i1", Host: "h", Devices: []Device{{Name: "cuda:0", Kind: "cuda", MemoryBytes: 80 << 30}}, Device: "cuda:0", Capacity: 1},
		&HeartbeatRequest{Auth: auth, Instance: "i1", Seq: 7, State: WorkerTraining, Run: "r-0001", Generation: 2},
		&RendezvousRequest{Auth: auth, Instance: "i1", Run: "r-0001", Generation: 2, Rank: 0, NCCLID: bytes.Repeat([]byte{7}, 128)},
		&ProgressRequest{Auth: auth, Run: "r-0001", Step: 10, TotalSteps: 100, Loss: 1.25, Timing: StepTiming{StepMs: 3}, Metrics: map[string]float64{"ppl": 3.5}},
		&CheckpointPartRequest{Auth: auth, Run: "r-0001", World: 2, Step: 10, Part: CheckpointPart{Name: "p0", Bytes: 4, SHA256: "ab"},
			Meta: &CheckpointMeta{StateBytes: 8, Params: []ParamInfo{{Name: "w", Shape: []int64{2, 2}, Numel: 4}}}},
		&RunFinishRequest{Auth: auth, Run: "r-0001", Outcome: RunCompleted, Final: &Artifact{URL: "file:///f", Bytes: 8}, Eval: []Check{{Name: "c", Value: "1", Pass: true}}},
		&RunSubmitRequest{Auth: auth, Spec: json.RawMessage(`{"stage":1, "model":"tiny-stage1"}`)},
		&RunCancelRequest{Auth: auth, ID: "r-0001", Reason: "why"},
		&RaftJoinRequest{Auth: auth, ID: "c2", RaftAddr: "h:1"},
		&AnnounceRequest{Auth: auth, Coordinator: Coordinator{ID: "c1", Leader: true}},
	}
}

// FuzzDecodeRequest decodes arbitrary bytes as every request type, as the
// leader does. It must never panic; it must refuse with a stable code
// (too large, bad request, bad version); what it accepts is within the
// size limit, speaks this version, and encodes to JSON that decodes to
// the same encoding again.
func FuzzDecodeRequest(f *testing.F) {
	for _, req := range seedRequests() {
		b, err := json.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{``, ` `, `{"v":1,`, `{"v":"one"}`, `{"v":1} {"v":1}`, `{"v":0}`, `null`, `[]`,
		`{"v":1,"nccl_id":"!!"}`, `{"v":1,"spec":{"a":[1,2,` + strings.Repeat("[", 100) + `}`,
		`{"v":1,"metrics":{"a":1e400}}`, `{"v":1,"shape":[-1]}`} {
		f.Add([]byte(s))
	}
	codes := map[string]bool{CodeTooLarge: true, CodeBadRequest: true, CodeBadVersion: true}
	f.Fuzz(func(t *testing.T, data []byte) {
		for subject, newReq := range requestTypes {
			req := newReq()
			if werr := DecodeRequest(subject, data, req); werr != nil {
				if !codes[werr.Code] || !strings.HasPrefix(werr.Message, subject+": ") {
					t.Fatalf("%s: refusal %+v: want a stable code and the subject named", subject, werr)
				}
				continue
			}
			if len(data) > MaxMessageBytes {
				t.Fatalf("%s: accepted %d bytes, over the limit", subject, len(data))
			}
			if v := req.(versioned).version(); v != Version {
				t.Fatalf("%s: accepted version %d", subject, v)
			}
			first, err := json.Marshal(req)
			if err != nil {
				t.Fatalf("%s: encode the decoded request: %v", subject, err)
			}
			again := newReq()
			if werr := DecodeRequest(subject, first, again); werr != nil && werr.Code != CodeTooLarge {
				t.Fatalf("%s: the re-encoded request is refused: %v\n%s", subject, werr, first)
			}
			second, err := json.Marshal(again)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(first, second) {
				t.Fatalf("%s: not stable through JSON:\n%s\n%s", subject, first, second)
			}
		}
	})
}

// FuzzDecodeReply decodes arbitrary bytes as every reply type, as clients
// do. It must never panic; an error reply comes back as an *Error; a body
// it accepts re-encodes (EncodeReply) to a reply that decodes to the same.
func FuzzDecodeReply(f *testing.F) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	for _, body := range []any{
		RegisterReply{Worker: Worker{ID: "w1", Since: t0, Registered: t0}, HeartbeatInterval: Duration(500 * time.Millisecond), Desired: DesiredState{State: WorkerIdle}},
		HeartbeatReply{Desired: DesiredState{State: WorkerTraining, Run: "r-0001", Generation: 3, Rank: 1, World: 2, Backend: BackendRing}, Leader: "c1"},
		RendezvousReply{Complete: true, Posted: 2, World: 2, Peers: []string{"a:1", "b:2"}},
		RunListReply{Runs: []RunInfo{{ID: "r-0001", State: RunRunning, Created: t0, Spec: json.RawMessage(`{"stage":1}`), Metrics: map[string]float64{"a": 1}}}},
		Status{ClusterID: "c", Coordinators: []Coordinator{{ID: "c1"}}, Workers: WorkerCounts{Total: 1}},
		CheckpointListReply{Checkpoints: []CheckpointInfo{{Step: 5, Committed: true, Time: t0}}},
	} {
		f.Add(EncodeReply(body, nil))
	}
	f.Add(EncodeReply(nil, Errorf(CodeUnknown, "worker %q unknown", "w")))
	for _, s := range []string{`not json`, `{}`, `{"v":1,"body":null}`, `{"v":1,"error":{}}`, `{"v":1,"body":{"heartbeat_interval":"-9223372036854775808ns"}}`,
		`{"v":1,"body":{"heartbeat_interval":"2562047h47m16.854775807s"}}`, `{"v":1,"body":{"heartbeat_interval":5}}`, `{"v":1,"body":{"created":"10000-01-01T00:00:00Z"}}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, newBody := range replyTypes {
			body := newBody()
			err := DecodeReply("s", data, body)
			if err != nil {
				if err.Error() == "" {
					t.Fatal("empty error")
				}
				continue
			}
			if err := DecodeReply("s", data, nil); err != nil {
				t.Fatalf("a reply decoded into %T is an error without a body: %v", body, err)
			}
			first := EncodeReply(body, nil)
			var r Reply
			if err := json.Unmarshal(first, &r); err != nil || r.Error != nil {
				t.Fatalf("%T: EncodeReply of a decoded body failed: %s", body, first)
			}
			again := newBody()
			if err := DecodeReply("s", first, again); err != nil {
				t.Fatalf("%T: the re-encoded reply does not decode: %v\n%s", body, err, first)
			}
			if second := EncodeReply(again, nil); !bytes.Equal(first, second) {
				t.Fatalf("%T: not stable through JSON:\n%s\n%s", body, first, second)
			}
		}
	})
}
