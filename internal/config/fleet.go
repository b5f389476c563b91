package config

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/immutd/immutd/internal/quantity"
	"github.com/immutd/immutd/internal/secretfile"
)

// Bounds on a fleets directory. A file or directory beyond them is an
// error that names it; nothing past a bound is read.
const (
	// MaxFleetFileSize is the size limit of one fleet file.
	MaxFleetFileSize = 1 << 20
	// MaxFleetDirSize is the limit of all fleet files together.
	MaxFleetDirSize = 8 << 20
	// MaxFleetFiles is how many fleet files a directory may hold.
	MaxFleetFiles = 1000
	// MaxFleets is how many fleets all files may define together.
	MaxFleets = 1000
)

// File is one fleet file: its name in the fleets directory and its content.
type File struct {
	Name    string `json:"name"`
	Content []byte `json:"content"`
}

// LoadFleets reads every fleet file of dir: the files directly in it whose
// names end in ".hcl" and do not start with ".". Files are read in name
// order, fleets are returned sorted by name. A directory without fleet
// files is a valid empty set; a missing directory is an error. Invalid
// content anywhere yields Diagnostics for all files together.
func LoadFleets(dir string) (*FleetSet, error) {
	files, err := readFleetDirSettled(dir)
	return parseRead(dir, files, err)
}

// parseRead parses what ReadFleetDir returned: the files it could read,
// and the problems of the entries it could not, reported together.
func parseRead(dir string, files []File, readErr error) (*FleetSet, error) {
	var bad Diagnostics
	if readErr != nil && !errors.As(readErr, &bad) {
		return nil, readErr
	}
	set, err := ParseFleetFiles(dir, files)
	if bad == nil {
		return set, err
	}
	var parsed Diagnostics
	if errors.As(err, &parsed) {
		bad = append(bad, parsed...)
	}
	return nil, bad.sorted()
}

// readFleetDirSettled reads dir, again when a file vanished while it was
// being read (an editor replacing it), a few times.
func readFleetDirSettled(dir string) ([]File, error) {
	var err error
	for try := 0; try < 5; try++ {
		var files []File
		files, err = ReadFleetDir(dir)
		if !errors.Is(err, ErrVanished) {
			return files, err
		}
		time.Sleep(time.Duration(10<<try) * time.Millisecond)
	}
	return nil, err
}

// isFleetFileName says whether a directory entry is a fleet file; editor
// droppings such as ".#web.hcl", "web.hcl~" and ".web.hcl.swp" are not.
func isFleetFileName(name string) bool {
	return strings.HasSuffix(name, ".hcl") && !strings.HasPrefix(name, ".")
}

// ErrVanished is wrapped by ReadFleetDir's error when a fleet file was
// listed but gone a moment later: the directory is changing, read it
// again. It never means the fleet was removed.
var ErrVanished = errors.New("a fleet file vanished while the directory was read")

// ReadFleetDir reads the fleet files of dir in name order. Every entry
// that looks like a fleet file must be one: a directory, a FIFO, a
// socket, a device or a dangling symlink named *.hcl is an error, and so
// is a file that cannot be read or is larger than MaxFleetFileSize, so
// that a broken entry is never taken for a removed fleet. All such
// problems are reported together as Diagnostics naming the file, which
// come with the files that could be read (so that their problems can be
// reported too). A symlink to a regular file is followed.
func ReadFleetDir(dir string) ([]File, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("config: read fleets directory: %w", err)
	}
	var files []File
	var diags Diagnostics
	total := 0
	bad := func(p, format string, args ...any) {
		diags = append(diags, Diagnostic{Pos: Pos{File: p}, Message: fmt.Sprintf(format, args...)})
	}
	n := 0
	for _, e := range entries {
		if !isFleetFileName(e.Name()) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if n++; n > MaxFleetFiles {
			bad(p, "more than %d fleet files in %s; put more fleets in each file", MaxFleetFiles, dir)
			break
		}
		src, msg, err := readFleetFile(p)
		if err != nil {
			return nil, err
		}
		if msg != "" {
			bad(p, "%s", msg)
			continue
		}
		if total += len(src); total > MaxFleetDirSize {
			bad(p, "the fleet files of %s together exceed %d bytes", dir, MaxFleetDirSize)
			break
		}
		files = append(files, File{Name: e.Name(), Content: src})
	}
	if len(diags) > 0 {
		return files, diags.sorted()
	}
	return files, nil
}

