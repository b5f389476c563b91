package haproxy

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"github.com/immutd/immutd/internal/instance"
)

// Prefix starts the name of every server this package owns; the rest of
// the name is the instance id.
const Prefix = "immutd-"

// validID is the instance ids that make a server name: those every
// provider accepts (instance.CheckID). All its characters are allowed in
// an HAProxy server name ([A-Za-z0-9._:-]) and none is special to the
// runtime API, so the name is the id verbatim, unique (HAProxy compares
// names case-sensitively) and reversible.
var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// validBackend is an HAProxy proxy name: the characters HAProxy allows.
var validBackend = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// serverName returns the server name of an instance id, or a permanent
// error for an id that cannot be one.
func serverName(id string) (string, error) {
	if !validID.MatchString(id) {
		return "", instance.Permanent(fmt.Errorf("instance id %q must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit", id))
	}
	return Prefix + id, nil
}

// instanceID returns the instance id of a server name, and false for a
// server this package does not own.
func instanceID(name string) (string, bool) {
	id, ok := strings.CutPrefix(name, Prefix)
	if !ok || !validID.MatchString(id) {
		return "", false
	}
	return id, true
}

// parseAddress parses a member's address: an IP literal (v4, or v6 in
// brackets, without a zone) and a port 1-65535. Host names are refused:
// HAProxy 2.6 does not resolve the address of a dynamic server.
func parseAddress(s string) (netip.AddrPort, error) {
	bad := func(why string) (netip.AddrPort, error) {
		return netip.AddrPort{}, instance.Permanent(fmt.Errorf("address %q: %s", s, why))
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return bad("want ip:port or [ipv6]:port")
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return bad("the host must be an IP address (HAProxy does not resolve names of dynamic servers)")
	}
	if ip.Zone() != "" {
		return bad("an IPv6 zone is not supported")
	}
	ip = ip.Unmap()
	if ip.IsUnspecified() || ip.IsMulticast() {
		return bad("not a unicast address")
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 || strconv.FormatUint(p, 10) != port {
		return bad("the port must be a number 1-65535")
	}
	return netip.AddrPortFrom(ip, uint16(p)), nil
}

// formatAddress is a in the form "add server" takes.
func formatAddress(a netip.AddrPort) string {
	return a.String() // 10.0.0.5:8080, [fd00::5]:8080
}
