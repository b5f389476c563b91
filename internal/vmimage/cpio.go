package vmimage

import (
	"bytes"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
)

// cpioFile is one entry of an initramfs: a directory, a regular file or
// a symlink (Data is its target).
type cpioFile struct {
	Mode uint32 // type and permission bits, as in stat(2)
	Data []byte
}

// File types of cpioFile.Mode.
const (
	modeDir     = 0o040000
	modeFile    = 0o100000
	modeSymlink = 0o120000
)

// archive is an initramfs being put together: paths (without a leading
// slash) to entries. Parents are added as directories when it is written.
type archive map[string]cpioFile

func (a archive) dir(p string) { a[p] = cpioFile{Mode: modeDir | 0o755} }
func (a archive) file(p string, perm uint32, data []byte) {
	a[p] = cpioFile{Mode: modeFile | perm, Data: data}
}
func (a archive) symlink(p, target string) {
	a[p] = cpioFile{Mode: modeSymlink | 0o777, Data: []byte(target)}
}

// write writes the archive in the "newc" cpio format the kernel unpacks,
// reproducibly: entries sorted by path (parents first), every time 0,
// every owner root, inode numbers in order.
func (a archive) write(w io.Writer) error {
	all := map[string]cpioFile{}
	for p, f := range a {
		p = strings.Trim(path.Clean(p), "/")
		if p == "" || p == "." || strings.HasPrefix(p, "..") {
			return fmt.Errorf("cpio: bad path %q", p)
		}
		all[p] = f
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if _, ok := all[d]; !ok {
				all[d] = cpioFile{Mode: modeDir | 0o755}
			}
		}
	}
	names := make([]string, 0, len(all))
	for p := range all {
		names = append(names, p)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	ino := 1
	for _, p := range names {
		f := all[p]
		if err := writeEntry(&buf, ino, p, f.Mode, f.Data); err != nil {
			return err
		}
		ino++
	}
	if err := writeEntry(&buf, ino, "TRAILER!!!", 0, nil); err != nil {
		return err
	}
	_, err := w.Write(buf.Bytes())
	return err
}

func writeEntry(buf *bytes.Buffer, ino int, name string, mode uint32, data []byte) error {
	nlink := 1
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	// magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
	// devminor, rdevmajor, rdevminor, namesize, check.
	fmt.Fprintf(buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	buf.WriteString(name)
	buf.WriteByte(0)
	pad(buf)
	buf.Write(data)
	pad(buf)
	return nil
}

// pad aligns the archive to 4 bytes, as newc requires after every name and body.
func pad(buf *bytes.Buffer) {
	for buf.Len()%4 != 0 {
		buf.WriteByte(0)
	}
}
