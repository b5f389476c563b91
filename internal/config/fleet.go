package config

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
)

// LoadFleets reads every fleet file of dir: the files directly in it whose
// names end in ".hcl" and do not start with ".". Files are read in name
// order, fleets are returned sorted by name. A directory without fleet
// files is a valid empty set; a missing directory is an error. Invalid
// content anywhere yields Diagnostics for all files together.
func LoadFleets(dir string) (*FleetSet, error) {
	files, err := readFleetDir(dir)
	if err != nil {
		return nil, err
	}
	return parseFleetFiles(dir, files)
}

// fleetFile is one fleet file's name (in the directory) and content.
type fleetFile struct {
	name string
	src  []byte
}

// isFleetFileName says whether a directory entry is a fleet file; editor
// droppings such as ".#web.hcl", "web.hcl~" and ".web.hcl.swp" are not.
func isFleetFileName(name string) bool {
	return strings.HasSuffix(name, ".hcl") && !strings.HasPrefix(name, ".")
}

// readFleetDir reads the fleet files of dir in name order. A file that
// disappears while the directory is read is skipped, as it would have been
// had it gone a moment earlier; anything that is not a regular file (after
// following symlinks) is skipped too.
func readFleetDir(dir string) ([]fleetFile, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("config: read fleets directory: %w", err)
	}
	var files []fleetFile
	for _, e := range entries {
		if !isFleetFileName(e.Name()) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		info, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("config: read fleet file: %w", err)
		}
		if !info.Mode().IsRegular() {
			continue
		}
		src, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("config: read fleet file: %w", err)
		}
		files = append(files, fleetFile{name: e.Name(), src: src})
	}
	return files, nil
}

// hashFleetFiles is a sha256 over the files' names and contents in name order.
func hashFleetFiles(files []fleetFile) string {
	sorted := slices.Clone(files)
	slices.SortFunc(sorted, func(a, b fleetFile) int { return strings.Compare(a.name, b.name) })
	h := sha256.New()
	var n [8]byte
	for _, f := range sorted {
		binary.BigEndian.PutUint64(n[:], uint64(len(f.name)))
		h.Write(n[:])
		h.Write([]byte(f.name))
		binary.BigEndian.PutUint64(n[:], uint64(len(f.src)))
		h.Write(n[:])
		h.Write(f.src)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// parseFleetFiles decodes and validates the files of dir as one set.
func parseFleetFiles(dir string, files []fleetFile) (*FleetSet, error) {
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("config: fleets directory: %w", err)
	}
	sorted := slices.Clone(files)
	slices.SortFunc(sorted, func(a, b fleetFile) int { return strings.Compare(a.name, b.name) })

	d := &decoder{}
	set := &FleetSet{Dir: dir, Fleets: []*Fleet{}}
	byName := map[string]*Fleet{}
	for _, f := range sorted {
		for _, fl := range d.fleetFile(f.src, filepath.Join(dir, f.name), absDir, dir) {
			if first, dup := byName[fl.Name]; dup {
				d.errorf(posRange(fl.Pos), "fleet "+strconv.Quote(fl.Name), "duplicate fleet name; first defined at %s", first.Pos)
				continue
			}
			byName[fl.Name] = fl
			set.Fleets = append(set.Fleets, fl)
		}
	}
	if len(d.diags) > 0 {
		return nil, d.diags.sorted()
	}
	slices.SortFunc(set.Fleets, func(a, b *Fleet) int { return strings.Compare(a.Name, b.Name) })
	return set, nil
}

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
	providerGot := s.oneOf("provider", &f.Provider, providerLocal, providerDocker)
	if providerGot == missing {
		s.required("provider", orList([]string{providerLocal, providerDocker}))
	}
	var image string
	switch s.text("image", &image, checkNotEmpty) {
	case missing:
		s.required("image", "the golden image: a bundle directory (local) or an image reference (docker)")
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
	s.done()

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
	case providerLocal:
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
			s.fail("image", "local image directory %q does not exist", shown)
		case err != nil:
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			s.fail("image", "cannot read local image directory %q: %v", shown, err)
		case !info.IsDir():
			s.fail("image", "local image %q must be a bundle directory, but it is a file", shown)
		default:
			m, err := os.Stat(filepath.Join(abs, "manifest.json"))
			if err != nil || !m.Mode().IsRegular() {
				s.fail("image", "local image directory %q has no manifest.json file", shown)
			}
		}
	}
}

func (s *section) launch(provider string, providerKnown bool) Launch {
	l := defaultLaunch()
	wantDocker := providerKnown && provider == providerDocker
	if b := s.block("launch"); b != nil {
		ls := s.child(b)
		if ls.strList("command", &l.Command, checkArg) == valid && len(l.Command) == 0 {
			ls.fail("command", "must name a program; leave command out to use the image's entrypoint")
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
		ls.done()
	}
	if wantDocker && l.Docker == nil {
		dl := defaultDockerLaunch()
		l.Docker = &dl
	}
	return l
}

func decodeDockerLaunch(s *section) DockerLaunch {
	dl := defaultDockerLaunch()
	s.integer("port", 1, 65535, &dl.Port)
	s.oneOf("network_mode", &dl.NetworkMode, "bridge", "host")
	s.boolean("read_only", &dl.ReadOnly)
	if _, v, ok := s.eval("memory"); ok {
		raw := ""
		switch v.Type() {
		case cty.String:
			raw = v.AsString()
		case cty.Number:
			raw = v.AsBigFloat().Text('f', -1)
		default:
			s.fail("memory", "must be a size like \"256MiB\" or a number of bytes, got %s", describe(v))
		}
		if raw != "" {
			n, err := parseMemory(raw)
			switch {
			case err != nil:
				s.fail("memory", "%v", err)
			case n < minMemoryBytes:
				s.fail("memory", "must be at least 4MiB, got %q", raw)
			default:
				dl.MemoryBytes = n
			}
		}
	}
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
	blocks := append(hs.labelled(checkHTTP, "check name"), hs.labelled(checkTCP, "check name")...)
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
		s.d.errorf(b.TypeRange, hs.path, "needs at least one check: an http \"name\" { ... } or tcp \"name\" { ... } block")
	}
	hs.done()
	return h
}

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
	intervalGot := s.duration("interval", minCheckInterval, 0, &c.Interval)
	timeoutGot := s.duration("timeout", positive, 0, &c.Timeout)
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
		rs.boolean("enabled", &r.Enabled)
		rs.quantity("max_unhealthy", &r.MaxUnhealthy)
		rs.integer("max_parallel", 1, maxFleetSize, &r.MaxParallel)
		rs.done()
	}
	return r
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
	rs.done()
	if surge == invalid || unavailable == invalid {
		return r, nil
	}
	return r, rs
}
