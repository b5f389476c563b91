// Package secretfile reads files that hold secrets (the API token, TLS
// private keys) the way ssh reads a private key: a file that its group
// or others may read or write is refused, with an error that says how to
// fix it, and so is anything that is not a regular file or is larger than
// the caller expects. A symlink is followed and its target is checked.
// ReadFile reads other files the agent trusts (its configuration, the
// certificates) with the same bounds, without the mode check.
package secretfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
)

// Read returns the content of the secret file at path, at most max bytes.
// what names the file in errors ("api token file").
func Read(what, path string, max int64) ([]byte, error) { return read(what, path, max, true) }

// ReadFile returns the content of the regular file at path, at most max
// bytes, whatever its mode. what names the file in errors.
func ReadFile(what, path string, max int64) ([]byte, error) { return read(what, path, max, false) }

func read(what, path string, max int64, secret bool) ([]byte, error) {
	// O_NONBLOCK: a FIFO put in the file's place must not hang the reader.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	switch {
	case secret:
		if err := Check(what, path, fi); err != nil {
			return nil, err
		}
		if fi.Size() > max {
			return nil, fmt.Errorf("%s %s is %d bytes; a secret file holds at most %d", what, path, fi.Size(), max)
		}
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("%s %s is a %s, not a regular file", what, path, DescribeMode(fi.Mode()))
	case fi.Size() > max:
		return nil, fmt.Errorf("%s %s is %d bytes; it may have at most %d", what, path, fi.Size(), max)
	}
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s %s grew past %d bytes while being read", what, path, max)
	}
	return b, nil
}

// DescribeMode names the type of a file that is not a regular file.
func DescribeMode(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&os.ModeNamedPipe != 0:
		return "named pipe (FIFO)"
	case m&os.ModeSocket != 0:
		return "socket"
	case m&os.ModeDevice != 0, m&os.ModeCharDevice != 0:
		return "device"
	}
	return "special file"
}

// ErrTooOpen is wrapped by the error for a file others may read or write.
var ErrTooOpen = errors.New("permissions are too open")

// Check refuses a secret file that is not a regular file or whose mode
// lets its group or others read or write it.
func Check(what, path string, fi os.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s %s is a %s, not a regular file", what, path, DescribeMode(fi.Mode()))
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s %s: %w: mode %04o lets group or others read or write it; it must be readable by the agent's user only (chmod 600 %s)",
			what, path, ErrTooOpen, perm, path)
	}
	return nil
}

// MaxTokenFile bounds a token file.
const MaxTokenFile = 4 << 10

// ReadToken reads a token file (the API token, the cluster token of the
// insecure mode): a secret file holding, once trimmed, one line of at
// least 16 printable characters without spaces.
func ReadToken(what, path string) (string, error) {
	b, err := Read(what, path, MaxTokenFile)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < 16 {
		return "", fmt.Errorf("%s %s: the token is shorter than 16 characters", what, path)
	}
	if strings.IndexFunc(tok, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
		return "", fmt.Errorf("%s %s: the token must be one line of printable characters without spaces", what, path)
	}
	return tok, nil
}
