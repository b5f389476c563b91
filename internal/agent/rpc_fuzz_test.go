package agent

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"testing"

	"github.com/immutd/immutd/internal/config"
)

// FuzzRPCRequests decodes arbitrary bodies as every RPC request type with
// the handlers' own decoder and runs the checks that need no cluster:
// nothing panics, an oversized body is refused, and what passes the
// checks is what the checks promise.
func FuzzRPCRequests(f *testing.F) {
	seeds := []any{
		Proposal{ProposerID: "a", Dir: "/etc/immutd/fleets.d", Hash: "h", Files: []config.File{{Name: "web.hcl", Content: []byte(`fleet "web" {}`)}}},
		VerdictReport{NodeID: "n2", NodeName: "agent-2", Verdicts: map[string]ReportedVerdict{"web-1": {State: "unhealthy", Evidence: []string{"x"}}}},
		JoinRequest{ID: "0123456789abcdef", Name: "agent-4", Addr: "10.0.0.4:7980"},
		fleetRequest{Fleet: "web"},
		removeRequest{Node: "agent-3"},
	}
	for _, s := range seeds {
		b, _ := json.Marshal(s)
		f.Add(b)
	}
	f.Add([]byte(`{"files":[{"name":"../x.hcl","content":"AA=="}],"dir":"/"}`))
	f.Add([]byte(`{"id":"a","addr":"0.0.0.0:1"} trailing`))
	f.Fuzz(func(t *testing.T, body []byte) {
		decode := func(v any) error {
			r := httptest.NewRequest("POST", "/cluster/v1/x", bytes.NewReader(body))
			return decodeBody(httptest.NewRecorder(), r, maxSmallBody, v)
		}
		var join JoinRequest
		if decode(&join) == nil && join.check() == nil {
			if !serverIDRE.MatchString(join.ID) || config.CheckDialAddr(join.Addr) != nil || len(join.Name) > maxNodeNameLen {
				t.Fatalf("join passed its check: %+v", join)
			}
		}
		var fr fleetRequest
		if decode(&fr) == nil && checkFleetName(fr.Fleet) == nil && !config.ValidFleetName(fr.Fleet) {
			t.Fatalf("fleet name passed: %q", fr.Fleet)
		}
		if len(body) > maxSmallBody {
			if decode(&fr) == nil {
				t.Fatalf("a body of %d bytes was decoded with a limit of %d", len(body), maxSmallBody)
			}
		}
		var p Proposal
		r := httptest.NewRequest("POST", "/cluster/v2/propose", bytes.NewReader(body))
		if decodeBody(httptest.NewRecorder(), r, maxProposalBody, &p) == nil && config.CheckFiles(p.Files) == nil {
			_, _ = config.ParseFleetFiles("/nonexistent/fleets.d", p.Files)
		}
		var rep VerdictReport
		if decode(&rep) == nil {
			for _, v := range rep.Verdicts {
				_ = clipAll(v.Evidence, maxReportedEvidence, maxReportedEvidenceSz)
			}
		}
	})
}
