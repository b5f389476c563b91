package local

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/provider/hostdir"
)

// DefaultBindHost is the host instances listen on when Options.BindHost is empty.
const DefaultBindHost = "127.0.0.1"

// ErrNotFound is returned (wrapped) by Inspect for an instance the
// provider has no metadata for. It wraps instance.ErrGone, which callers
// treat as "terminated meanwhile", not as a failure.
var ErrNotFound = fmt.Errorf("no metadata: %w", instance.ErrGone)

// stagingPrefix names the temporary directories of imports in progress.
const stagingPrefix = ".import-"

// Log size limits (see Options.LogMaxSize).
const (
	DefaultLogMaxSize = 16 << 20
	MinLogMaxSize     = 64 << 10
)

// Options configures a Provider.
type Options struct {
	// Dir holds the image store, instance roots, metadata, locks, port
	// reservations and (by default) logs. Required. Several agents on one
	// host may share it, each with its own Provider: operations on one
	// instance are serialized across them by locks/.
	Dir string
	// BindHost is the host instances listen on and probes dial. Default 127.0.0.1.
	BindHost string
	// LogDir receives the instances' stdout and stderr as <id>.log and
	// the rotated <id>.log.1. Default <Dir>/logs; put it on another
	// filesystem to keep instance output away from the raft data. Every
	// agent sharing Dir must use the same LogDir.
	LogDir string
	// LogMaxSize is the size in bytes above which Run rotates an
	// instance log. Default DefaultLogMaxSize (16 MiB); at least
	// MinLogMaxSize (64 KiB).
	LogMaxSize int64
	// KeptLogDir keeps the last 256 KiB of the output of each instance
	// that is gone, for 7 days, at most 500 of them (hostdir.Archive).
	// Default <Dir>/kept-logs.
	KeptLogDir string
	// DriftRehashInterval bounds how long Inspect trusts its drift cache
	// for a file: every file of every instance is hashed again at least
	// this often (each at its own period between half of it and all of
	// it), even if its stat did not change. Default
	// DefaultDriftRehashInterval (5 minutes); negative turns the backstop
	// off. See driftcache.go.
	DriftRehashInterval time.Duration
	// Logger receives the provider's logs. Default: no logging.
	Logger *zap.Logger
}

// Provider runs instances as local processes. Its methods are safe for
// concurrent use; operations on the same instance id are serialized, also
// with the other providers over the same directory.
type Provider struct {
	dir          string
	imagesDir    string
	instancesDir string
	metaDir      string
	locksDir     string
	portsDir     string
	logDir       string
	tmpDir       string
	logMaxSize   int64
	kept         *hostdir.Archive
	bindHost     string
	procRoot     string
	log          *zap.Logger
	now          func() time.Time
	// candidatePort proposes a port for a launch (freePort; tests replace it).
	candidatePort func() (int, error)

	importSem chan struct{} // one import at a time
	locks     keyedLocks

	drift       driftCache
	rehashAfter time.Duration // Options.DriftRehashInterval, <= 0: no backstop
	racyWindow  time.Duration // racyWindow; tests shorten it
	noCache     bool          // hash every file at every inspection (benchmarks)
	hashedBytes atomic.Int64  // file content hashed by inspections

	reaper reaper // waits for the children, one goroutine for all (reaper.go)

	mu       sync.Mutex
	children map[string]*child       // processes this provider started and still waits for
	records  map[string]*imageRecord // image records by digest
	watchers map[*int]func()         // Watch's notify funcs
}

// child is a process started by this provider, reaped by its reaper.
type child struct {
	pid  int
	done chan struct{} // closed when the process has been reaped
}

