package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"
)

// qmpTimeout bounds one QMP conversation when the caller's context has no
// earlier deadline.
const qmpTimeout = 5 * time.Second

// qmpMaxLine bounds one message QEMU sends.
const qmpMaxLine = 1 << 20

// qmp is one conversation with a VM's QEMU Machine Protocol socket.
type qmp struct {
	conn net.Conn
	r    *bufio.Reader
}

// dialQMP connects to the QMP socket in an instance directory. Unix
// socket paths are limited to 107 bytes and instance directories can be
// longer, so it dials through /proc/self/fd of the opened directory.
func dialQMP(ctx context.Context, dir string) (*qmp, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	path := fmt.Sprintf("/proc/self/fd/%d/%s", d.Fd(), qmpSocket)
	var dl net.Dialer
	conn, err := dl.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", filepath.Join(dir, qmpSocket), err)
	}
	deadline := time.Now().Add(qmpTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetDeadline(deadline)
	q := &qmp{conn: conn, r: bufio.NewReaderSize(conn, 64<<10)}
	var greeting struct {
		QMP json.RawMessage `json:"QMP"`
	}
	if err := q.read(&greeting); err != nil || greeting.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: no greeting: %v", err)
	}
	if _, err := q.execute("qmp_capabilities", nil); err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

func (q *qmp) Close() error { return q.conn.Close() }

func (q *qmp) read(v any) error {
	var line []byte
	for {
		part, isPrefix, err := q.r.ReadLine()
		if err != nil {
			return err
		}
		line = append(line, part...)
		if len(line) > qmpMaxLine {
			return errors.New("qmp: message too long")
		}
		if !isPrefix {
			break
		}
	}
	return json.Unmarshal(line, v)
}

// execute runs one command and returns its "return" value; events that
// arrive meanwhile are skipped.
func (q *qmp) execute(cmd string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	for {
		var resp struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
			Event string `json:"event"`
		}
		if err := q.read(&resp); err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		switch {
		case resp.Event != "":
			continue
		case resp.Error != nil:
			return nil, fmt.Errorf("qmp %s: %s: %s", cmd, resp.Error.Class, resp.Error.Desc)
		default:
			return resp.Return, nil
		}
	}
}

// qmpCommand runs one command on the VM in dir in a conversation of its own.
func qmpCommand(ctx context.Context, dir, cmd string, args any) (json.RawMessage, error) {
	q, err := dialQMP(ctx, dir)
	if err != nil {
		return nil, err
	}
	defer q.Close()
	return q.execute(cmd, args)
}

// blockStats are the write counters of one drive (query-blockstats).
type blockStats struct {
	Device string `json:"device"`
	Stats  struct {
		WrBytes      int64 `json:"wr_bytes"`
		WrOperations int64 `json:"wr_operations"`
		WrHighest    int64 `json:"wr_highest_offset"`
		UnmapBytes   int64 `json:"unmap_bytes"`
	} `json:"stats"`
}

func queryBlockStats(ctx context.Context, dir string) ([]blockStats, error) {
	raw, err := qmpCommand(ctx, dir, "query-blockstats", nil)
	if err != nil {
		return nil, err
	}
	var out []blockStats
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("qmp query-blockstats: %w", err)
	}
	return out, nil
}
