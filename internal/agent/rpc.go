package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/config"
	"github.com/immutd/immutd/internal/cut"
	"github.com/immutd/immutd/internal/probe"
)

// Agent-to-agent RPC: JSON over HTTP on the cluster port. Every
// connection to that port is authenticated by the mux before a byte of
// HTTP is read (mutual TLS with the cluster CA, or the token of the
// insecure plaintext mode); the handlers then bound every body and check
// every field. Writes are forwarded to the leader; the leader alone
// applies them, after validating them as if they came from its own files.

// rpcHoldTimeout is how long a forwarded request waits for a leader.
const rpcHoldTimeout = 5 * time.Second

// Body limits of the RPC endpoints.
const (
	// maxSmallBody bounds requests that carry a name or two.
	maxSmallBody = 4 << 10
	// maxVerdictsBody bounds one agent's verdict report.
	maxVerdictsBody = 16 << 20
	// maxProposalBody bounds a proposal: the fleet files (base64) plus a
	// little.
	maxProposalBody = config.MaxFleetDirSize*4/3 + 1<<20
	// maxResponseBody bounds what an agent reads back from a peer.
	maxResponseBody = 64 << 20
)

// Bounds on what a verdict report may carry.
const (
	maxReportedEvidence   = 5
	maxReportedEvidenceSz = 512
	maxNodeNameLen        = 64
)

// NodeInfo is what an agent tells a peer about itself.
type NodeInfo struct {
	ID              string `json:"id"`
	Name            string `json:"name"`
	RaftAddr        string `json:"raft_addr"`
	HasState        bool   `json:"has_state"`
	Leader          string `json:"leader"`
	BootstrapExpect int    `json:"bootstrap_expect"`
	Version         string `json:"version"`
}

// VerdictReport is one agent's probe verdicts, pushed to the leader.
type VerdictReport struct {
	NodeID   string                     `json:"node_id"`
	NodeName string                     `json:"node_name"`
	At       time.Time                  `json:"at"`
	Verdicts map[string]ReportedVerdict `json:"verdicts"`
}

// ReportedVerdict is one instance's verdict as one agent sees it.
type ReportedVerdict struct {
	State    string    `json:"state"`
	Since    time.Time `json:"since"`
	Evidence []string  `json:"evidence,omitempty"`
}

// ReportAck answers a verdict report with the node names the leader
// knows, by server id: every agent learns every server's name, so that
// an operator can remove a dead server by name after the leader changed.
type ReportAck struct {
	Names map[string]string `json:"names,omitempty"`
}

type rpcError struct {
	Error string `json:"error"`
	// Leader is set when the receiver is not the leader.
	Leader string `json:"leader,omitempty"`
}

// errRPC is an answer with a status code other than 200.
type errRPC struct {
	code int
	msg  string
}

func (e *errRPC) Error() string { return e.msg }

func rpcFail(code int, format string, args ...any) error {
	return &errRPC{code: code, msg: fmt.Sprintf(format, args...)}
}

