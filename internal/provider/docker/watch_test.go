package docker

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/immutd/immutd/internal/instance"
)

// startWatch runs p.watch until the test ends and returns channels that
// receive a value per notify call and per accepted subscription.
func startWatch(t *testing.T, p *Provider) (notified, subscribed <-chan struct{}, stop func()) {
	t.Helper()
	n := make(chan struct{}, 64)
	s := make(chan struct{}, 64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.watch(ctx, func() { n <- struct{}{} }, func() { s <- struct{}{} })
	}()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("Watch did not return after its context was cancelled")
		}
	}
	t.Cleanup(stop)
	return n, s, stop
}

func receive(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(time.Minute):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func drain(ch <-chan struct{}) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

func TestWatchNotifiesOnKill(t *testing.T) {
	p := needEngine(t)
	fleet := testFleet(t, p)
	obs := launch(t, p, request(fleet, fleet+"-1", instance.Launch{}))
	notified, subscribed, stop := startWatch(t, p)
	receive(t, subscribed, "the event subscription")
	drain(notified)
	if err := p.cli.ContainerKill(testCtx(t), obs.ProviderRef, "SIGKILL"); err != nil {
		t.Fatal(err)
	}
	receive(t, notified, "a notification for the killed container")
	stop()
}

// fakeEngine serves just enough of the engine API over a unix socket for
// the event stream: /_ping and /v1.41/events. The first events request
// gets an empty stream that ends at once (an engine restart); later ones
// send one event when sendEvent is closed and then stay open.
type fakeEngine struct {
	sock      string
	requests  atomic.Int32
	sendEvent chan struct{}
	badQuery  atomic.Value // string: a query that lacked the label filter
}

func newFakeEngine(t *testing.T) *fakeEngine {
	t.Helper()
	f := &fakeEngine{sock: filepath.Join(t.TempDir(), "engine.sock"), sendEvent: make(chan struct{})}
	ln, err := net.Listen("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/_ping", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Api-Version", "1.41")
		io.WriteString(w, "OK")
	})
	mux.HandleFunc("/v1.41/events", func(w http.ResponseWriter, r *http.Request) {
		n := f.requests.Add(1)
		if q := r.URL.Query().Get("filters"); !strings.Contains(q, LabelManaged+"=true") || !strings.Contains(q, `"die"`) {
			f.badQuery.Store(q)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		if n == 1 {
			return
		}
		select {
		case <-f.sendEvent:
			io.WriteString(w, `{"Type":"container","Action":"die","Actor":{"ID":"abc","Attributes":{"io.immutd.managed":"true"}},"time":1}`+"\n")
			w.(http.Flusher).Flush()
		case <-r.Context().Done():
			return
		}
		<-r.Context().Done()
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return f
}

func TestWatchReconnects(t *testing.T) {
	f := newFakeEngine(t)
	p, err := New(Options{Host: "unix://" + f.sock})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.watchBackoff = 10 * time.Millisecond
	notified, subscribed, stop := startWatch(t, p)
	receive(t, subscribed, "the first subscription")
	receive(t, subscribed, "the subscription after the stream broke")
	receive(t, notified, "the notification after the reconnect")
	close(f.sendEvent)
	receive(t, notified, "the notification for the event")
	stop()
	if got := f.requests.Load(); got != 2 {
		t.Errorf("events requests = %d, want 2", got)
	}
	if q, _ := f.badQuery.Load().(string); q != "" {
		t.Errorf("events filters %s lack the managed label or the die event", q)
	}
}

func TestWatchEngineDown(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	p, err := New(Options{Host: "unix://" + filepath.Join(t.TempDir(), "none.sock"), Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.watchBackoff = time.Millisecond
	p.watchMaxBackoff = 5 * time.Millisecond
	notified, subscribed, stop := startWatch(t, p)
	waitFor(t, "three failed subscriptions", func() (bool, error) {
		return logs.FilterMessage("event stream broke; subscribing again").Len() >= 3, nil
	})
	stop()
	select {
	case <-notified:
		t.Error("notify called although the engine was never reachable")
	case <-subscribed:
		t.Error("subscribed to an engine that is down")
	default:
	}
}
