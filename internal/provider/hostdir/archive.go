package hostdir

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/immutd/immutd/internal/instance"
)

// Defaults of an Archive.
const (
	DefaultKeptBytes = 256 << 10
	DefaultKeep      = 500
	DefaultKeptFor   = 7 * 24 * time.Hour
)

// Archive keeps the last part of the output of instances that are gone
// (<dir>/<id>.log), so that a killed instance can still be debugged from
// data kept outside it: at most Bytes of each, for at most For, of at
// most Keep instances, the oldest removed first.
type Archive struct {
	dir   string
	bytes int64
	keep  int
	age   time.Duration
	now   func() time.Time
}

// NewArchive opens (making it) the archive directory dir; zero bounds
// are the defaults.
func NewArchive(dir string, bytes int64, keep int, age time.Duration) (*Archive, error) {
	if bytes == 0 {
		bytes = DefaultKeptBytes
	}
	if keep == 0 {
		keep = DefaultKeep
	}
	if age == 0 {
		age = DefaultKeptFor
	}
	if bytes < 1 || keep < 1 || age < 0 {
		return nil, fmt.Errorf("log archive %s: bounds must be positive", dir)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("log archive: %w", err)
	}
	return &Archive{dir: dir, bytes: bytes, keep: keep, age: age, now: time.Now}, nil
}

// Dir is the archive's directory.
func (a *Archive) Dir() string { return a.dir }

// Path is where the kept output of instance id is.
func (a *Archive) Path(id string) string { return filepath.Join(a.dir, id+".log") }

// Keep stores the last Bytes of the concatenation of parts (oldest
// first) as the kept output of id, replacing what was kept of it, and
// prunes the archive.
func (a *Archive) Keep(id string, parts ...io.Reader) error {
	if err := instance.CheckID(id); err != nil {
		return err
	}
	tail := newTail(a.bytes)
	for _, r := range parts {
		if r == nil {
			continue
		}
		if _, err := io.Copy(tail, r); err != nil {
			return fmt.Errorf("keep the output of %s: %w", id, err)
		}
	}
	tmp := a.Path(id) + ".tmp"
	if err := os.WriteFile(tmp, tail.bytes(), 0o640); err != nil {
		return fmt.Errorf("keep the output of %s: %w", id, err)
	}
	if err := os.Rename(tmp, a.Path(id)); err != nil {
		return fmt.Errorf("keep the output of %s: %w", id, err)
	}
	a.Prune()
	return nil
}

// Read returns the last max bytes kept of id; an error wrapping
// fs.ErrNotExist when nothing is.
func (a *Archive) Read(id string, max int64) ([]byte, error) {
	if err := instance.CheckID(id); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(a.Path(id))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		b = b[int64(len(b))-max:]
	}
	return b, nil
}

// Prune removes kept output older than For, and the oldest beyond Keep.
func (a *Archive) Prune() {
	des, err := os.ReadDir(a.dir)
	if err != nil {
		return
	}
	type kept struct {
		path string
		mod  time.Time
	}
	var all []kept
	for _, de := range des {
		if !strings.HasSuffix(de.Name(), ".log") {
			continue
		}
		if fi, err := de.Info(); err == nil {
			all = append(all, kept{filepath.Join(a.dir, de.Name()), fi.ModTime()})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].mod.After(all[j].mod) })
	for i, k := range all {
		if i >= a.keep || a.now().Sub(k.mod) > a.age {
			if err := os.Remove(k.path); err != nil && !errors.Is(err, os.ErrNotExist) {
				continue
			}
		}
	}
}

// tail is a writer that keeps the last n bytes written to it.
type tail struct {
	n   int64
	buf []byte
}

func newTail(n int64) *tail { return &tail{n: n} }

func (t *tail) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if over := int64(len(t.buf)) - t.n; over > 0 {
		// Keep the last n bytes; compact now and then, not on every write.
		if over > t.n {
			t.buf = append(t.buf[:0], t.buf[over:]...)
		}
	}
	return len(p), nil
}

func (t *tail) bytes() []byte {
	if int64(len(t.buf)) > t.n {
		return t.buf[int64(len(t.buf))-t.n:]
	}
	return t.buf
}
