package docker

import (
	"context"
	"errors"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"go.uber.org/zap"
)

// watchedActions are the container events that can end an instance.
var watchedActions = []events.Action{
	events.ActionDie, events.ActionOOM, events.ActionDestroy, events.ActionStop, events.ActionKill,
}

// Watch subscribes to the engine's events for immutd's containers (die,
// oom, destroy, stop, kill) and calls notify for them, so the caller can
// reconcile at once instead of at its next pass. It returns when ctx is
// done.
//
// notify is called from one goroutine, never concurrently, and events
// that arrive while a call is still running are folded into one more
// call: it is a wake-up, not an event log. When the stream breaks (the
// engine restarted or is unreachable) Watch subscribes again with
// exponential backoff, and calls notify once after it succeeds, because
// events may have been missed in between (also when the engine was down
// when Watch began).
func (p *Provider) Watch(ctx context.Context, notify func()) {
	p.watch(ctx, notify, nil)
}

// watch is Watch; subscribed, when set, is called each time the engine
// accepted a subscription.
func (p *Provider) watch(ctx context.Context, notify func(), subscribed func()) {
	wake := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-wake:
				notify()
			}
		}
	}()
	defer func() { <-done }()
	poke := func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}

	opts := events.ListOptions{Filters: filters.NewArgs(
		filters.Arg("type", string(events.ContainerEventType)),
		filters.Arg("label", LabelManaged+"=true"),
	)}
	for _, a := range watchedActions {
		opts.Filters.Add("event", string(a))
	}

	backoff := p.watchBackoff
	for attempt := 0; ctx.Err() == nil; attempt++ {
		start := time.Now()
		err := p.stream(ctx, opts, func() {
			if attempt > 0 {
				// Events may have been missed while there was no stream.
				p.log.Info("event stream reconnected", zap.Int("attempt", attempt+1))
				poke()
			}
			if subscribed != nil {
				subscribed()
			}
		}, poke)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) >= p.watchStable {
			backoff = p.watchBackoff
		}
		p.log.Warn("event stream broke; subscribing again", zap.Float64("backoff_seconds", backoff.Seconds()), zap.Error(err))
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, p.watchMaxBackoff)
	}
}

// stream runs one subscription until it breaks or ctx is done. up is
// called once the subscription is made; event is called for each event.
func (p *Provider) stream(ctx context.Context, opts events.ListOptions, up, event func()) error {
	// The client hands back the channels before it says whether the
	// request succeeded; a ping first tells an engine that is down from
	// one that is up, so up is not called for an engine that is down.
	if _, err := p.cli.Ping(ctx); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	msgs, errs := p.cli.Events(ctx, opts)
	up()
	for {
		select {
		case <-msgs:
			event()
		case err := <-errs:
			if err == nil {
				err = errors.New("event stream closed")
			}
			return err
		}
	}
}
