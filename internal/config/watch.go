package config

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
)

// WatchOptions tunes a Watcher. The zero value uses the defaults.
type WatchOptions struct {
	// Debounce is how long the directory must be quiet after a change
	// before it is read again. Default 50ms.
	Debounce time.Duration
	// Rescan is the period of a full re-read that catches changes no
	// event announced. Default 30s.
	Rescan time.Duration
	// Logger receives the watcher's own problems (lost watch, fsnotify
	// errors). Default: no logging.
	Logger *zap.Logger
	// Now stamps updates. Default time.Now.
	Now func() time.Time
}

// Update is one state of the fleets directory.
type Update struct {
	// Set is the decoded directory; nil when Err is set.
	Set *FleetSet
	// Err is Diagnostics for invalid content, or the error that kept the
	// directory from being read. The caller keeps its last good Set.
	Err error
	// Hash is a sha256 over the names and contents of the fleet files, in
	// name order; "" when the directory could not be read. Equal hashes
	// mean equal input.
	Hash string
	// At is when the directory was read.
	At time.Time
	// Files are the fleet files read, for proposing them to the leader;
	// nil when Err is set.
	Files []File
}

// Watcher follows a fleets directory and publishes its state.
type Watcher struct {
	dir     string // as given: names files in diagnostics and FleetSet.Dir
	path    string // cleaned: matches fsnotify's event names
	opts    WatchOptions
	log     *zap.Logger
	updates chan Update
	started atomic.Bool

	// State of the Run goroutine.
	fw       *fsnotify.Watcher
	watched  os.FileInfo // the directory the watch is on; nil when there is none
	lastKey  string      // hash and error text of the last published update
	retry    time.Duration
	retryAt  *time.Timer
	debounce *time.Timer
	dueBy    time.Time // the latest a pending debounced reload may run
	pending  bool

	// afterReload, when set (by tests), is called after each read of the
	// directory with whether it published an update.
	afterReload func(published bool)
}

// NewWatcher returns a watcher of dir. Nothing happens until Run.
func NewWatcher(dir string, opts WatchOptions) *Watcher {
	opts = opts.withDefaults()
	return &Watcher{
		dir:     dir,
		path:    filepath.Clean(dir),
		opts:    opts,
		log:     opts.Logger,
		updates: make(chan Update, 1),
	}
}

// Updates delivers the directory's states: the first read, then one
// update per change of content (or of the outcome of reading it, such as
// a local image directory appearing). A slow reader never blocks the
// watcher: only the latest unread update is kept. The channel is never
// closed; readers stop when the context they gave Run is done.
func (w *Watcher) Updates() <-chan Update { return w.updates }

// Run publishes the initial state, then watches the directory until ctx
// is cancelled, when it returns nil. It recovers when the directory is
// removed, renamed or recreated. Run may be called once.
func (w *Watcher) Run(ctx context.Context) error {
	if !w.started.CompareAndSwap(false, true) {
		return errors.New("config: watcher already running")
	}
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("config: watch %s: %w", w.dir, err)
	}
	defer fw.Close()
	w.fw = fw

	w.retryAt = stoppedTimer()
	defer w.retryAt.Stop()
	w.debounce = stoppedTimer()
	defer w.debounce.Stop()
	rescan := time.NewTicker(w.opts.Rescan)
	defer rescan.Stop()

	if !w.addWatch() {
		w.scheduleRetry()
	}
	w.reload(true)
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-fw.Events:
			if !ok {
				return nil
			}
			w.handle(ev)
		case err, ok := <-fw.Errors:
			if !ok {
				return nil
			}
			w.log.Warn("fleets_watch_error", zap.String("dir", w.dir), zap.Error(err))
			w.checkWatch()
			w.reload(false)
		case <-w.debounce.C:
			w.pending = false
			w.checkWatch()
			w.reload(false)
		case <-w.retryAt.C:
			if w.addWatch() {
				w.log.Info("fleets_watch_restored", zap.String("dir", w.dir))
				w.reload(false)
			} else {
				w.scheduleRetry()
			}
		case <-rescan.C:
			w.checkWatch()
			w.reload(false)
		}
	}
}