// rpcHandler serves /cluster/v1/ and /cluster/v2/.
func (a *Agent) rpcHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /cluster/v1/info", a.rpcGet(false, func(ctx context.Context) (any, error) { return a.info(), nil }))
	mux.HandleFunc("GET /cluster/v1/status", a.rpcGet(true, func(ctx context.Context) (any, error) { return a.Status(ctx), nil }))
	// Release dbf9177 and older sent decoded fleets, which a leader cannot
	// validate as it validates files; such a proposal is refused, never
	// committed. (An older leader, asked for /cluster/v2/propose, answers
	// 404: nothing is committed either way until every agent is upgraded.)
	mux.HandleFunc("POST /cluster/v1/propose", func(w http.ResponseWriter, r *http.Request) {
		writeRPC(w, http.StatusGone, rpcError{Error: "this leader runs a newer release of immutd, which needs the fleet files in a proposal: upgrade the proposing agent"})
	})
	mux.HandleFunc("POST /cluster/v2/propose", rpcPost(a, true, maxProposalBody, func(ctx context.Context, p *Proposal) (any, error) {
		return struct{}{}, a.commitProposal(ctx, p)
	}))
	mux.HandleFunc("POST /cluster/v1/verdicts", rpcPost(a, true, maxVerdictsBody, func(ctx context.Context, rep *VerdictReport) (any, error) {
		if err := a.acceptReport(rep); err != nil {
			return nil, err
		}
		return a.reportAck(), nil
	}))
	mux.HandleFunc("POST /cluster/v1/drain", rpcPost(a, true, maxSmallBody, func(ctx context.Context, req *fleetRequest) (any, error) {
		if err := checkFleetName(req.Fleet); err != nil {
			return nil, rpcFail(http.StatusBadRequest, "%v", err)
		}
		return struct{}{}, conflict(a.Drain(ctx, req.Fleet))
	}))
	mux.HandleFunc("POST /cluster/v1/resolve", rpcPost(a, true, maxSmallBody, func(ctx context.Context, req *fleetRequest) (any, error) {
		if err := checkFleetName(req.Fleet); err != nil {
			return nil, rpcFail(http.StatusBadRequest, "%v", err)
		}
		return struct{}{}, conflict(a.Resolve(ctx, req.Fleet))
	}))
	mux.HandleFunc("POST /cluster/v1/retry", rpcPost(a, true, maxSmallBody, func(ctx context.Context, req *fleetRequest) (any, error) {
		if err := checkFleetName(req.Fleet); err != nil {
			return nil, rpcFail(http.StatusBadRequest, "%v", err)
		}
		return struct{}{}, conflict(a.Retry(ctx, req.Fleet))
	}))
	mux.HandleFunc("POST /cluster/v1/rollout", rpcPost(a, true, maxSmallBody, func(ctx context.Context, req *rolloutRequest) (any, error) {
		return struct{}{}, a.RolloutStep(ctx, req.Fleet, req.Req)
	}))
	mux.HandleFunc("POST /cluster/v1/plan", rpcPost(a, true, maxSmallBody, func(ctx context.Context, req *planRequest) (any, error) {
		if req.Fleet != "" && checkFleetName(req.Fleet) != nil {
			return nil, rpcFail(http.StatusBadRequest, "%v", checkFleetName(req.Fleet))
		}
		return a.planHere(req.Fleet)
	}))
	mux.HandleFunc("POST /cluster/v1/pause", rpcPost(a, true, maxSmallBody, func(ctx context.Context, req *api.PauseRequest) (any, error) {
		return a.Pause(ctx, *req)
	}))
	mux.HandleFunc("POST /cluster/v1/unpause", rpcPost(a, true, maxSmallBody, func(ctx context.Context, req *api.UnpauseRequest) (any, error) {
		return a.Unpause(ctx, *req)
	}))
	a.clusterRPC(mux)
	a.snapshotRPC(mux)
	return a.authenticated(mux)
}

// fleetRequest names a fleet (drain, resolve).
type fleetRequest struct {
	Fleet string `json:"fleet"`
}

func checkFleetName(name string) error {
	if !config.ValidFleetName(name) {
		return fmt.Errorf("%.80q is not a fleet name", name)
	}
	return nil
}

// conflict marks an operation's refusal as 409.
func conflict(err error) error {
	var e *errRPC
	if err == nil || errors.As(err, &e) {
		return err
	}
	return &errRPC{code: http.StatusConflict, msg: err.Error()}
}

