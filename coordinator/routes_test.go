package coordinator

import (
	"testing"

	"github.com/lavit-org/lavit/internal/wire"
)

// TestEveryEndpointServed: the leader serves each control subject the
// protocol defines, exactly once, and nothing else.
func TestEveryEndpointServed(t *testing.T) {
	served := map[string]int{}
	for _, r := range (&Server{}).routes() {
		served[r.subject]++
	}
	for _, subj := range wire.Subjects() {
		if served[subj] != 1 {
			t.Errorf("%s is served %d times, want once", subj, served[subj])
		}
		delete(served, subj)
	}
	for subj := range served {
		t.Errorf("%s is served but is not in wire.Subjects()", subj)
	}
}