// readFleetFile reads one fleet file. A problem with the file itself is
// returned as a message; err is only ErrVanished.
func readFleetFile(p string) (src []byte, msg string, err error) {
	lfi, lerr := os.Lstat(p)
	if errors.Is(lerr, fs.ErrNotExist) {
		return nil, "", fmt.Errorf("config: %s: %w", p, ErrVanished)
	}
	fi, serr := os.Stat(p)
	switch {
	case errors.Is(serr, fs.ErrNotExist) && lerr == nil && lfi.Mode()&fs.ModeSymlink != 0:
		target, _ := os.Readlink(p)
		return nil, fmt.Sprintf("is a symlink to %q, which does not exist: fix or remove the link (a fleet file that cannot be read never counts as a removed fleet)", target), nil
	case errors.Is(serr, fs.ErrNotExist):
		return nil, "", fmt.Errorf("config: %s: %w", p, ErrVanished)
	case serr != nil:
		return nil, "cannot be read: " + unwrapPathErr(serr).Error(), nil
	case !fi.Mode().IsRegular():
		return nil, fmt.Sprintf("is a %s, not a regular file: a fleet file must be a regular file or a symlink to one", secretfile.DescribeMode(fi.Mode())), nil
	case fi.Size() > MaxFleetFileSize:
		return nil, fmt.Sprintf("is %d bytes; a fleet file may have at most %d (1 MiB)", fi.Size(), MaxFleetFileSize), nil
	}
	// O_NONBLOCK: if a FIFO took the file's place since the Stat, opening
	// it must not hang the watcher.
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "", fmt.Errorf("config: %s: %w", p, ErrVanished)
	}
	if err != nil {
		return nil, "cannot be read: " + unwrapPathErr(err).Error(), nil
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, "changed into something other than a regular file while it was read", nil
	}
	src, err = io.ReadAll(io.LimitReader(f, MaxFleetFileSize+1))
	if err != nil {
		return nil, "cannot be read: " + unwrapPathErr(err).Error(), nil
	}
	if len(src) > MaxFleetFileSize {
		return nil, fmt.Sprintf("grew past %d bytes (1 MiB) while it was read; a fleet file may have at most that", MaxFleetFileSize), nil
	}
	return src, "", nil
}

func unwrapPathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// HashFleetFiles is a sha256 over the files' names and contents in name
// order.
func HashFleetFiles(files []File) string {
	sorted := slices.Clone(files)
	slices.SortFunc(sorted, func(a, b File) int { return strings.Compare(a.Name, b.Name) })
	h := sha256.New()
	var n [8]byte
	for _, f := range sorted {
		binary.BigEndian.PutUint64(n[:], uint64(len(f.Name)))
		h.Write(n[:])
		h.Write([]byte(f.Name))
		binary.BigEndian.PutUint64(n[:], uint64(len(f.Content)))
		h.Write(n[:])
		h.Write(f.Content)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// CheckFiles checks that files could have come from ReadFleetDir: plain
// fleet file names, each once, within the size and count bounds. The
// leader runs it on fleet files another agent sent.
func CheckFiles(files []File) error {
	if len(files) > MaxFleetFiles {
		return fmt.Errorf("%d fleet files, more than %d", len(files), MaxFleetFiles)
	}
	seen := map[string]bool{}
	total := 0
	for _, f := range files {
		if !isFleetFileName(f.Name) || f.Name != filepath.Base(f.Name) || strings.ContainsAny(f.Name, "/\\\x00") || len(f.Name) > 255 {
			return fmt.Errorf("%q is not a fleet file name", f.Name)
		}
		if seen[f.Name] {
			return fmt.Errorf("fleet file %q is listed twice", f.Name)
		}
		seen[f.Name] = true
		if len(f.Content) > MaxFleetFileSize {
			return fmt.Errorf("fleet file %q is %d bytes, more than %d", f.Name, len(f.Content), MaxFleetFileSize)
		}
		if total += len(f.Content); total > MaxFleetDirSize {
			return fmt.Errorf("the fleet files exceed %d bytes together", MaxFleetDirSize)
		}
	}
	return nil
}

// ParseFleetFiles decodes and validates the files of dir as one set:
// the same rules whether the files were read here or sent by another
// agent. Relative local image paths are resolved against dir.
func ParseFleetFiles(dir string, files []File) (*FleetSet, error) {
	if err := CheckFiles(files); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("config: fleets directory: %w", err)
	}
	sorted := slices.Clone(files)
	slices.SortFunc(sorted, func(a, b File) int { return strings.Compare(a.Name, b.Name) })

	d := &decoder{}
	set := &FleetSet{Dir: dir, Fleets: []*Fleet{}}
	byName := map[string]*Fleet{}
	for _, f := range sorted {
		for _, fl := range d.fleetFile(f.Content, filepath.Join(dir, f.Name), absDir, dir) {
			if first, dup := byName[fl.Name]; dup {
				d.errorf(posRange(fl.Pos), "fleet "+strconv.Quote(fl.Name), "duplicate fleet name; first defined at %s", first.Pos)
				continue
			}
			if len(set.Fleets) == MaxFleets {
				d.errorf(posRange(fl.Pos), "fleet "+strconv.Quote(fl.Name), "more than %d fleets in the fleet files", MaxFleets)
				continue
			}
			byName[fl.Name] = fl
			set.Fleets = append(set.Fleets, fl)
		}
	}
	d.checkTrafficTargets(set.Fleets)
	if len(d.diags) > 0 {
		return nil, d.diags.sorted()
	}
	slices.SortFunc(set.Fleets, func(a, b *Fleet) int { return strings.Compare(a.Name, b.Name) })
	return set, nil
}

// ValidFleetName says whether name is a valid fleet name.
func ValidFleetName(name string) bool { return fleetNameRE.MatchString(name) }

func posRange(p Pos) hcl.Range {
	at := hcl.Pos{Line: p.Line, Column: p.Column}
	return hcl.Range{Filename: p.File, Start: at, End: at}
}

// fleetFile decodes one fleet file; filename names it in messages. Image
// paths are resolved against absDir and shown relative to displayDir.
// It returns every fleet with a valid name, so that duplicates are found
// even among fleets with other problems.
func (d *decoder) fleetFile(src []byte, filename, absDir, displayDir string) []*Fleet {
	body := d.parse(src, filename)
	if body == nil {
		return nil
	}
	names := make([]string, 0, len(body.Attributes))
	for name := range body.Attributes {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		d.errorf(body.Attributes[name].NameRange, name, "unexpected attribute; a fleet file holds only fleet blocks, as in fleet \"web\" { ... }")
	}
	var out []*Fleet
	for _, b := range body.Blocks {
		if b.Type != "fleet" {
			d.errorf(b.TypeRange, b.Type, "unknown block; a fleet file holds only fleet blocks, as in fleet \"web\" { ... }")
			continue
		}
		if f := d.fleet(b, absDir, displayDir); f != nil {
			out = append(out, f)
		}
	}
	return out
}

// fleet decodes one fleet block. It returns nil when the block has no
// usable name.
func (d *decoder) fleet(b *hclsyntax.Block, absDir, displayDir string) *Fleet {
	f := &Fleet{Pos: rangePos(b.TypeRange)}
	path := "fleet"
	named := false
	switch len(b.Labels) {
	case 0:
		d.errorf(b.TypeRange, path, "missing the fleet name; write fleet \"web\" { ... }")
	case 1:
		f.Name = b.Labels[0]
		path += " " + strconv.Quote(f.Name)
		if fleetNameRE.MatchString(f.Name) {
			named = true
		} else {
			d.errorf(b.LabelRanges[0], path, "invalid fleet name; use 1 to 40 lowercase letters, digits and dashes, starting and ending with a letter or digit")
		}
	default:
		path += " " + strconv.Quote(b.Labels[0])
		d.errorf(b.LabelRanges[1], path, "expected one label, the fleet name, got %d labels", len(b.Labels))
	}
	s := d.section(path, b.TypeRange, b.Body)

	sizeGot := s.integer("size", 0, maxFleetSize, &f.Size)
	if sizeGot == missing {
		s.required("size", fmt.Sprintf("the number of instances, from 0 to %d", maxFleetSize))
	}
	providerGot := s.fleetProvider(&f.Provider)
	if providerGot == missing {
		s.required("provider", orList(providerNames))
	}
	var image string
	switch s.text("image", &image, checkNotEmpty) {
	case missing:
		s.required("image", "the golden image: a bundle directory (local), an image reference (docker) or a VM image directory (qemu)")
	case valid:
		f.Image = image
		if providerGot == valid {
			s.image(f, image, absDir, displayDir)
		}
	}

	f.Launch = s.launch(f.Provider, providerGot == valid)
	f.Health = s.health()
	f.Drift = s.drift()
	f.Remediation = s.remediation()
	var rollout *section
	f.Rollout, rollout = s.rollout()
	f.Traffic = s.traffic(absDir)
	s.done()

	if rollout != nil && f.Rollout.Strategy == StrategyBlueGreen && f.Traffic == nil {
		d.errorf(rollout.exprRange("strategy"), rollout.path+".strategy",
			"strategy = %q switches traffic from the old set to the new one: the fleet needs a traffic { ... } block", StrategyBlueGreen)
	}
	if rollout != nil && sizeGot == valid && f.Size > 0 {
		surge := f.Rollout.MaxSurge.Resolve(f.Size, true)
		unavailable := f.Rollout.MaxUnavailable.Resolve(f.Size, false)
		if surge == 0 && unavailable == 0 {
			d.errorf(rollout.exprRange("max_surge"), rollout.path,
				"max_surge (%s) and max_unavailable (%s) both resolve to 0 for size %d, so a rollout could never replace an instance; allow at least one",
				f.Rollout.MaxSurge, f.Rollout.MaxUnavailable, f.Size)
		}
	}
	if !named {
		return nil
	}
	return f
}

// image checks the image for the fleet's provider and stores it.
func (s *section) image(f *Fleet, image, absDir, displayDir string) {
	switch f.Provider {
	case providerDocker:
		if err := checkImageRef(image); err != nil {
			s.fail("image", "%v", err)
		}
	case providerSim:
		abs, shown := image, image
		if !filepath.IsAbs(image) {
			abs, shown = filepath.Join(absDir, image), filepath.Join(displayDir, image)
		}
		f.Image = filepath.Clean(abs)
		s.simImage(f.Image, shown)
	case providerLocal, providerQEMU:
		abs, shown := image, image
		if !filepath.IsAbs(image) {
			abs = filepath.Join(absDir, image)
			shown = filepath.Join(displayDir, image)
		}
		abs = filepath.Clean(abs)
		f.Image = abs
		info, err := os.Stat(abs)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			s.fail("image", "%s image directory %q does not exist", f.Provider, shown)
		case err != nil:
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			s.fail("image", "cannot read %s image directory %q: %v", f.Provider, shown, err)
		case !info.IsDir():
			s.fail("image", "%s image %q must be a directory, but it is a file", f.Provider, shown)
		default:
			m, err := os.Stat(filepath.Join(abs, "manifest.json"))
			if err != nil || !m.Mode().IsRegular() {
				s.fail("image", "%s image directory %q has no manifest.json file", f.Provider, shown)
			}
		}
	}
}

