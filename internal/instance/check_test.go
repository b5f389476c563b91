package instance

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestLaunchRequestCheck(t *testing.T) {
	for _, c := range []struct {
		req  LaunchRequest
		want string
	}{
		{LaunchRequest{InstanceID: "web-1"}, ""},
		{LaunchRequest{InstanceID: strings.Repeat("a", 128)}, ""},
		{LaunchRequest{InstanceID: strings.Repeat("a", 129)}, "must be 1-128"},
		{LaunchRequest{InstanceID: ""}, "must be 1-128"},
		{LaunchRequest{InstanceID: "../x"}, "must be 1-128"},
		{LaunchRequest{InstanceID: "-x"}, "must be 1-128"},
		{LaunchRequest{InstanceID: "x", Launch: Launch{Env: map[string]string{"A=B": "1"}}}, "launch env"},
		{LaunchRequest{InstanceID: "x", Launch: Launch{Env: map[string]string{"A": "1\x00"}}}, "launch env"},
		{LaunchRequest{InstanceID: "x", Launch: Launch{Env: map[string]string{"": "1"}}}, "launch env"},
	} {
		err := c.req.Check()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%+v: %v", c.req, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrPermanent)):
			t.Errorf("%+v: %v, want a permanent error with %q", c.req, err, c.want)
		}
	}
}

func TestPermanentKeepsTheErrorAndItsChain(t *testing.T) {
	base := errors.New("no such image")
	err := fmt.Errorf("launch x: %w", Permanent(base))
	if !errors.Is(err, ErrPermanent) || !errors.Is(err, base) || err.Error() != "launch x: no such image" {
		t.Fatalf("%v", err)
	}
	if Permanent(nil) != nil || errors.Is(base, ErrPermanent) {
		t.Fatal("Permanent marks what it should not")
	}
}
