package local

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Entry types. Special files (fifos, sockets, devices) are never part of
// an image; they show up only when an instance root is inspected.
const (
	typeDir     = "dir"
	typeFile    = "file"
	typeSymlink = "symlink"
	typeFIFO    = "fifo"
	typeSocket  = "socket"
	typeDevice  = "device"
	typeOther   = "other"
)

// digestPrefix starts every image digest.
const digestPrefix = "sha256:"

// treeFormat versions the digest encoding below; changing the encoding
// must change this line so old and new digests never collide.
const treeFormat = "immutd-tree-v1\n"

// maxSymlinkHops bounds symlink resolution inside a tree, as the kernel's
// limit of 40 does.
const maxSymlinkHops = 40

// entry is one path of a tree (the root itself is not an entry).
type entry struct {
	// Path is slash-separated and relative to the tree root.
	Path string `json:"path"`
	Type string `json:"type"`
	// Mode holds the permission bits plus setuid, setgid and sticky, as
	// chmod takes them. It is 0 for symlinks, whose mode means nothing on Linux.
	Mode uint32 `json:"mode"`
	Size int64  `json:"size,omitempty"`
	// SHA256 is the hex content hash of a file ("unreadable" when an
	// inspection could not read it).
	SHA256 string `json:"sha256,omitempty"`
	// Target is a symlink's target, as stored in the link.
	Target string `json:"target,omitempty"`
}

// unreadable marks a file whose content could not be read during an
// inspection; it never equals a real hash, so it shows as modified.
const unreadable = "unreadable"

// treeDigest is the digest of a tree: sha256 over one canonical line per
// entry in path order (type, mode, quoted path, and the content hash of a
// file or the quoted target of a symlink).
func treeDigest(entries []entry) string {
	sorted := entries
	if !sort.SliceIsSorted(entries, func(i, j int) bool { return entries[i].Path < entries[j].Path }) {
		sorted = append([]entry(nil), entries...)
		sortEntries(sorted)
	}
	h := sha256.New()
	io.WriteString(h, treeFormat)
	for _, e := range sorted {
		fmt.Fprintf(h, "%s %04o %s", e.Type, e.Mode, strconv.Quote(e.Path))
		switch e.Type {
		case typeFile:
			fmt.Fprintf(h, " %s", e.SHA256)
		case typeSymlink:
			fmt.Fprintf(h, " %s", strconv.Quote(e.Target))
		}
		io.WriteString(h, "\n")
	}
	return digestPrefix + hex.EncodeToString(h.Sum(nil))
}

func sortEntries(es []entry) {
	sort.Slice(es, func(i, j int) bool { return es[i].Path < es[j].Path })
}

// statType classifies the st_mode of a stat(2) result.
func statType(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return typeDir
	case unix.S_IFREG:
		return typeFile
	case unix.S_IFLNK:
		return typeSymlink
	case unix.S_IFIFO:
		return typeFIFO
	case unix.S_IFSOCK:
		return typeSocket
	case unix.S_IFBLK, unix.S_IFCHR:
		return typeDevice
	default:
		return typeOther
	}
}

// statModeBits returns the chmod-style bits (permissions, setuid, setgid,
// sticky) of an st_mode.
func statModeBits(mode uint32) uint32 { return mode & 0o7777 }

// walkOptions tunes walkTree and copyTree.
type walkOptions struct {
	// strict fails on special files and on any read error; otherwise
	// (inspection) special files are recorded, vanished paths are skipped
	// and unreadable files are marked.
	strict bool
	// skip, when set, leaves a path (and everything below it) out.
	skip func(rel string) bool
	// fsync syncs every copied file and directory (copyTree only).
	fsync bool
	// inspect, set by Inspect (walkTree only), hashes only the files the
	// image has and goes through the drift cache (driftcache.go).
	inspect *inspectState
}

// notDirError says that the root given to walkTree or copyTree is not a
// directory; a symlink root is reported, not followed.
type notDirError struct {
	Path string
	Type string // of the root: typeSymlink, typeFile, ...
}

func (e *notDirError) Error() string {
	return fmt.Sprintf("%s is a %s, not a directory", e.Path, e.Type)
}

// walkTree lists the entries below root, hashing file contents. It never
// follows a symlink, the root included: every directory is opened with
// O_NOFOLLOW relative to its parent's descriptor, so one swapped for a
// symlink during the walk is not followed either. A root that is not a
// directory is a *notDirError. Without opts.strict, a missing or
// unreadable root gives no entries. The result is sorted by path.
func walkTree(ctx context.Context, root string, opts walkOptions) ([]entry, error) {
	d, err := openRoot(root)
	if err != nil {
		var nd *notDirError
		if !opts.strict && !errors.As(err, &nd) {
			return nil, nil
		}
		return nil, err
	}
	defer d.Close()
	w := &walker{ctx: ctx, opts: opts, h: sha256.New()}
	if err := w.dir(d, "", ""); err != nil {
		return nil, err
	}
	sortEntries(w.out)
	return w.out, nil
}