// New opens (creating if needed) the provider directory. Instances
// launched by an earlier provider over the same directory (before an
// agent restart), or by another agent sharing it, are found by List.
func New(opts Options) (*Provider, error) {
	if opts.Dir == "" {
		return nil, errors.New("local: dir is required")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("local: dir: %w", err)
	}
	logDir := filepath.Join(dir, "logs")
	if opts.LogDir != "" {
		if logDir, err = filepath.Abs(opts.LogDir); err != nil {
			return nil, fmt.Errorf("local: log dir: %w", err)
		}
	}
	logMax := opts.LogMaxSize
	if logMax == 0 {
		logMax = DefaultLogMaxSize
	}
	if logMax < MinLogMaxSize {
		return nil, fmt.Errorf("local: log max size %d is below the minimum of %d bytes (64 KiB)", logMax, MinLogMaxSize)
	}
	host := opts.BindHost
	if host == "" {
		host = DefaultBindHost
	}
	if net.ParseIP(host) == nil && host != "localhost" {
		return nil, fmt.Errorf("local: bind host %q is not an IP address", host)
	}
	rehash := opts.DriftRehashInterval
	if rehash == 0 {
		rehash = DefaultDriftRehashInterval
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
		locksDir:     filepath.Join(dir, "locks"),
		portsDir:     filepath.Join(dir, "ports"),
		logDir:       logDir,
		tmpDir:       filepath.Join(dir, "tmp"),
		logMaxSize:   logMax,
		rehashAfter:  rehash,
		racyWindow:   racyWindow,
		bindHost:     host,
		procRoot:     "/proc",
		log:          log.Named("local"),
		now:          time.Now,
		importSem:    make(chan struct{}, 1),
		children:     map[string]*child{},
		records:      map[string]*imageRecord{},
	}
	p.candidatePort = p.freePort
	keptDir := opts.KeptLogDir
	if keptDir == "" {
		keptDir = filepath.Join(dir, "kept-logs")
	}
	if p.kept, err = hostdir.NewArchive(keptDir, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}
	for _, d := range []string{p.imagesDir, p.instancesDir, p.metaDir, p.locksDir, p.portsDir, p.logDir, p.tmpDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("local: %w", err)
		}
	}
	p.removeLeftovers()
	p.reserveRecordedPorts()
	return p, nil
}

// leftoverAge is how old a staging directory or temporary file must be
// before New removes it. Several agents of one cluster may share the
// directory (one host), so a young one may be another agent's import or
// write in progress.
const leftoverAge = time.Hour

// removeLeftovers deletes staging directories, temporary files and lock
// files that a crash in the middle of an import, a write or an
// operation on an instance left behind.
func (p *Provider) removeLeftovers() {
	old := func(path string) bool {
		fi, err := os.Lstat(path)
		return err == nil && time.Since(fi.ModTime()) > leftoverAge
	}
	if des, err := os.ReadDir(p.imagesDir); err == nil {
		for _, de := range des {
			path := filepath.Join(p.imagesDir, de.Name())
			if strings.HasPrefix(de.Name(), stagingPrefix) && old(path) {
				if err := hostdir.RemoveTree(path); err != nil {
					p.log.Warn("remove leftover staging directory failed", zap.String("path", de.Name()), zap.Error(err))
				}
			}
		}
	}
	for _, d := range []string{p.metaDir, p.imagesDir, p.portsDir, p.logDir} {
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
	// A lock file of an instance without metadata is removed by unlock;
	// taking a free one and releasing it is all it needs. A busy one
	// belongs to an operation in progress.
	if des, err := os.ReadDir(p.locksDir); err == nil {
		for _, de := range des {
			id, ok := strings.CutSuffix(de.Name(), ".lock")
			if !ok || instance.CheckID(id) != nil {
				continue
			}
			if l, err := p.tryLockInstance(id); err == nil {
				l.unlock()
			}
		}
	}
}

// Dir returns the provider's (absolute) directory.
func (p *Provider) Dir() string { return p.dir }

// LogPath returns the file that receives the stdout and stderr of
// instance id; Run keeps its previous content in LogPath(id)+".1".
func (p *Provider) LogPath(id string) string { return filepath.Join(p.logDir, id+".log") }

func (p *Provider) instanceRoot(id string) string { return filepath.Join(p.instancesDir, id) }
func (p *Provider) instanceTmp(id string) string  { return filepath.Join(p.tmpDir, id) }
func (p *Provider) metaPath(id string) string     { return filepath.Join(p.metaDir, id+".json") }

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