// authenticated refuses, as a second line behind the mux, a request
// whose connection carries no client certificate when the cluster port
// runs mutual TLS.
func (a *Agent) authenticated(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.identity != nil && (r.TLS == nil || len(r.TLS.PeerCertificates) == 0) {
			writeRPC(w, http.StatusForbidden, rpcError{Error: "the cluster port needs a client certificate of the cluster CA"})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// rpcGet serves a read; leader restricts it to the leader.
func (a *Agent) rpcGet(leader bool, fn func(ctx context.Context) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if leader && a.notLeader(w) {
			return
		}
		out, err := fn(r.Context())
		answer(w, out, err)
	}
}

// rpcPost serves a write: decode at most limit bytes of JSON into In
// (nothing unknown, nothing after it), then run fn, on the leader only
// when leader is set.
func rpcPost[In any](a *Agent, leader bool, limit int64, fn func(ctx context.Context, in *In) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if leader && a.notLeader(w) {
			return
		}
		var in In
		if err := decodeBody(w, r, limit, &in); err != nil {
			writeRPC(w, http.StatusBadRequest, rpcError{Error: err.Error()})
			return
		}
		out, err := fn(r.Context(), &in)
		answer(w, out, err)
	}
}

// notLeader answers 421 with the leader's address on a follower.
func (a *Agent) notLeader(w http.ResponseWriter) bool {
	if a.node.IsLeader() {
		return false
	}
	addr, _ := a.node.Leader()
	writeRPC(w, http.StatusMisdirectedRequest, rpcError{Error: "not the leader", Leader: addr})
	return true
}

func answer(w http.ResponseWriter, out any, err error) {
	if err != nil {
		code := http.StatusServiceUnavailable
		var e *errRPC
		if errors.As(err, &e) {
			code = e.code
		}
		writeRPC(w, code, rpcError{Error: err.Error()})
		return
	}
	writeRPC(w, http.StatusOK, out)
}

// decodeBody decodes one JSON value of at most limit bytes, refusing
// unknown fields and trailing data.
func decodeBody(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return fmt.Errorf("request body exceeds %d bytes", limit)
		}
		return fmt.Errorf("decode request: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("decode request: data after the JSON value")
	}
	return nil
}