func (s *section) launch(provider string, providerKnown bool) Launch {
	l := defaultLaunch()
	wantDocker := providerKnown && provider == providerDocker
	wantQEMU := providerKnown && provider == providerQEMU
	if b := s.block("launch"); b != nil {
		ls := s.child(b)
		if ls.strList("command", &l.Command, checkArg) == valid && len(l.Command) == 0 {
			ls.fail("command", "must name a program; leave command out to use the image's entrypoint")
			l.Command = nil
		} else if wantQEMU && len(l.Command) > 0 {
			ls.fail("command", "is not supported by provider %q: a VM runs its image's init, which starts the app; use args and env", providerQEMU)
			l.Command = nil
		}
		ls.strList("args", &l.Args, checkArg)
		ls.stringMap("env", &l.Env, checkEnv)
		ls.duration("stop_grace", positive, maxStopGrace, &l.StopGrace)
		if db := ls.block("docker"); db != nil {
			dl := decodeDockerLaunch(ls.child(db))
			switch {
			case wantDocker:
				l.Docker = &dl
			case providerKnown:
				s.d.errorf(db.TypeRange, ls.field("docker"), "only allowed with provider = %q; this fleet uses provider %q", providerDocker, provider)
			}
		}
		if qb := ls.block("qemu"); qb != nil {
			ql := decodeQEMULaunch(ls.child(qb))
			switch {
			case wantQEMU:
				l.QEMU = &ql
			case providerKnown:
				s.d.errorf(qb.TypeRange, ls.field("qemu"), "only allowed with provider = %q; this fleet uses provider %q", providerQEMU, provider)
			}
		}
		ls.done()
	}
	if wantDocker && l.Docker == nil {
		dl := defaultDockerLaunch()
		l.Docker = &dl
	}
	if wantQEMU && l.QEMU == nil {
		ql := defaultQEMULaunch()
		l.QEMU = &ql
	}
	return l
}

