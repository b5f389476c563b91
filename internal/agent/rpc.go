package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"time"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/api"
)

// Agent-to-agent RPC: JSON over HTTP on the cluster port, behind mutual
// TLS when the cluster has certificates. Writes are forwarded to the
// leader; the leader alone applies them.

// rpcHoldTimeout is how long a forwarded request waits for a leader.
const rpcHoldTimeout = 5 * time.Second

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

type rpcError struct {
	Error string `json:"error"`
	// Leader is set when the receiver is not the leader.
	Leader string `json:"leader,omitempty"`
}

// rpcHandler serves /cluster/v1/.
func (a *Agent) rpcHandler() http.Handler {
	mux := http.NewServeMux()
	leaderOnly := func(h func(w http.ResponseWriter, r *http.Request)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if !a.node.IsLeader() {
				addr, _ := a.node.Leader()
				writeRPC(w, http.StatusMisdirectedRequest, rpcError{Error: "not the leader", Leader: addr})
				return
			}
			h(w, r)
		}
	}
	mux.HandleFunc("GET /cluster/v1/info", func(w http.ResponseWriter, r *http.Request) {
		writeRPC(w, http.StatusOK, a.info())
	})
	mux.HandleFunc("POST /cluster/v1/propose", leaderOnly(func(w http.ResponseWriter, r *http.Request) {
		var p Proposal
		if !readRPC(w, r, &p) {
			return
		}
		if err := a.commitProposal(r.Context(), &p); err != nil {
			writeRPC(w, http.StatusServiceUnavailable, rpcError{Error: err.Error()})
			return
		}
		writeRPC(w, http.StatusOK, struct{}{})
	}))
	mux.HandleFunc("POST /cluster/v1/verdicts", leaderOnly(func(w http.ResponseWriter, r *http.Request) {
		var rep VerdictReport
		if !readRPC(w, r, &rep) {
			return
		}
		a.votes.report(rep, time.Now())
		writeRPC(w, http.StatusOK, struct{}{})
	}))
	mux.HandleFunc("POST /cluster/v1/drain", leaderOnly(func(w http.ResponseWriter, r *http.Request) {
		var req map[string]string
		if !readRPC(w, r, &req) {
			return
		}
		if err := a.Drain(r.Context(), req["fleet"]); err != nil {
			writeRPC(w, http.StatusConflict, rpcError{Error: err.Error()})
			return
		}
		writeRPC(w, http.StatusOK, struct{}{})
	}))
	mux.HandleFunc("POST /cluster/v1/resolve", leaderOnly(func(w http.ResponseWriter, r *http.Request) {
		var req map[string]string
		if !readRPC(w, r, &req) {
			return
		}
		if err := a.Resolve(r.Context(), req["fleet"]); err != nil {
			writeRPC(w, http.StatusConflict, rpcError{Error: err.Error()})
			return
		}
		writeRPC(w, http.StatusOK, struct{}{})
	}))
	mux.HandleFunc("GET /cluster/v1/status", leaderOnly(func(w http.ResponseWriter, r *http.Request) {
		writeRPC(w, http.StatusOK, a.Status(r.Context()))
	}))
	a.clusterRPC(mux, leaderOnly)
	return mux
}

func readRPC(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, 256<<20))
	if err := dec.Decode(v); err != nil {
		writeRPC(w, http.StatusBadRequest, rpcError{Error: "decode request: " + err.Error()})
		return false
	}
	return true
}

func writeRPC(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
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
	b, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return fmt.Errorf("rpc %s %s: %w", addr, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e rpcError
		_ = json.Unmarshal(b, &e)
		if resp.StatusCode == http.StatusMisdirectedRequest {
			return fmt.Errorf("%w (leader %q)", errNotLeaderPeer, e.Leader)
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

// forwardJSON posts to the current leader, waiting up to rpcHoldTimeout
// for one to be known.
func (a *Agent) forwardJSON(ctx context.Context, path string, in, out any) error {
	return a.forward(ctx, http.MethodPost, path, in, out)
}

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

func (a *Agent) forwardProposal(ctx context.Context, p *Proposal) error {
	return a.forwardJSON(ctx, "/cluster/v1/propose", p, nil)
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
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := a.callPeer(cctx, addr, http.MethodPost, "/cluster/v1/verdicts", rep, nil)
		cancel()
		if err != nil && ctx.Err() == nil {
			a.log.Debug("verdict report failed", zap.String("leader", addr), zap.Error(err))
		}
	}
}

func (a *Agent) localReport() VerdictReport {
	rep := VerdictReport{NodeID: a.node.ID(), NodeName: a.cfg.NodeName, At: time.Now(), Verdicts: map[string]ReportedVerdict{}}
	for id, v := range a.prober.Verdicts() {
		rep.Verdicts[id] = ReportedVerdict{State: string(v.State), Since: v.Since, Evidence: v.Evidence}
	}
	return rep
}

// ConsistentStatus fetches the leader's status (for ?consistent reads).
func (a *Agent) ConsistentStatus(ctx context.Context) (api.Status, error) {
	if a.node.IsLeader() {
		return a.Status(ctx), nil
	}
	var st api.Status
	err := a.forward(ctx, http.MethodGet, "/cluster/v1/status", nil, &st)
	if errors.Is(err, errBecameLeader) {
		return a.Status(ctx), nil
	}
	return st, err
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
