package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/immutd/immutd/internal/state"
)

// Client talks to an agent's API.
type Client struct {
	base string
	hc   *http.Client
}

// NewClient returns a client for addr ("127.0.0.1:7979" or a URL).
func NewClient(addr string) *Client {
	base := addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return &Client{base: strings.TrimRight(base, "/"), hc: &http.Client{Timeout: 15 * time.Second}}
}

func (c *Client) do(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, c.base+path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read: %w", method, c.base+path, err)
	}
	if resp.StatusCode >= 300 {
		var e Error
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, e.Error)
		}
		return fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("%s %s: decode: %w", method, path, err)
	}
	return nil
}

// Status fetches /v1/status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.do(ctx, http.MethodGet, "/v1/status", &s)
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

// Drain asks the agent to drain an unconfigured fleet.
func (c *Client) Drain(ctx context.Context, fleet string) error {
	return c.do(ctx, http.MethodPost, "/v1/fleets/"+url.PathEscape(fleet)+"/drain", nil)
}