func writeRPC(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// acceptReport counts a verdict report when its sender is one of the
// cluster's voters (and not this agent), and bounds what it carries.
func (a *Agent) acceptReport(rep *VerdictReport) error {
	if rep.NodeID == a.node.ID() {
		return rpcFail(http.StatusForbidden, "a verdict report from this agent's own node id %q", rep.NodeID)
	}
	if !a.node.VoterIDs()[rep.NodeID] {
		a.log.Warn("verdict report refused: not a voter", zap.String("node_id", clip(rep.NodeID, 64)), zap.String("node", clip(rep.NodeName, maxNodeNameLen)))
		return rpcFail(http.StatusForbidden, "node %.64q is not a voter of this cluster; its verdicts do not count", rep.NodeID)
	}
	rep.NodeName = clip(rep.NodeName, maxNodeNameLen)
	a.learnName(rep.NodeID, rep.NodeName)
	for id, v := range rep.Verdicts {
		switch probe.State(v.State) {
		case probe.Healthy, probe.Unhealthy, probe.NeverHealthy, probe.Starting:
		default:
			return rpcFail(http.StatusBadRequest, "verdict for %.64q: unknown state %.32q", id, v.State)
		}
		v.Evidence = clipAll(v.Evidence, maxReportedEvidence, maxReportedEvidenceSz)
		rep.Verdicts[id] = v
	}
	a.votes.report(*rep, time.Now())
	return nil
}

// reportAck lists the names of the cluster's servers.
func (a *Agent) reportAck() ReportAck {
	ack := ReportAck{Names: map[string]string{}}
	servers, err := a.node.Servers()
	if err != nil {
		return ack
	}
	for _, s := range servers {
		if name := a.nameOf(string(s.ID)); name != "" {
			ack.Names[string(s.ID)] = name
		}
	}
	return ack
}

// learnName remembers a server's node name when both are well formed and
// the id is a server of this cluster.
func (a *Agent) learnName(id, name string) {
	if id == a.node.ID() || !serverIDRE.MatchString(id) || config.CheckNodeName(name) != nil || len(name) > maxNodeNameLen {
		return
	}
	servers, err := a.node.Servers()
	if err != nil {
		return
	}
	for _, s := range servers {
		if string(s.ID) == id {
			a.names.set(id, name)
			return
		}
	}
}

// clip cuts s to at most n bytes, at a character boundary.
func clip(s string, n int) string { return cut.To(s, n, "") }

// clipAll keeps at most n items of at most size bytes each.
func clipAll(items []string, n, size int) []string {
	if len(items) > n {
		items = items[:n]
	}
	out := make([]string, len(items))
	for i, s := range items {
		out[i] = clip(s, size)
	}
	return out
}

// callPeer sends one RPC to the agent at a raft address.
func (a *Agent) callPeer(ctx context.Context, addr, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.rpcClient.Do(req)
	if err != nil {
		return fmt.Errorf("rpc %s %s: %w", addr, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody))
	if err != nil {
		return fmt.Errorf("rpc %s %s: %w", addr, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e rpcError
		_ = json.Unmarshal(b, &e)
		if resp.StatusCode == http.StatusMisdirectedRequest {
			return fmt.Errorf("%w (leader %q)", errNotLeaderPeer, e.Leader)
		}
		if e.Error == "" && resp.StatusCode == http.StatusNotFound {
			e.Error = "the peer does not know this request: it runs an older release of immutd"
		}
		return fmt.Errorf("rpc %s %s: %s: %s", addr, path, resp.Status, e.Error)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

var errNotLeaderPeer = errors.New("peer is not the leader")

// errBecameLeader: a request meant for the leader found this agent leading.
var errBecameLeader = errors.New("this agent is the leader now")

// forward sends a request to the current leader, waiting up to
// rpcHoldTimeout for one to be known.
func (a *Agent) forward(ctx context.Context, method, path string, in, out any) error {
	deadline := time.Now().Add(rpcHoldTimeout)
	for {
		addr, _ := a.node.Leader()
		var err error
		switch {
		case a.node.IsLeader():
			// The caller handles it locally instead.
			return errBecameLeader
		case addr == "":
			err = errors.New("no leader: the cluster has no quorum")
		default:
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err = a.callPeer(cctx, addr, method, path, in, out)
			cancel()
			if err == nil {
				return nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// onLeader runs local on the leader; elsewhere it sends the request to
// the leader (method, path, in and out as for forward), and runs local
// after all when this agent became the leader meanwhile.
func (a *Agent) onLeader(ctx context.Context, method, path string, in, out any, local func() error) error {
	if !a.node.IsLeader() {
		if err := a.forward(ctx, method, path, in, out); !errors.Is(err, errBecameLeader) {
			return err
		}
	}
	return local()
}

// reportVerdicts pushes this agent's verdicts to the leader while it is a
// follower; the leader records its own directly.
func (a *Agent) reportVerdicts(ctx context.Context) error {
	tick := time.NewTicker(verdictReportInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		case <-a.verdictChanged:
		}
		if a.node.IsLeader() {
			continue
		}
		addr, _ := a.node.Leader()
		if addr == "" {
			continue
		}
		rep := a.localReport()
		var ack ReportAck
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := a.callPeer(cctx, addr, http.MethodPost, "/cluster/v1/verdicts", rep, &ack)
		cancel()
		for id, name := range ack.Names {
			a.learnName(id, name)
		}
		if err != nil && ctx.Err() == nil {
			a.log.Debug("verdict report failed", zap.String("leader", addr), zap.Error(err))
		}
	}
}

func (a *Agent) localReport() VerdictReport {
	rep := VerdictReport{NodeID: a.node.ID(), NodeName: a.cfg.NodeName, At: time.Now(), Verdicts: map[string]ReportedVerdict{}}
	for id, v := range a.prober.Verdicts() {
		rep.Verdicts[id] = ReportedVerdict{State: string(v.State), Since: v.Since, Evidence: clipAll(v.Evidence, maxReportedEvidence, maxReportedEvidenceSz)}
	}
	return rep
}

// ConsistentStatus fetches the leader's status (for ?consistent reads).
func (a *Agent) ConsistentStatus(ctx context.Context) (api.Status, error) {
	var st api.Status
	err := a.onLeader(ctx, http.MethodGet, "/cluster/v1/status", nil, &st, func() error {
		st = a.Status(ctx)
		return nil
	})
	return st, err
}
