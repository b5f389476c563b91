package config

import (
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"unicode"
)

// Check kinds.
const (
	checkHTTP   = "http"
	checkTCP    = "tcp"
	checkGRPC   = "grpc"
	checkExec   = "exec"
	checkConsul = "consul"
)

// checkKinds are the check blocks of health { ... }, in the order
// messages list them.
var checkKinds = []string{checkHTTP, checkTCP, checkGRPC, checkExec, checkConsul}

// Provider names, as fleet files spell them. They are defined here, by
// the configuration that accepts them, and the agent's provider registry
// maps them to providers; nothing else knows a provider by name.
const (
	ProviderLocal  = "local"
	ProviderDocker = "docker"
	ProviderQEMU   = "qemu"

	providerLocal  = ProviderLocal
	providerDocker = ProviderDocker
	providerQEMU   = ProviderQEMU
)

// providerNames are the providers a fleet may name, in the order messages list them.
var providerNames = []string{providerLocal, providerDocker, providerQEMU}

var (
	fleetNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$`)
	envNameRE   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	memoryRE    = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)$`)
)

// reservedEnv are the variables immutd sets for every instance.
var reservedEnv = []string{"IMMUTD_INSTANCE_ID", "IMMUTD_FLEET", "IMMUTD_IMAGE_DIGEST", "PORT"}

var memoryUnits = map[string]int64{
	"":    1,
	"B":   1,
	"KB":  1000,
	"MB":  1000 * 1000,
	"GB":  1000 * 1000 * 1000,
	"KiB": 1 << 10,
	"MiB": 1 << 20,
	"GiB": 1 << 30,
}

// parseMemory parses "256MiB", "1.5GB" or a plain count of bytes.
func parseMemory(s string) (int64, error) {
	m := memoryRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return 0, fmt.Errorf("must be a size like \"256MiB\" or \"1GB\" (units B, KB, MB, GB, KiB, MiB, GiB), got %q", s)
	}
	unit, ok := memoryUnits[m[2]]
	if !ok {
		return 0, fmt.Errorf("unknown unit %q; use B, KB, MB, GB, KiB, MiB or GiB", m[2])
	}
	r, ok := new(big.Rat).SetString(m[1])
	if !ok {
		return 0, fmt.Errorf("must be a size like \"256MiB\", got %q", s)
	}
	r.Mul(r, new(big.Rat).SetInt64(unit))
	n := new(big.Int).Quo(r.Num(), r.Denom())
	if !n.IsInt64() {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return n.Int64(), nil
}

func checkEnv(key, value string) error {
	for _, r := range reservedEnv {
		if key == r {
			return fmt.Errorf("key %q is reserved; immutd sets it for every instance", key)
		}
	}
	if !envNameRE.MatchString(key) {
		return fmt.Errorf("key %q is not a valid variable name; use letters, digits and underscores, not starting with a digit", key)
	}
	if strings.ContainsRune(value, 0) {
		return fmt.Errorf("value of %q must not contain a NUL character", key)
	}
	return nil
}

func checkArg(s string) error {
	if strings.ContainsRune(s, 0) {
		return errors.New("must not contain a NUL character")
	}
	return nil
}

func checkNotEmpty(s string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	return nil
}

// CheckNodeName checks a node name (node_name): not empty, no spaces or
// control characters.
func CheckNodeName(s string) error { return checkNodeName(s) }

// CheckDialAddr checks a host:port that peers can dial.
func CheckDialAddr(s string) error { return checkDialAddr(s) }

func checkNodeName(s string) error {
	if s == "" || strings.IndexFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
		return fmt.Errorf("must be a non-empty name without spaces or control characters, got %q", s)
	}
	return nil
}

// checkGRPCService checks the service name of a grpc check: printable,
// no white space, bounded.
func checkGRPCService(s string) error {
	if len(s) > maxGRPCServiceLen {
		return fmt.Errorf("must have at most %d bytes, got %d", maxGRPCServiceLen, len(s))
	}
	if strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) || unicode.IsSpace(r) }) >= 0 {
		return fmt.Errorf("must be a service name like \"users.v1.Users\", printable and without spaces, got %q", s)
	}
	return nil
}

// checkExecProgram checks the first element of an exec check's command.
func checkExecProgram(s string) error {
	if err := checkArg(s); err != nil {
		return err
	}
	if !filepath.IsAbs(s) {
		return fmt.Errorf("must be the absolute path of the program, like \"/usr/local/bin/check\", got %q", s)
	}
	// Like a local image directory, the program must exist where the
	// files are read: a check that cannot start fails every instance it
	// judges, and would have them replaced for the agent's own fault.
	fi, err := os.Stat(s)
	switch {
	case err != nil:
		return fmt.Errorf("program %q cannot be used on this host: %v (an exec check runs it on every agent's host)", s, unwrapPathErr(err))
	case !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0:
		return fmt.Errorf("program %q is not an executable file (an exec check runs it on every agent's host)", s)
	}
	return nil
}