// openRoot opens the directory root without following a symlink there.
func openRoot(root string) (*os.File, error) {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		var st unix.Stat_t
		if lerr := unix.Lstat(root, &st); lerr == nil && statType(st.Mode) != typeDir {
			return nil, &notDirError{Path: root, Type: statType(st.Mode)}
		}
	}
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: root, Err: err}
	}
	return os.NewFile(uintptr(fd), root), nil
}

// copyTree copies the tree at src to dst (which must not exist yet),
// preserving types and mode bits, and returns the entries of what it
// wrote: file hashes are computed from the bytes copied, so the result
// describes the copy even if src changes meanwhile. Like walkTree it
// follows no symlink in src. Special files are always refused. The root
// of dst gets mode 0755.
func copyTree(ctx context.Context, src, dst string, opts walkOptions) ([]entry, error) {
	opts.strict = true
	d, err := openRoot(src)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	if err := os.Mkdir(dst, 0o700); err != nil {
		return nil, err
	}
	w := &walker{ctx: ctx, opts: opts, h: sha256.New()}
	if err := w.dir(d, dst, ""); err != nil {
		return nil, err
	}
	if err := os.Chmod(dst, 0o755); err != nil {
		return nil, err
	}
	if opts.fsync {
		if err := syncDir(dst); err != nil {
			return nil, err
		}
	}
	sortEntries(w.out)
	return w.out, nil
}

type walker struct {
	ctx  context.Context
	opts walkOptions
	h    hash.Hash
	buf  []byte // made when the first file is read (an inspection may read none)
	out  []entry
}

func (w *walker) buffer() []byte {
	if w.buf == nil {
		w.buf = make([]byte, 64<<10)
	}
	return w.buf
}

// dir walks the open directory src (relative path rel; its name is the
// path errors show). When dstDir is not empty, it copies each entry into
// dstDir as well. Entries are looked at relative to src's descriptor.
func (w *walker) dir(src *os.File, dstDir, rel string) error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	des, err := src.ReadDir(-1)
	if err != nil {
		if !w.opts.strict {
			return nil
		}
		return err
	}
	dirfd := int(src.Fd())
	for _, de := range des {
		name := de.Name()
		childRel := name
		if rel != "" {
			childRel = rel + "/" + name
		}
		if w.opts.skip != nil && w.opts.skip(childRel) {
			continue
		}
		dst := ""
		if dstDir != "" {
			dst = filepath.Join(dstDir, name)
		}
		if err := w.entry(dirfd, name, filepath.Join(src.Name(), name), dst, childRel); err != nil {
			return err
		}
	}
	return nil
}

// entry looks at the entry name of dirfd (srcPath is for errors only),
// records it as rel, and copies it to dst when dst is set. Outside strict
// mode, an entry that vanished meanwhile is left out and a file that
// cannot be read is recorded as unreadable.
func (w *walker) entry(dirfd int, name, srcPath, dst, rel string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if !w.opts.strict && errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return &fs.PathError{Op: "lstat", Path: srcPath, Err: err}
	}
	e := entry{Path: rel, Type: statType(st.Mode)}
	if e.Type != typeSymlink {
		e.Mode = statModeBits(st.Mode)
	}
	switch e.Type {
	case typeDir:
		return w.dirEntry(dirfd, name, srcPath, dst, e)
	case typeFile:
		var sum string
		var size int64
		var err error
		if w.opts.inspect != nil && dst == "" {
			sum, size, err = w.inspectFile(dirfd, name, srcPath, rel, &st)
		} else {
			sum, size, err = w.file(dirfd, name, srcPath, dst, e.Mode)
		}
		switch {
		case err == nil:
		case w.opts.strict:
			return err
		case errors.Is(err, fs.ErrNotExist):
			return nil
		default:
			sum = unreadable
		}
		e.SHA256, e.Size = sum, size
	case typeSymlink:
		target, err := readlinkAt(dirfd, name)
		if err != nil {
			if !w.opts.strict && errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return &fs.PathError{Op: "readlink", Path: srcPath, Err: err}
		}
		e.Target = target
		if dst != "" {
			if err := os.Symlink(target, dst); err != nil {
				return err
			}
		}
	default:
		if w.opts.strict {
			return fmt.Errorf("%s: %s files are not allowed", rel, e.Type)
		}
	}
	w.out = append(w.out, e)
	return nil
}