// decodeQEMULaunch decodes launch { qemu { memory, cpus } }.
func decodeQEMULaunch(s *section) QEMULaunch {
	ql := defaultQEMULaunch()
	if s.size("memory", minQEMUMemory, &ql.MemoryBytes) == valid && ql.MemoryBytes > maxQEMUMemory {
		s.fail("memory", "must be at most %s, got %s", formatSize(maxQEMUMemory), formatSize(ql.MemoryBytes))
		ql.MemoryBytes = DefaultQEMUMemory
	}
	s.integer("cpus", 1, maxQEMUCPUs, &ql.CPUs)
	s.done()
	return ql
}

func decodeDockerLaunch(s *section) DockerLaunch {
	dl := defaultDockerLaunch()
	s.integer("port", 1, 65535, &dl.Port)
	s.oneOf("network_mode", &dl.NetworkMode, "bridge", "host")
	s.boolean("read_only", &dl.ReadOnly)
	s.size("memory", minMemoryBytes, &dl.MemoryBytes)
	if f, g := s.number("cpus", "a number of CPUs greater than 0"); g == valid {
		cpus, _ := f.Float64()
		nano := int64(cpus * 1e9)
		switch {
		case f.Sign() <= 0 || nano < 1:
			s.fail("cpus", "must be greater than 0, got %s", formatBig(f))
		case cpus > 1e6:
			s.fail("cpus", "must be at most 1000000, got %s", formatBig(f))
		default:
			dl.NanoCPUs = nano
		}
	}
	s.done()
	return dl
}

