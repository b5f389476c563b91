package local

import (
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"sort"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The drift cache lets Inspect skip re-hashing files that have not
// changed since it last hashed them, so the steady cost of drift checks
// follows what changed, not the size of the image.
//
// For each instance and each file of its image it remembers the stat of
// the file when it was hashed (device, inode, size, mtime, ctime, mode)
// and the digest. A file whose lstat still shows the same six values is
// taken to have the same content. The value that makes this safe is the
// ctime (st_ctime, the inode change time): the kernel sets it to the
// current time on every write, truncate, chmod, chown, link count change
// and rename of the file, and no system call lets user space set it
// (utimensat sets only atime and mtime, and itself updates the ctime). So
// a writer that keeps the size and puts the mtime back with touch -d or
// os.Chtimes still changes the ctime; one that replaces the file with a
// rename changes the inode; only a change of the system clock (root)
// could bring an old ctime back.
//
// Two gaps remain, and both are closed here:
//
//   - Timestamps are coarse (the kernel's clock tick, a few ms; whole
//     seconds or worse on some filesystems). A write in the same tick as
//     the hash leaves the ctime as the hash saw it. So a file is cached
//     only when its ctime and mtime are older than racyWindow before its
//     read started; a younger one is hashed again at the next inspection.
//   - Filesystems with broken timestamps, clock steps and bugs: a slow
//     backstop re-hashes every cached file at least every
//     Options.DriftRehashInterval (default DefaultDriftRehashInterval). Each
//     file gets a period between half of it and all of it, fixed by a hash
//     of its instance and path, so the re-hashes of one instance's files,
//     all cached at about the same time after its launch, spread out
//     rather than all falling in one inspection.
//
// Only files the image has as files are hashed at all: for a path the
// image lacks ("added ...") or has with another type ("type ..."), the
// content is not part of the finding. So the cache holds at most one
// entry per file of the image (the sample app: 3, about 250 bytes each),
// whatever an instance adds to its root. Terminate drops an instance's
// entries, and so do List (for instances it no longer lists) and an
// Inspect that finds the instance gone.

// DefaultDriftRehashInterval is the default of Options.DriftRehashInterval.
const DefaultDriftRehashInterval = 5 * time.Minute

// racyWindow is how old a file's ctime and mtime must be, when its read
// starts, for its hash to be cached (see above). Two seconds covers the
// clock tick of Linux filesystems and the 1-2 s timestamps of old ones.
const racyWindow = 2 * time.Second

// fileStamp is what the drift cache keeps about one file of an instance.
type fileStamp struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64 // ns since the epoch
	mode         uint32
	sum          string // hex sha256 of the content
	hashedAt     int64  // Provider.now, ns since the epoch, of the last hash
	gen          uint64 // inspection that last saw the file
}

func stampOf(st *unix.Stat_t) fileStamp {
	return fileStamp{
		dev:   uint64(st.Dev),
		ino:   uint64(st.Ino),
		size:  st.Size,
		mtime: st.Mtim.Nano(),
		ctime: st.Ctim.Nano(),
		mode:  uint32(st.Mode),
	}
}

// sameStat says whether a and b show the same file in the same state.
func (a *fileStamp) sameStat(b *fileStamp) bool {
	return a.dev == b.dev && a.ino == b.ino && a.size == b.size &&
		a.mtime == b.mtime && a.ctime == b.ctime && a.mode == b.mode
}

// instanceCache is the drift cache of one instance. Its mutex is held for
// a whole inspection, so inspections of one instance take turns while
// those of different instances run in parallel.
type instanceCache struct {
	mu     sync.Mutex
	digest string // image the entries were made for
	gen    uint64 // inspections so far
	files  map[string]*fileStamp
}

// driftCache holds the instance caches by instance id.
type driftCache struct {
	mu   sync.Mutex
	byID map[string]*instanceCache
}

// get returns the cache of instance id, making it if needed.
func (c *driftCache) get(id string) *instanceCache {
	c.mu.Lock()
	defer c.mu.Unlock()
	ic := c.byID[id]
	if ic == nil {
		if c.byID == nil {
			c.byID = map[string]*instanceCache{}
		}
		ic = &instanceCache{}
		c.byID[id] = ic
	}
	return ic
}

// drop forgets instance id.
func (c *driftCache) drop(id string) {
	c.mu.Lock()
	delete(c.byID, id)
	c.mu.Unlock()
}

