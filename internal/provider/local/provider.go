package local

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// DefaultBindHost is the host instances listen on when Options.BindHost is empty.
const DefaultBindHost = "127.0.0.1"

// ErrNotFound is returned (wrapped) by Inspect for an instance the
// provider has no record of.
var ErrNotFound = errors.New("no such instance")

// stagingPrefix names the temporary directories of imports in progress.
const stagingPrefix = ".import-"

// Options configures a Provider.
type Options struct {
	// Dir holds the image store, instance roots, metadata and logs. Required.
	// One provider (one agent) owns a directory at a time.
	Dir string
	// BindHost is the host instances listen on and probes dial. Default 127.0.0.1.
	BindHost string
	// Logger receives the provider's logs. Default: no logging.
	Logger *zap.Logger
}

// Provider runs instances as local processes. Its methods are safe for
// concurrent use; operations on the same instance id are serialized.
type Provider struct {
	dir          string
	imagesDir    string
	instancesDir string
	metaDir      string
	logsDir      string
	tmpDir       string
	bindHost     string
	procRoot     string
	log          *zap.Logger
	now          func() time.Time

	importSem chan struct{} // one import at a time
	locks     keyedLocks

	mu       sync.Mutex
	children map[string]*child       // processes this provider started and still waits for
	records  map[string]*imageRecord // image records by digest
}

// child is a process started by this provider, reaped by a goroutine.
type child struct {
	pid  int
	done chan struct{} // closed when the process has been reaped
}

// New opens (creating if needed) the provider directory. Instances
// launched by an earlier provider over the same directory (before an
// agent restart) are found again by List.
func New(opts Options) (*Provider, error) {
	if opts.Dir == "" {
		return nil, errors.New("local: dir is required")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("local: dir: %w", err)
	}
	host := opts.BindHost
	if host == "" {
		host = DefaultBindHost
	}
	if net.ParseIP(host) == nil && host != "localhost" {
		return nil, fmt.Errorf("local: bind host %q is not an IP address", host)
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	p := &Provider{
		dir:          dir,
		imagesDir:    filepath.Join(dir, "images"),
		instancesDir: filepath.Join(dir, "instances"),
		metaDir:      filepath.Join(dir, "meta"),
		logsDir:      filepath.Join(dir, "logs"),
		tmpDir:       filepath.Join(dir, "tmp"),
		bindHost:     host,
		procRoot:     "/proc",
		log:          log.Named("local"),
		now:          time.Now,
		importSem:    make(chan struct{}, 1),
		children:     map[string]*child{},
		records:      map[string]*imageRecord{},
	}
	for _, d := range []string{p.imagesDir, p.instancesDir, p.metaDir, p.logsDir, p.tmpDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("local: %w", err)
		}
	}
	p.removeLeftovers()
	return p, nil
}

// leftoverAge is how old a staging directory or temporary file must be
// before New removes it. Several agents of one cluster may share the
// directory (one host), so a young one may be another agent's import or
// write in progress.
const leftoverAge = time.Hour

// removeLeftovers deletes staging directories and temporary metadata
// files that a crash in the middle of an import or a write left behind.
func (p *Provider) removeLeftovers() {
	old := func(path string) bool {
		fi, err := os.Lstat(path)
		return err == nil && time.Since(fi.ModTime()) > leftoverAge
	}
	if des, err := os.ReadDir(p.imagesDir); err == nil {
		for _, de := range des {
			path := filepath.Join(p.imagesDir, de.Name())
			if strings.HasPrefix(de.Name(), stagingPrefix) && old(path) {
				if err := removeTree(path); err != nil {
					p.log.Warn("remove leftover staging directory failed", zap.String("path", de.Name()), zap.Error(err))
				}
			}
		}
	}
	for _, d := range []string{p.metaDir, p.imagesDir} {
		des, err := os.ReadDir(d)
		if err != nil {
			continue
		}
		for _, de := range des {
			path := filepath.Join(d, de.Name())
			if n := de.Name(); strings.HasPrefix(n, ".") && strings.HasSuffix(n, tmpSuffix) && old(path) {
				_ = os.Remove(path)
			}
		}
	}
}

// Dir returns the provider's (absolute) directory.
func (p *Provider) Dir() string { return p.dir }

func (p *Provider) instanceRoot(id string) string { return filepath.Join(p.instancesDir, id) }
func (p *Provider) instanceTmp(id string) string  { return filepath.Join(p.tmpDir, id) }
func (p *Provider) logPath(id string) string      { return filepath.Join(p.logsDir, id+".log") }
func (p *Provider) metaPath(id string) string     { return filepath.Join(p.metaDir, id+".json") }

var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// checkID rejects ids that cannot safely name files.
func checkID(id string) error {
	if !validID.MatchString(id) {
		return fmt.Errorf("instance id %q must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit", id)
	}
	return nil
}

// keyedLocks is a set of mutexes by key whose Lock honours a context.
type keyedLocks struct {
	mu sync.Mutex
	m  map[string]*keyedLock
}

type keyedLock struct {
	ch   chan struct{}
	refs int
}

// lock locks key and returns the unlock function.
func (k *keyedLocks) lock(ctx context.Context, key string) (func(), error) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyedLock{}
	}
	l := k.m[key]
	if l == nil {
		l = &keyedLock{ch: make(chan struct{}, 1)}
		k.m[key] = l
	}
	l.refs++
	k.mu.Unlock()
	release := func() {
		k.mu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
	select {
	case l.ch <- struct{}{}:
		return func() { <-l.ch; release() }, nil
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
}

// tmpSuffix ends the names of files being written atomically.
const tmpSuffix = ".tmp"

// writeFileAtomic replaces name with data: write a temporary file in the
// same directory, fsync it, rename it over name, fsync the directory.
func writeFileAtomic(name string, data []byte) error {
	dir, base := filepath.Split(name)
	f, err := os.CreateTemp(dir, "."+base+".*"+tmpSuffix)
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o640); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, name); err != nil {
		return err
	}
	ok = true
	return syncDir(dir)
}

// removeTree removes a directory tree, also when the instance made parts
// of it unwritable. A missing tree is not an error.
func removeTree(root string) error {
	err := os.RemoveAll(root)
	if err == nil {
		return nil
	}
	// Make every directory writable and searchable, then try again.
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if d != nil && d.IsDir() {
			_ = os.Chmod(p, 0o700)
		}
		return nil
	})
	return os.RemoveAll(root)
}