func checkCheckPath(s string) error {
	if !strings.HasPrefix(s, "/") || strings.IndexFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
		return fmt.Errorf("must be a request path starting with \"/\" and without spaces, got %q", s)
	}
	return nil
}

// checkGlob validates a drift ignore pattern: slash-separated, relative,
// path.Match syntax in each segment, "**" only as a whole segment.
func checkGlob(p string) error {
	switch {
	case p == "":
		return errors.New("must not be empty")
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("must be relative to the instance root (no leading \"/\"), got %q", p)
	}
	for _, seg := range strings.Split(p, "/") {
		switch {
		case seg == "":
			return fmt.Errorf("must not have empty segments (\"//\" or a trailing \"/\"), got %q", p)
		case seg == "." || seg == "..":
			return fmt.Errorf("must not have %q segments, got %q", seg, p)
		case seg == "**":
			continue
		case strings.Contains(seg, "**"):
			return fmt.Errorf("may use \"**\" only as a whole segment, as in \"logs/**\", got %q", p)
		}
		if _, err := path.Match(seg, ""); err != nil {
			return fmt.Errorf("has invalid glob syntax in segment %q of %q", seg, p)
		}
	}
	return nil
}

// Docker image reference grammar (as in the distribution reference spec).
var imageRefRE = func() *regexp.Regexp {
	const (
		alnum      = `[a-z0-9]+`
		separator  = `(?:[._]|__|[-]+)`
		component  = alnum + `(?:` + separator + alnum + `)*`
		domainPart = `(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])`
		host       = `(?:` + domainPart + `(?:\.` + domainPart + `)*|\[[a-fA-F0-9:]+\])`
		domain     = host + `(?::[0-9]+)?`
		name       = `((?:` + domain + `/)?` + component + `(?:/` + component + `)*)`
		tag        = `(?::([\w][\w.-]{0,127}))?`
		digest     = `(?:@([A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?`
	)
	return regexp.MustCompile(`^` + name + tag + digest + `$`)
}()

var sha256DigestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// checkImageRef checks the syntax of a docker image reference; it must
// name a tag or a digest.
func checkImageRef(ref string) error {
	bad := fmt.Errorf("must be a docker image reference like \"nginx:1.27\" or \"nginx@sha256:<64 hex digits>\", got %q", ref)
	m := imageRefRE.FindStringSubmatch(ref)
	if m == nil || len(m[1]) > 255 {
		return bad
	}
	name, tag, digest := m[1], m[2], m[3]
	if tag == "" && digest == "" {
		return fmt.Errorf("must name a tag or a digest, as in %q or \"%s@sha256:...\", got %q", name+":1.0", name, ref)
	}
	if strings.HasPrefix(digest, "sha256:") && !sha256DigestRE.MatchString(digest) {
		return fmt.Errorf("has a malformed sha256 digest; expected 64 lowercase hex digits, got %q", ref)
	}
	return nil
}

// checkIP requires a literal IP address.
func checkIP(s string) error {
	if _, err := netip.ParseAddr(s); err != nil {
		return fmt.Errorf("must be an IP address like \"127.0.0.1\", got %q", s)
	}
	return nil
}

// checkListenAddr requires host:port with a numeric port; the host may be
// empty (all interfaces) and the port 0 (any free port).
func checkListenAddr(s string) error {
	_, err := splitAddr(s, 0)
	return err
}

// checkDialAddr requires host:port that peers can dial: a host that is
// not empty or unspecified, and a port from 1 to 65535.
func checkDialAddr(s string) error {
	host, err := splitAddr(s, 1)
	if err != nil {
		return err
	}
	if host == "" {
		return fmt.Errorf("must name a host peers can reach, got %q", s)
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() {
		return fmt.Errorf("must name a host peers can reach, not the unspecified address, got %q", s)
	}
	return nil
}

func splitAddr(s string, minPort int) (string, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", fmt.Errorf("must be a host:port address like \"127.0.0.1:7979\", got %q", s)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < minPort || n > 65535 {
		return "", fmt.Errorf("must have a numeric port from %d to 65535, got %q", minPort, s)
	}
	if strings.IndexFunc(host, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
		return "", fmt.Errorf("must be a host:port address like \"127.0.0.1:7979\", got %q", s)
	}
	return host, nil
}

// checkDockerHost checks an engine endpoint such as DOCKER_HOST holds.
func checkDockerHost(s string) error {
	bad := fmt.Errorf("must be a docker endpoint like \"unix:///var/run/docker.sock\" or \"tcp://10.0.0.5:2376\", got %q", s)
	u, err := url.Parse(s)
	if err != nil {
		return bad
	}
	switch u.Scheme {
	case "unix", "npipe":
		if u.Path == "" {
			return bad
		}
	case "tcp", "http", "https", "ssh":
		if u.Host == "" {
			return bad
		}
	default:
		return bad
	}
	return nil
}

func checkHealthQuorum(s string) error {
	if s == "majority" || s == "all" {
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > maxClusterSize {
		return fmt.Errorf("want \"majority\", \"all\" or a count from 1 to %d, got %q", maxClusterSize, s)
	}
	return nil
}