// dropIf forgets instance id if ic is still its cache.
func (c *driftCache) dropIf(id string, ic *instanceCache) {
	c.mu.Lock()
	if c.byID[id] == ic {
		delete(c.byID, id)
	}
	c.mu.Unlock()
}

// retain forgets every instance not in keep.
func (c *driftCache) retain(keep map[string]bool) {
	c.mu.Lock()
	for id := range c.byID {
		if !keep[id] {
			delete(c.byID, id)
		}
	}
	c.mu.Unlock()
}

// len returns the number of instances cached, and of files over all of them.
func (c *driftCache) len() (instances, files int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ic := range c.byID {
		ic.mu.Lock()
		files += len(ic.files)
		ic.mu.Unlock()
	}
	return len(c.byID), files
}

// inspectState is what one inspection's walk needs for hashing: the
// image's entries (to know which paths need a content hash) and, unless
// the cache is off, the instance's cache, locked by the caller.
type inspectState struct {
	want        []entry // path-sorted
	cache       *instanceCache
	id          string
	now         int64 // Provider.now, ns
	rehashAfter time.Duration
	racyWindow  time.Duration
	hashed      int64 // bytes hashed by this inspection
}

// imageFile says whether the image has a regular file at rel.
func (s *inspectState) imageFile(rel string) bool {
	i := sort.Search(len(s.want), func(i int) bool { return s.want[i].Path >= rel })
	return i < len(s.want) && s.want[i].Path == rel && s.want[i].Type == typeFile
}

// due says whether the cached file rel must be re-hashed by the backstop.
func (s *inspectState) due(rel string, c *fileStamp) bool {
	if s.rehashAfter <= 0 {
		return false
	}
	h := fnv.New32a()
	io.WriteString(h, s.id)
	io.WriteString(h, "\x00")
	io.WriteString(h, rel)
	// A period in (rehashAfter/2, rehashAfter], fixed per file.
	period := s.rehashAfter - time.Duration(float64(s.rehashAfter/2)*float64(h.Sum32())/(1<<32))
	return s.now-c.hashedAt >= int64(period)
}

// prune drops the entries of files the last walk did not see.
func (s *inspectState) prune() {
	for rel, c := range s.cache.files {
		if c.gen != s.cache.gen {
			delete(s.cache.files, rel)
		}
	}
}

// inspectFile returns the content hash and size of the file name in
// dirfd (lstat st, path rel) for an inspection: "" for a path whose
// content does not count, the cached hash when the cache holds one for
// this very stat, else a fresh hash, cached when the file held still.
func (w *walker) inspectFile(dirfd int, name, srcPath, rel string, st *unix.Stat_t) (string, int64, error) {
	s := w.opts.inspect
	if !s.imageFile(rel) {
		return "", st.Size, nil
	}
	now := stampOf(st)
	var c *fileStamp
	if s.cache != nil {
		c = s.cache.files[rel]
		if c != nil && c.sameStat(&now) && !s.due(rel, c) {
			c.gen = s.cache.gen
			return c.sum, c.size, nil
		}
		delete(s.cache.files, rel)
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", 0, &fs.PathError{Op: "open", Path: srcPath, Err: err}
	}
	in := os.NewFile(uintptr(fd), srcPath)
	defer in.Close()
	var before, after unix.Stat_t
	if err := unix.Fstat(fd, &before); err != nil {
		return "", 0, &fs.PathError{Op: "fstat", Path: srcPath, Err: err}
	}
	if statType(before.Mode) != typeFile {
		return "", 0, fmt.Errorf("%s: changed type while being read", srcPath)
	}
	readStart := time.Now().UnixNano()
	w.h.Reset()
	n, err := io.CopyBuffer(w.h, in, w.buffer())
	s.hashed += n
	if err != nil {
		return "", 0, err
	}
	sum := hex.EncodeToString(w.h.Sum(nil))
	if s.cache == nil {
		return sum, n, nil
	}
	if err := unix.Fstat(fd, &after); err != nil {
		return sum, n, nil
	}
	b, a := stampOf(&before), stampOf(&after)
	racy := readStart-b.ctime < int64(s.racyWindow) || readStart-b.mtime < int64(s.racyWindow)
	if a.sameStat(&b) && n == b.size && !racy {
		if c == nil {
			c = &fileStamp{}
		}
		*c = b
		c.sum, c.hashedAt, c.gen = sum, s.now, s.cache.gen
		if s.cache.files == nil {
			s.cache.files = map[string]*fileStamp{}
		}
		s.cache.files[rel] = c
	}
	return sum, n, nil
}
