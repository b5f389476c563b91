package sim

import (
	"bytes"
	"errors"
	"strconv"

	"golang.org/x/sys/unix"
)

// The data plane of a host: every instance's listener and every accepted
// connection are non-blocking sockets in one epoll set, served by one
// goroutine. An idle instance costs a socket and a small struct: no
// goroutine, no timer, no buffer.

// fdEntry is what the epoll set knows of one descriptor.
type fdEntry struct {
	inst     *simInst
	listener bool
	// buf holds a connection's unanswered bytes (nil when none).
	buf []byte
	// last is the host's coarse clock when the connection last spoke.
	last int64
}

// maxRequestBytes bounds what one request (head and body) may hold
// before it is answered; a connection sending more is closed.
const maxRequestBytes = 16 << 10

var (
	respOK      = []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n")
	respFailing = []byte("HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\nfailing\n")
	headOK      = []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\n")
	headFailing = []byte("HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\n")
	respBad     = []byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
)

// openListener binds a non-blocking listening socket on addr:port and
// adds it to the epoll set. h.mu is held.
func (h *host) openListener(inst *simInst, port int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	// A port left in TIME_WAIT by a terminated instance is bound again.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port, Addr: h.ip.As4()}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := unix.Listen(fd, 128); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := unix.EpollCtl(h.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	h.fds[fd] = &fdEntry{inst: inst, listener: true}
	return fd, nil
}

// closeFD removes fd from the epoll set and closes it. h.mu is held.
func (h *host) closeFD(fd int) {
	e := h.fds[fd]
	if e == nil {
		return
	}
	delete(h.fds, fd)
	_ = unix.EpollCtl(h.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	_ = unix.Close(fd)
	if !e.listener {
		h.nconns--
		delete(e.inst.conns, fd)
	}
}

// closeSockets closes an instance's listener and connections. h.mu is held.
func (h *host) closeSockets(inst *simInst) {
	if inst.lfd >= 0 {
		h.closeFD(inst.lfd)
		inst.lfd = -1
	}
	for fd := range inst.conns {
		h.closeFD(fd)
	}
}

// serve runs the epoll loop for the host's life. Events of a batch are
// handled under h.mu; a descriptor closed (and its number reused) after
// the wait returned gets a spurious event at worst, which a non-blocking
// accept or read shrugs off.
func (h *host) serve() error {
	events := make([]unix.EpollEvent, 256)
	var rbuf [4096]byte
	for {
		n, err := unix.EpollWait(h.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return err
		}
		h.mu.Lock()
		for _, ev := range events[:n] {
			fd := int(ev.Fd)
			e := h.fds[fd]
			if e == nil {
				continue
			}
			if e.listener {
				h.accept(fd, e.inst)
			} else {
				h.read(fd, e, rbuf[:])
			}
		}
		h.mu.Unlock()
	}
}

// accept takes the listener's pending connections. A host at its
// connection bound closes new ones at once, so it never runs out of
// descriptors. h.mu is held.
func (h *host) accept(lfd int, inst *simInst) {
	for range 64 {
		cfd, _, err := unix.Accept4(lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			return // EAGAIN, or the listener is gone
		}
		if h.nconns >= h.maxConns || inst.lfd != lfd {
			unix.Close(cfd)
			h.refused++
			continue
		}
		if err := unix.EpollCtl(h.epfd, unix.EPOLL_CTL_ADD, cfd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(cfd)}); err != nil {
			unix.Close(cfd)
			continue
		}
		h.fds[cfd] = &fdEntry{inst: inst, last: h.clock}
		if inst.conns == nil {
			inst.conns = map[int]struct{}{}
		}
		inst.conns[cfd] = struct{}{}
		h.nconns++
	}
}

// read answers what a connection sent: every complete request gets 200
// "ok" (500 "failing" while the instance's health is flipped), whatever
// its method and path. h.mu is held.
func (h *host) read(fd int, e *fdEntry, rbuf []byte) {
	n, err := unix.Read(fd, rbuf)
	if err != nil {
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			return
		}
		h.closeFD(fd)
		return
	}
	if n == 0 {
		h.closeFD(fd)
		return
	}
	e.last = h.clock
	if len(e.buf)+n > maxRequestBytes {
		h.closeFD(fd)
		return
	}
	e.buf = append(e.buf, rbuf[:n]...)
	for {
		end := bytes.Index(e.buf, []byte("\r\n\r\n"))
		if end < 0 {
			break
		}
		head := e.buf[:end]
		body, ok := contentLength(head)
		if !ok {
			_, _ = unix.Write(fd, respBad)
			h.closeFD(fd)
			return
		}
		total := end + 4 + body
		if total > maxRequestBytes {
			h.closeFD(fd)
			return
		}
		if len(e.buf) < total {
			break
		}
		resp := respOK
		isHead := bytes.HasPrefix(head, []byte("HEAD "))
		if e.inst.failing {
			resp = respFailing
			if isHead {
				resp = headFailing
			}
		} else if isHead {
			resp = headOK
		}
		if w, err := unix.Write(fd, resp); err != nil || w != len(resp) {
			// The response is far below a socket buffer; a peer that
			// does not read is dropped.
			h.closeFD(fd)
			return
		}
		closeAfter := closeRequested(head)
		e.buf = e.buf[total:]
		if closeAfter {
			h.closeFD(fd)
			return
		}
	}
	if len(e.buf) == 0 {
		e.buf = nil
	}
}

// contentLength returns the request body's length from its head (0 when
// there is none); ok is false for a body the host will not take
// (chunked, or a bad length).
func contentLength(head []byte) (int, bool) {
	n := 0
	for line := range bytes.SplitSeq(head, []byte("\r\n")) {
		k, v, found := bytes.Cut(line, []byte(":"))
		if !found {
			continue
		}
		k = bytes.TrimSpace(k)
		switch {
		case bytes.EqualFold(k, []byte("Content-Length")):
			l, err := strconv.Atoi(string(bytes.TrimSpace(v)))
			if err != nil || l < 0 || l > maxRequestBytes {
				return 0, false
			}
			n = l
		case bytes.EqualFold(k, []byte("Transfer-Encoding")):
			return 0, false
		}
	}
	return n, true
}

// closeRequested says whether the connection ends after this request:
// HTTP/1.0, or Connection: close.
func closeRequested(head []byte) bool {
	first, rest, _ := bytes.Cut(head, []byte("\r\n"))
	if bytes.HasSuffix(first, []byte("HTTP/1.0")) {
		return true
	}
	for line := range bytes.SplitSeq(rest, []byte("\r\n")) {
		k, v, found := bytes.Cut(line, []byte(":"))
		if found && bytes.EqualFold(bytes.TrimSpace(k), []byte("Connection")) && bytes.EqualFold(bytes.TrimSpace(v), []byte("close")) {
			return true
		}
	}
	return false
}