func (s *section) health() Health {
	b := s.block("health")
	if b == nil {
		s.d.errorf(s.header, s.field("health"), "missing required block; add health { http \"ready\" { ... } } or a tcp check")
		return Health{}
	}
	hs := s.child(b)
	var blocks []*hclsyntax.Block
	for _, kind := range checkKinds {
		blocks = append(blocks, hs.labelled(kind, "check name")...)
	}
	slices.SortFunc(blocks, func(a, b *hclsyntax.Block) int { return a.TypeRange.Start.Byte - b.TypeRange.Start.Byte })
	var h Health
	seen := map[string]*hclsyntax.Block{}
	for _, cb := range blocks {
		cs := hs.child(cb)
		name := cb.Labels[0]
		c := cs.check(cb.Type, name)
		switch first, dup := seen[name]; {
		case name == "":
			s.d.errorf(cb.LabelRanges[0], cs.path, "check name must not be empty")
		case dup:
			s.d.errorf(cb.LabelRanges[0], cs.path, "duplicate check name; the %s check at %s already uses it", first.Type, rangePos(first.TypeRange))
		default:
			seen[name] = cb
			h.Checks = append(h.Checks, c)
		}
	}
	if len(blocks) == 0 {
		s.d.errorf(b.TypeRange, hs.path, "needs at least one check: an http, tcp, grpc or exec \"name\" { ... } block")
	}
	if len(h.Checks) > 0 && !slices.ContainsFunc(h.Checks, func(c Check) bool { return c.Kind != checkConsul }) {
		s.d.errorf(b.TypeRange, hs.path, "needs a check of its own besides consul checks: a consul check never fails an instance while Consul cannot be reached, so it cannot judge one alone")
	}
	hs.done()
	return h
}

// check decodes one check block of the kind. The settings of one kind
// are refused, with a reason, on the others.
func (s *section) check(kind, name string) Check {
	c := defaultCheck(kind)
	c.Name = name
	if kind == checkHTTP {
		s.text("path", &c.Path, checkCheckPath)
		s.ints("expect_status", 100, 599, &c.ExpectStatus)
	} else {
		s.forbid("path", "only http checks have a path")
		s.forbid("expect_status", "only http checks have expect_status")
	}
	if kind == checkGRPC {
		s.text("service", &c.Service, checkGRPCService)
	} else {
		s.forbid("service", "only grpc checks have a service")
	}
	minTimeout := positive
	if kind == checkExec {
		minTimeout = minExecTimeout
		if s.command(&c.Command) == missing {
			s.required("command", "the program to run and its arguments, as in [\"/usr/local/bin/check\", \"--quick\"]")
		}
	} else {
		s.forbid("command", "only exec checks have a command")
	}
	if kind == checkConsul {
		cc := &ConsulCheck{Address: DefaultConsulAddress}
		s.text("address", &cc.Address, checkConsulAddress)
		decodeConsulTLS(s, cc.Address, &cc.TokenFile, &cc.CAFile, &cc.CertFile, &cc.KeyFile, &cc.TLSServerName)
		c.Consul = cc
	} else {
		for _, name := range []string{"address", "token_file", "ca_file", "cert_file", "key_file", "tls_server_name"} {
			s.forbid(name, "only consul checks have "+name)
		}
	}
	intervalGot := s.duration("interval", minCheckInterval, 0, &c.Interval)
	timeoutGot := s.duration("timeout", minTimeout, 0, &c.Timeout)
	s.integer("healthy_threshold", 1, maxThreshold, &c.HealthyThreshold)
	s.integer("unhealthy_threshold", 1, maxThreshold, &c.UnhealthyThreshold)
	s.duration("startup_timeout", positive, 0, &c.StartupTimeout)
	if intervalGot != invalid && timeoutGot != invalid && c.Timeout > c.Interval {
		if timeoutGot == valid {
			s.fail("timeout", "must not exceed interval (%s), got %s", formatDuration(c.Interval), formatDuration(c.Timeout))
		} else {
			s.fail("interval", "must not be shorter than timeout (%s, the default), got %s; raise interval or set a shorter timeout", formatDuration(c.Timeout), formatDuration(c.Interval))
		}
	}
	s.done()
	return c
}

