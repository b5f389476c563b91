package local

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/immutd/immutd/internal/instance"
	"go.uber.org/zap"
)

// Port reservations. The kernel's "free port" (listen on :0, close) is
// only free at that moment: two launches close together can get the
// same one, and a port stays handed out between the launch and the
// moment the instance listens. So the provider keeps its own record,
// ports/<port>, a file holding the id of the instance the port belongs
// to, shared by every provider over the directory. A launch takes a
// reservation before it writes the instance's metadata and keeps it
// until the instance's files are removed.

// maxPortCandidates bounds the search for an unreserved port.
const maxPortCandidates = 100

func (p *Provider) portPath(port int) string {
	return filepath.Join(p.portsDir, strconv.Itoa(port))
}

// freePort asks the kernel for a TCP port that is free on the bind host now.
func (p *Provider) freePort() (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(p.bindHost, "0"))
	if err != nil {
		return 0, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, err
	}
	return port, nil
}

// reservePort reserves a port for instance id, whose lock the caller
// holds, and returns it.
func (p *Provider) reservePort(id string) (int, error) {
	for range maxPortCandidates {
		port, err := p.candidatePort()
		if err != nil {
			return 0, err
		}
		ok, err := p.claimPort(id, port)
		if err != nil {
			return 0, err
		}
		if ok {
			return port, nil
		}
	}
	return 0, fmt.Errorf("no unreserved port among %d candidates", maxPortCandidates)
}

// claimPort reserves port for id unless another instance holds it.
func (p *Provider) claimPort(id string, port int) (bool, error) {
	path := p.portPath(port)
	err := createExclusive(path, []byte(id+"\n"))
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, fs.ErrExist) {
		return false, err
	}
	owner, err := readPortOwner(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil // released meanwhile; another candidate will do
	case err != nil:
		p.log.Warn("unreadable port reservation", zap.Int("port", port), zapErr(err))
		return false, nil
	case owner == id:
		return true, nil // our own, from an interrupted launch
	}
	return p.takeOverStale(id, port, owner)
}

// takeOverStale gives port to id if its reservation is stale: its owner
// has no metadata any more (it was removed by a terminate that could not
// read it, or its launch crashed before writing it) or records another
// port.
//
// Several providers may find the same stale reservation at once, and a
// reservation is taken before its owner's metadata is written, so
// "no metadata" may also mean "launch in progress". Both are settled by
// the owner's instance lock: the takeover happens only under it, taken
// without waiting. A busy lock means the owner is being launched or
// terminated right now, so the port is left alone; a free lock with no
// metadata (or another port) behind it means nobody can be using the
// reservation, and since every takeover and every release holds that
// same lock, the content is re-read and replaced atomically (rename)
// without anyone else changing it meanwhile. Waiting for the lock
// instead could deadlock: two launches, each holding its own lock, may
// each find a reservation of the other.
func (p *Provider) takeOverStale(id string, port int, owner string) (bool, error) {
	if instance.CheckID(owner) != nil {
		return false, nil // not written by us; leave it
	}
	l, err := p.tryLockInstance(owner)
	if errors.Is(err, errLockBusy) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer l.unlock()
	m, err := p.readMeta(owner)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return false, nil // unreadable metadata: the owner may still use it
	case m.Port == port:
		return false, nil
	}
	if cur, err := readPortOwner(p.portPath(port)); err != nil || cur != owner {
		return false, nil
	}
	if err := writeFileAtomic(p.portPath(port), []byte(id+"\n")); err != nil {
		return false, err
	}
	p.log.Info("stale port reservation taken over", zapID(id), zap.Int("port", port), zap.String("previous_owner", owner))
	return true, nil
}

// releasePort removes the reservation of port if it belongs to id, whose
// lock the caller holds (so no takeover of it can run meanwhile).
func (p *Provider) releasePort(id string, port int) error {
	if port <= 0 {
		return nil
	}
	path := p.portPath(port)
	owner, err := readPortOwner(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if owner != id {
		return nil // given to another instance after a release of ours
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// reserveRecordedPorts creates the reservations of instances recorded
// before reservations existed (or whose reservation was lost in a
// crash: reservations are not fsynced, the metadata is), so their ports
// are never handed out again. It needs no lock: it only creates missing
// files. Should it race with a terminate of the same instance, the
// reservation it leaves is stale and will be taken over.
func (p *Provider) reserveRecordedPorts() {
	des, err := os.ReadDir(p.metaDir)
	if err != nil {
		return
	}
	for _, de := range des {
		id, ok := strings.CutSuffix(de.Name(), ".json")
		if !ok || strings.HasPrefix(id, ".") || instance.CheckID(id) != nil {
			continue
		}
		m, err := p.readMeta(id)
		if err != nil || m.Port <= 0 {
			continue
		}
		err = createExclusive(p.portPath(m.Port), []byte(id+"\n"))
		switch {
		case err == nil:
			p.log.Info("port reservation created for recorded instance", zapID(id), zap.Int("port", m.Port))
		case errors.Is(err, fs.ErrExist):
			if owner, err := readPortOwner(p.portPath(m.Port)); err == nil && owner != id {
				p.log.Warn("recorded port is reserved by another instance", zapID(id), zap.Int("port", m.Port), zap.String("owner", owner))
			}
		default:
			p.log.Warn("create port reservation failed", zapID(id), zap.Int("port", m.Port), zapErr(err))
		}
	}
}

// readPortOwner returns the instance id a reservation names.
func readPortOwner(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 256)) // an id is at most 128 bytes
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// createExclusive creates the file name holding data, and fails with an
// error matching fs.ErrExist if name exists. It writes a temporary file
// and hard-links it to name: link(2) never replaces a file, exactly like
// O_CREAT|O_EXCL, but unlike an O_EXCL create followed by a write, no
// reader ever sees the file empty or half written, and a crash leaves
// at worst a temporary file (removed by New) rather than an empty
// reservation that names nobody.
func createExclusive(name string, data []byte) error {
	dir, base := filepath.Split(name)
	f, err := os.CreateTemp(dir, "."+base+".*"+tmpSuffix)
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Link(tmp, name)
}
