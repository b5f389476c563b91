package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/immutd/immutd/internal/state"
)

// Client talks to an agent's API.
type Client struct {
	base  string
	hc    *http.Client
	token string
}

// NewClient returns a client for addr ("127.0.0.1:7979" or a URL).
func NewClient(addr string) *Client {
	base := addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return &Client{base: strings.TrimRight(base, "/"), hc: &http.Client{Timeout: 30 * time.Second}}
}

// WithToken sets the bearer token sent with every request.
func (c *Client) WithToken(token string) *Client { c.token = token; return c }

// WithCA trusts the CA in the PEM file for an https:// API.
func (c *Client) WithCA(caFile string) (*Client, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate", caFile)
	}
	c.hc.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	return c, nil
}

func (c *Client) do(ctx context.Context, method, path string, out any) error {
	return c.send(ctx, method, path, nil, out)
}

// send makes a request with a JSON body (none when in is nil).
func (c *Client) send(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, c.base+path, err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read: %w", method, c.base+path, err)
	}
	if resp.StatusCode >= 300 {
		var e Error
		if json.Unmarshal(answer, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, e.Error)
		}
		return fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	if out == nil {
		return nil
	}
	if raw, ok := out.(*[]byte); ok { // an answer that is not JSON
		*raw = answer
		return nil
	}
	if err := json.Unmarshal(answer, out); err != nil {
		return fmt.Errorf("%s %s: decode: %w", method, path, err)
	}
	return nil
}

// Status fetches /v1/status; consistent reads go through the leader.
func (c *Client) Status(ctx context.Context, consistent ...bool) (Status, error) {
	var s Status
	path := "/v1/status"
	if len(consistent) > 0 && consistent[0] {
		path += "?consistent"
	}
	return s, c.do(ctx, http.MethodGet, path, &s)
}

// Resolve re-pins a fleet's image reference.
func (c *Client) Resolve(ctx context.Context, fleet string) error {
	return c.do(ctx, http.MethodPost, "/v1/fleets/"+url.PathEscape(fleet)+"/resolve", nil)
}

// Members lists the cluster's servers.
func (c *Client) Members(ctx context.Context) ([]Member, error) {
	var ms []Member
	return ms, c.do(ctx, http.MethodGet, "/v1/cluster/members", &ms)
}

// Join asks the agent to join the cluster through a peer's cluster address.
func (c *Client) Join(ctx context.Context, addr string) error {
	return c.do(ctx, http.MethodPost, "/v1/cluster/join?addr="+url.QueryEscape(addr), nil)
}

// Leave asks the agent to leave the cluster (it then stops).
func (c *Client) Leave(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/v1/cluster/leave", nil)
}

// Remove removes a server from the cluster by id or name.
func (c *Client) Remove(ctx context.Context, node string) error {
	return c.do(ctx, http.MethodPost, "/v1/cluster/remove?node="+url.QueryEscape(node), nil)
}

// Events fetches events after seq.
func (c *Client) Events(ctx context.Context, after uint64, fleet string, limit int) ([]state.Event, error) {
	q := url.Values{}
	q.Set("after", fmt.Sprint(after))
	q.Set("limit", fmt.Sprint(limit))
	if fleet != "" {
		q.Set("fleet", fleet)
	}
	var evs []state.Event
	return evs, c.do(ctx, http.MethodGet, "/v1/events?"+q.Encode(), &evs)
}

// Plan fetches the leader's dry run (of one fleet, or of all).
func (c *Client) Plan(ctx context.Context, fleet string) (Plan, error) {
	var p Plan
	path := "/v1/plan"
	if fleet != "" {
		path += "?fleet=" + url.QueryEscape(fleet)
	}
	return p, c.do(ctx, http.MethodGet, path, &p)
}

// Explain asks why an instance was killed, or why it has not been.
func (c *Client) Explain(ctx context.Context, id string) (Explanation, error) {
	var e Explanation
	return e, c.do(ctx, http.MethodGet, "/v1/instances/"+url.PathEscape(id)+"/explain", &e)
}

// Rollouts fetches the fleets' versions and rollouts.
func (c *Client) Rollouts(ctx context.Context, fleet string) ([]Rollout, error) {
	var rs []Rollout
	path := "/v1/rollouts"
	if fleet != "" {
		path += "?fleet=" + url.QueryEscape(fleet)
	}
	return rs, c.do(ctx, http.MethodGet, path, &rs)
}

// RolloutStep pauses, resumes, aborts or reverts a fleet's rollout.
func (c *Client) RolloutStep(ctx context.Context, fleet string, req RolloutRequest) error {
	return c.send(ctx, http.MethodPost, "/v1/fleets/"+url.PathEscape(fleet)+"/rollout", req, nil)
}

// Pause adds a pause; it returns its id.
func (c *Client) Pause(ctx context.Context, req PauseRequest) ([]string, error) {
	var out map[string][]string
	err := c.send(ctx, http.MethodPost, "/v1/pause", req, &out)
	return out["paused"], err
}

// Unpause removes pauses; it returns their ids.
func (c *Client) Unpause(ctx context.Context, req UnpauseRequest) ([]string, error) {
	var out map[string][]string
	err := c.send(ctx, http.MethodPost, "/v1/unpause", req, &out)
	return out["unpaused"], err
}

// Retry clears a fleet's launch failures.
func (c *Client) Retry(ctx context.Context, fleet string) error {
	return c.do(ctx, http.MethodPost, "/v1/fleets/"+url.PathEscape(fleet)+"/retry", nil)
}

// Drain asks the agent to drain an unconfigured fleet.
func (c *Client) Drain(ctx context.Context, fleet string) error {
	return c.do(ctx, http.MethodPost, "/v1/fleets/"+url.PathEscape(fleet)+"/drain", nil)
}