// command decodes an exec check's command: a program's absolute path
// and its arguments, within the bounds.
func (s *section) command(dst *[]string) got {
	var argv []string
	g := s.strList("command", &argv, checkArg)
	if g != valid {
		return g
	}
	size := 0
	for _, a := range argv {
		size += len(a)
	}
	switch {
	case len(argv) == 0:
		s.fail("command", "must name the program to run, as in [\"/usr/local/bin/check\"]")
		return invalid
	case len(argv) > maxExecArgs:
		s.fail("command", "must have at most %d elements (the program and its arguments), got %d", maxExecArgs, len(argv))
		return invalid
	case size > maxExecCommandSize:
		s.fail("command", "must have at most %d bytes in all, got %d", maxExecCommandSize, size)
		return invalid
	}
	if err := checkExecProgram(argv[0]); err != nil {
		s.d.errorf(elemRange(s.body.Attributes["command"].Expr, 0), s.field("command"), "element 0 %v", err)
		return invalid
	}
	*dst = argv
	return valid
}

func (s *section) drift() Drift {
	d := defaultDrift()
	if b := s.block("drift"); b != nil {
		ds := s.child(b)
		ds.duration("interval", minDriftInterval, 0, &d.Interval)
		ds.strList("ignore_paths", &d.IgnorePaths, checkGlob)
		ds.oneOf("orphans", &d.Orphans, OrphanAdopt, OrphanTerminate, OrphanIgnore)
		ds.done()
	}
	return d
}

func (s *section) remediation() Remediation {
	r := defaultRemediation()
	if b := s.block("remediation"); b != nil {
		rs := s.child(b)
		enabledGot := rs.boolean("enabled", &r.Enabled)
		rs.quantity("max_unhealthy", &r.MaxUnhealthy)
		rs.integer("max_parallel", 1, maxFleetSize, &r.MaxParallel)
		if rs.oneOf("mode", &r.Mode, RemediationAct, RemediationReport) == valid {
			if enabledGot == valid && r.Enabled != (r.Mode == RemediationAct) {
				rs.fail("mode", "contradicts enabled = %t: set one of them (enabled = false is mode = %q)", r.Enabled, RemediationReport)
			}
			r.Enabled = r.Mode == RemediationAct
		} else if !r.Enabled {
			r.Mode = RemediationReport
		}
		rs.strList("report", &r.Report, checkReportReason)
		rs.remediationGuards(&r)
		if qb := rs.block("quarantine"); qb != nil {
			r.Quarantine = rs.child(qb).quarantine()
		}
		rs.done()
	}
	return r
}

// remediationGuards decodes the kill rates, storms and flaps of a
// remediation block.
func (s *section) remediationGuards(r *Remediation) {
	s.rate("rate", &r.Rate)
	s.rate("secondary_rate", &r.SecondaryRate)
	var share Quantity
	if s.quantity("unhealthy_threshold", &share) == valid {
		if !share.Percent {
			s.fail("unhealthy_threshold", "must be a percentage of the running instances, like \"25%%\", got %s", share)
		} else {
			r.UnhealthyThreshold = &share
		}
	}
	s.duration("storm_cooldown", 0, maxTrafficWait, &r.StormCooldown)
	s.boolean("storm_guard", &r.StormGuard)
	s.duration("healthy_delay", 0, maxTrafficWait, &r.HealthyDelay)
	s.integer("flap_threshold", 0, MaxFlapThreshold, &r.FlapThreshold)
	s.duration("flap_window", time.Second, 24*time.Hour, &r.FlapWindow)
	s.integer("max_launch_failures", 0, 1000, &r.MaxLaunchFailures)
}

// Quarantine bounds.
const (
	DefaultQuarantineMax = 1
	DefaultQuarantineTTL = 24 * time.Hour
	maxQuarantine        = 16
	minQuarantineTTL     = time.Minute
	maxQuarantineTTL     = 30 * 24 * time.Hour
)

// quarantine decodes a remediation { quarantine { ... } } block.
func (s *section) quarantine() *Quarantine {
	q := &Quarantine{Max: DefaultQuarantineMax, TTL: DefaultQuarantineTTL, Reasons: slices.Clone(ReportReasons)}
	s.integer("max", 1, maxQuarantine, &q.Max)
	s.duration("ttl", minQuarantineTTL, maxQuarantineTTL, &q.TTL)
	s.strList("reasons", &q.Reasons, checkReportReason)
	s.done()
	return q
}

// Remediation modes.
const (
	RemediationAct    = "act"
	RemediationReport = "report"
)

