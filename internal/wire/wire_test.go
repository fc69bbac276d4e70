package wire

import (
	"errors"
	"strings"
	"testing"
)

func TestDecodeRequest(t *testing.T) {
	tests := []struct {
		name     string
		data     string
		wantCode string // "" means accepted
	}{
		{"valid", `{"v":1,"token":"t","from":"w1","instance":"i"}`, ""},
		{"unknown fields are tolerated", `{"v":1,"token":"t","from":"w1","future":true}`, ""},
		{"empty", ``, CodeBadRequest},
		{"whitespace", "  \n", CodeBadRequest},
		{"truncated", `{"v":1,`, CodeBadRequest},
		{"wrong type", `{"v":"one"}`, CodeBadRequest},
		{"trailing data", `{"v":1} {"v":1}`, CodeBadRequest},
		{"old version", `{"v":0,"token":"t","from":"w1"}`, CodeBadVersion},
		{"too large", `{"v":1,"from":"` + strings.Repeat("x", MaxMessageBytes) + `"}`, CodeTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var req HeartbeatRequest
			err := DecodeRequest("subj", []byte(tc.data), &req)
			if tc.wantCode == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || err.Code != tc.wantCode {
				t.Fatalf("got %v, want code %s", err, tc.wantCode)
			}
			if !strings.HasPrefix(err.Message, "subj:") {
				t.Fatalf("error %q does not name the subject", err.Message)
			}
		})
	}
}

func TestReplyRoundTrip(t *testing.T) {
	var got HeartbeatReply
	want := HeartbeatReply{Desired: DesiredState{State: WorkerIdle, Run: "r1", Generation: 3, Rank: 1, World: 2, Backend: BackendRing}, Leader: "c1"}
	if err := DecodeReply("s", EncodeReply(want, nil), &got); err != nil {
		t.Fatal(err)
	}
	if got.Leader != want.Leader || got.Desired.Generation != 3 || got.Desired.World != 2 || got.Desired.Backend != BackendRing {
		t.Fatalf("round trip: got %+v, want %+v", got, want)
	}
	err := DecodeReply("s", EncodeReply(nil, Errorf(CodeUnknown, "worker %q unknown", "w")), &got)
	if !HasCode(err, CodeUnknown) || !strings.Contains(err.Error(), `"w"`) {
		t.Fatalf("error reply decoded as %v", err)
	}
	var werr *Error
	if !errors.As(err, &werr) {
		t.Fatal("error reply is not a *wire.Error")
	}
	if err := DecodeReply("s", []byte("not json"), &got); err == nil {
		t.Fatal("malformed reply accepted")
	}
}

func TestValidateID(t *testing.T) {
	for id, ok := range map[string]bool{
		"w1": true, "node-1.example_x": true, "A": true, strings.Repeat("a", 128): true,
		"": false, "-lead": false, "has space": false, "slash/no": false, strings.Repeat("a", 129): false, "ü": false,
	} {
		if err := ValidateID("worker", id); (err == nil) != ok {
			t.Errorf("ValidateID(%q) = %v, want ok=%v", id, err, ok)
		}
	}
}