func stoppedTimer() *time.Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}

// handle schedules a reload for an event that can change the set.
func (w *Watcher) handle(ev fsnotify.Event) {
	if filepath.Clean(ev.Name) == w.path {
		if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
			w.lostWatch()
		}
		w.schedule()
		return
	}
	if isFleetFileName(filepath.Base(ev.Name)) {
		w.schedule()
	}
}

// schedule (re)starts the debounce timer, bounded so that a steady stream
// of events still gets read.
func (w *Watcher) schedule() {
	now := time.Now()
	if !w.pending {
		w.pending = true
		w.dueBy = now.Add(w.opts.Debounce * watchMaxDebounces)
	}
	w.debounce.Reset(min(w.opts.Debounce, max(w.dueBy.Sub(now), 0)))
}

// addWatch watches the directory, making sure the watch is on the
// directory that is at the path now.
func (w *Watcher) addWatch() bool {
	before, err := os.Stat(w.path)
	if err != nil || !before.IsDir() {
		return false
	}
	if err := w.fw.Add(w.path); err != nil {
		w.log.Debug("fleets_watch_add_failed", zap.String("dir", w.dir), zap.Error(err))
		return false
	}
	after, err := os.Stat(w.path)
	if err != nil || !os.SameFile(before, after) {
		w.removeWatch()
		return false
	}
	w.watched = after
	w.retry = 0
	return true
}

func (w *Watcher) removeWatch() {
	// The watch may already be gone with the directory; that is fine.
	_ = w.fw.Remove(w.path)
}

// lostWatch drops the watch and starts retrying to add it.
func (w *Watcher) lostWatch() {
	if w.watched == nil {
		return
	}
	w.log.Warn("fleets_watch_lost", zap.String("dir", w.dir))
	w.watched = nil
	w.removeWatch()
	w.scheduleRetry()
}

// checkWatch notices a directory that was replaced without an event
// reaching us.
func (w *Watcher) checkWatch() {
	if w.watched == nil {
		return
	}
	now, err := os.Stat(w.path)
	if err != nil || !os.SameFile(w.watched, now) {
		w.lostWatch()
	}
}

func (w *Watcher) scheduleRetry() {
	if w.retry == 0 {
		w.retry = watchRetryMin
	} else {
		w.retry = min(2*w.retry, watchRetryMax)
	}
	w.retryAt.Reset(w.retry)
}

// reload reads the directory and publishes the result when it differs
// from the last one published, or always when force is set.
func (w *Watcher) reload(force bool) {
	var u Update
	files, err := ReadFleetDir(w.dir)
	switch {
	case errors.Is(err, ErrVanished):
		// A file went away between listing and reading: the directory is
		// changing. Read it again once it is quiet; never publish this.
		w.log.Debug("fleets_changing", zap.String("dir", w.dir), zap.Error(err))
		w.schedule()
		if w.afterReload != nil {
			w.afterReload(false)
		}
		return
	default:
		if err == nil {
			u.Hash = HashFleetFiles(files)
		}
		u.Set, u.Err = parseRead(w.dir, files, err)
		if u.Err == nil {
			u.Files = files
		}
	}
	key := u.Hash
	if u.Err != nil {
		key += "\n" + u.Err.Error()
	}
	publish := force || key != w.lastKey
	if publish {
		w.lastKey = key
		u.At = w.opts.Now()
		w.publish(u)
	}
	if w.afterReload != nil {
		w.afterReload(publish)
	}
}

// publish hands u to the reader, replacing an unread older update.
func (w *Watcher) publish(u Update) {
	for {
		select {
		case w.updates <- u:
			return
		default:
		}
		select {
		case <-w.updates:
		default:
		}
	}
}