// ReportReasons are the remediation reasons remediation.report may list.
var ReportReasons = []string{"unhealthy", "never_healthy", "drift_mutated", "orphan"}

func checkReportReason(v string) error {
	if !slices.Contains(ReportReasons, v) {
		return fmt.Errorf("must be %s, got %q", orList(ReportReasons), v)
	}
	return nil
}

// rollout decodes the rollout block; the section is nil when it is absent
// or when one of its quantities is invalid.
func (s *section) rollout() (Rollout, *section) {
	r := defaultRollout()
	b := s.block("rollout")
	if b == nil {
		return r, nil
	}
	rs := s.child(b)
	surge := rs.quantity("max_surge", &r.MaxSurge)
	unavailable := rs.quantity("max_unavailable", &r.MaxUnavailable)
	rs.duration("progress_deadline", time.Second, 7*24*time.Hour, &r.ProgressDeadline)
	rs.duration("bake", 0, 7*24*time.Hour, &r.Bake)
	onFailure := rs.oneOf("on_failure", &r.OnFailure, "pause", "revert")
	var autoRevert bool
	if rs.boolean("auto_revert", &autoRevert) == valid {
		switch {
		case onFailure == valid && autoRevert != (r.OnFailure == "revert"):
			rs.fail("auto_revert", "contradicts on_failure = %q: set one of them (auto_revert = true is on_failure = \"revert\")", r.OnFailure)
		case autoRevert:
			r.OnFailure = "revert"
		}
	}
	rs.canary(&r)
	if ab := rs.block("analysis"); ab != nil {
		r.Analysis = rs.child(ab).analysis()
	}
	rs.checkpoints(&r)
	rs.done()
	if surge == invalid || unavailable == invalid {
		return r, nil
	}
	return r, rs
}

// canary decodes a rollout block's strategy settings.
func (s *section) canary(r *Rollout) {
	strategy := s.oneOf("strategy", &r.Strategy, StrategyRolling, StrategyCanary, StrategyBlueGreen)
	canaryGot := s.quantity("canary", &r.Canary)
	promoteGot := s.duration("promote_after", time.Second, 7*24*time.Hour, &r.PromoteAfter)
	if r.Strategy == StrategyCanary {
		if canaryGot == valid && r.Canary.Value == 0 {
			s.fail("canary", "must be at least 1 (or a percentage above 0%%) for strategy = %q", StrategyCanary)
		}
		return
	}
	for _, a := range []struct {
		name string
		g    got
	}{{"canary", canaryGot}, {"promote_after", promoteGot}} {
		if a.g == valid && strategy != invalid {
			s.fail(a.name, "is for strategy = %q only", StrategyCanary)
		}
	}
}

// checkpoints decodes a rollout's checkpoints: rising percentages.
func (s *section) checkpoints(r *Rollout) {
	var raw []string
	if s.strList("checkpoints", &raw, func(v string) error {
		q, err := quantity.Parse(v)
		if err != nil || !q.Percent || q.Value == 0 || q.Value >= 100 {
			return fmt.Errorf("must be a percentage from 1%% to 99%%, got %q", v)
		}
		return nil
	}) == valid {
		for i, v := range raw {
			q, _ := quantity.Parse(v)
			if i > 0 && q.Value <= r.Checkpoints[i-1].Value {
				s.fail("checkpoints", "must rise, got %s after %s", q, r.Checkpoints[i-1])
				break
			}
			r.Checkpoints = append(r.Checkpoints, q)
		}
	}
	s.duration("checkpoint_pause", 0, 7*24*time.Hour, &r.CheckpointPause)
	if len(r.Checkpoints) > 0 && r.Strategy == StrategyBlueGreen {
		s.fail("checkpoints", "are not for strategy = %q: it switches the whole set in one step", StrategyBlueGreen)
	}
}

// Rollout strategies.
const (
	StrategyRolling   = "rolling"
	StrategyCanary    = "canary"
	StrategyBlueGreen = "blue_green"
)