// dirEntry records the directory e, walks it, and, when dst is set,
// makes the copy with e's mode once its content is in.
func (w *walker) dirEntry(dirfd int, name, srcPath, dst string, e entry) error {
	if dst != "" {
		if err := os.Mkdir(dst, 0o700); err != nil {
			return err
		}
	}
	w.out = append(w.out, e)
	if err := w.subdir(dirfd, name, srcPath, dst, e.Path); err != nil {
		return err
	}
	if dst == "" {
		return nil
	}
	if w.opts.fsync {
		if err := syncDir(dst); err != nil {
			return err
		}
	}
	if err := unix.Chmod(dst, e.Mode); err != nil {
		return fmt.Errorf("chmod %s: %w", dst, err)
	}
	return nil
}

// subdir opens the directory name in dirfd without following a symlink
// (it may have been swapped for one since it was looked at) and walks it.
func (w *walker) subdir(dirfd int, name, srcPath, dst, rel string) error {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if !w.opts.strict {
			return nil // listed as a directory, its content unknown
		}
		return &fs.PathError{Op: "open", Path: srcPath, Err: err}
	}
	d := os.NewFile(uintptr(fd), srcPath)
	defer d.Close()
	return w.dir(d, dst, rel)
}

// file hashes the file name in dirfd and, when dst is set, copies it
// there with mode.
func (w *walker) file(dirfd int, name, srcPath, dst string, mode uint32) (string, int64, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", 0, &fs.PathError{Op: "open", Path: srcPath, Err: err}
	}
	in := os.NewFile(uintptr(fd), srcPath)
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return "", 0, err
	}
	if !fi.Mode().IsRegular() {
		return "", 0, fmt.Errorf("%s: changed type while being read", srcPath)
	}
	w.h.Reset()
	var sink io.Writer = w.h
	var out *os.File
	if dst != "" {
		out, err = os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return "", 0, err
		}
		defer out.Close()
		sink = io.MultiWriter(w.h, out)
	}
	n, err := io.CopyBuffer(sink, in, w.buffer())
	if err != nil {
		return "", 0, err
	}
	if out != nil {
		if err := unix.Fchmod(int(out.Fd()), mode); err != nil {
			return "", 0, fmt.Errorf("chmod %s: %w", dst, err)
		}
		if w.opts.fsync {
			if err := out.Sync(); err != nil {
				return "", 0, err
			}
		}
		if err := out.Close(); err != nil {
			return "", 0, err
		}
	}
	return hex.EncodeToString(w.h.Sum(nil)), n, nil
}

// readlinkAt returns the target of the symlink name in dirfd.
func readlinkAt(dirfd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

// syncDir fsyncs a directory so renames and creations in it are durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// errEscape is returned for a symlink that points outside its tree.
var errEscape = errors.New("points outside the bundle")

// checkSymlinks rejects symlinks that, followed through the tree, would
// leave it: absolute targets, too many "..", or chains of links that
// climb out. Dangling links inside the tree are allowed.
func checkSymlinks(entries []entry) error {
	idx := indexEntries(entries)
	for _, e := range entries {
		if e.Type != typeSymlink {
			continue
		}
		hops := 0
		if _, err := resolveInTree(idx, parentSegs(e.Path), e.Target, &hops); err != nil {
			return fmt.Errorf("symlink %s -> %s: %w", e.Path, e.Target, err)
		}
	}
	return nil
}

func indexEntries(entries []entry) map[string]entry {
	idx := make(map[string]entry, len(entries))
	for _, e := range entries {
		idx[e.Path] = e
	}
	return idx
}

func parentSegs(p string) []string {
	segs := strings.Split(p, "/")
	return segs[:len(segs)-1]
}

// resolveInTree resolves rel against the directory base (path segments
// from the root), following the tree's own symlinks, and returns the
// resulting path segments. It fails if the walk leaves the root.
func resolveInTree(idx map[string]entry, base []string, rel string, hops *int) ([]string, error) {
	if strings.HasPrefix(rel, "/") {
		return nil, errEscape
	}
	cur := append([]string(nil), base...)
	for _, c := range strings.Split(rel, "/") {
		switch c {
		case "", ".":
			continue
		case "..":
			if len(cur) == 0 {
				return nil, errEscape
			}
			cur = cur[:len(cur)-1]
			continue
		}
		cur = append(cur, c)
		e, ok := idx[strings.Join(cur, "/")]
		if !ok || e.Type != typeSymlink {
			continue
		}
		*hops++
		if *hops > maxSymlinkHops {
			return nil, errors.New("too many levels of symbolic links")
		}
		next, err := resolveInTree(idx, cur[:len(cur)-1], e.Target, hops)
		if err != nil {
			return nil, err
		}
		cur = next
	}
	return cur, nil
}
