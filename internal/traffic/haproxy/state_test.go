package haproxy

import (
	"net/netip"
	"strings"
	"testing"
)

// Answers recorded from HAProxy 2.6.12 (Debian bookworm).
const stateAnswer = `1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 web 1 op1 127.0.0.1 2 0 1 1 8 1 0 2 0 0 0 0 - 18081 - 0 0 - - 0
3 web 2 immutd-A 127.0.0.1 0 5 1 1 1 1 0 0 8 0 0 0 - 18082 - 0 0 - - 0
3 web 4 six ::1 0 5 1 1 1 1 0 0 8 0 0 0 - 8080 - 0 0 - - 0
3 web 6 fq - 0 5 1 1 0 1 0 0 8 0 0 0 example.com 80 - 0 0 - - 0
3 web 7 immutd-c 127.0.0.1 2 4 1 1 1 6 3 4 6 0 0 0 - 18091 - 0 0 - - 0
3 web 8 immutd-d 127.0.0.1 0 12 1 1 4 6 3 1 6 0 0 0 - 18091 - 0 0 - - 0

`

func TestParseServersState(t *testing.T) {
	servers, ok, err := parseServersState(stateAnswer, "web")
	if !ok || err != nil || len(servers) != 6 {
		t.Fatalf("ok %v err %v servers %d", ok, err, len(servers))
	}
	by := map[string]server{}
	for _, s := range servers {
		by[s.name] = s
	}
	if s := by["op1"]; s.addr != netip.MustParseAddrPort("127.0.0.1:18081") || !s.ready() || !s.up() {
		t.Errorf("op1: %+v", s)
	}
	// Added "disabled": forced and config maintenance.
	if s := by["immutd-A"]; !s.maint() || s.up() || s.checkConfigured() {
		t.Errorf("immutd-A: %+v", s)
	}
	if s := by["six"]; s.addr != netip.MustParseAddrPort("[::1]:8080") {
		t.Errorf("six: %+v", s)
	}
	if s := by["fq"]; s.addr.IsValid() {
		t.Errorf("fq: %+v", s)
	}
	// Set ready after "disabled": the config mark 0x04 stays, but the
	// server is not in maintenance.
	if s := by["immutd-c"]; !s.ready() || !s.up() || !s.checkPassed() || !s.checkEnabled() {
		t.Errorf("immutd-c: %+v", s)
	}
	// Drain, health forced down, a check passed once, not up yet.
	if s := by["immutd-d"]; !s.drain() || s.maint() || s.up() || s.checkPassed() {
		t.Errorf("immutd-d: %+v", s)
	}

	if servers, ok, err := parseServersState(stateAnswer, "other"); !ok || err != nil || len(servers) != 0 {
		t.Errorf("other backend: %v %v %v", servers, ok, err)
	}
	for _, refused := range []string{"Can't find backend.\n\n", "Permission denied\n\n", "", "\n"} {
		if _, ok, _ := parseServersState(refused, "web"); ok {
			t.Errorf("%q taken as a state dump", refused)
		}
	}
	if _, _, err := parseServersState(strings.Replace(stateAnswer, "1\n", "2\n", 1), "web"); err == nil || !strings.Contains(err.Error(), "version") {
		t.Errorf("version 2: %v", err)
	}
	if _, _, err := parseServersState(strings.Replace(stateAnswer, " srv_admin_state", "", 1), "web"); err == nil || !strings.Contains(err.Error(), "srv_admin_state") {
		t.Errorf("no admin column: %v", err)
	}
	if _, _, err := parseServersState("1\n# be_name srv_name\nweb\n", "web"); err == nil {
		t.Error("short line accepted")
	}
}

func TestParseSessions(t *testing.T) {
	const stat = "# pxname,svname,qcur,qmax,scur,smax,slim\n" +
		"web,op1,0,0,0,0,\n" +
		"web,immutd-a,1,1,2,2,\n" +
		"other,immutd-a,0,0,7,0,\n\n"
	if n, found, err := parseSessions(stat, "web", "immutd-a"); n != 3 || !found || err != nil {
		t.Errorf("immutd-a: %d %v %v", n, found, err)
	}
	if n, found, err := parseSessions(stat, "web", "immutd-b"); n != 0 || found || err != nil {
		t.Errorf("immutd-b: %d %v %v", n, found, err)
	}
	if _, _, err := parseSessions("Can't find backend.\n", "web", "x"); err != errNotStat {
		t.Errorf("refusal: %v", err)
	}
	if _, _, err := parseSessions("# pxname,svname,x\n", "web", "x"); err == nil {
		t.Error("header without scur accepted")
	}
}

func TestNames(t *testing.T) {
	for _, id := range []string{"web-1", "A", "web_1.x-Y", strings.Repeat("a", 128)} {
		name, err := serverName(id)
		if err != nil || name != "immutd-"+id {
			t.Errorf("serverName(%q) = %q, %v", id, name, err)
		}
		if back, ok := instanceID(name); !ok || back != id {
			t.Errorf("instanceID(%q) = %q, %v", name, back, ok)
		}
	}
	for _, name := range []string{"op1", "immutd-", "immutd-a:b", "Immutd-a", "immutd--x"} {
		if id, ok := instanceID(name); ok {
			t.Errorf("instanceID(%q) = %q, want not ours", name, id)
		}
	}
	for in, want := range map[string]string{
		"127.0.0.1:80":         "127.0.0.1:80",
		"[::ffff:10.0.0.1]:80": "10.0.0.1:80",
		"[fd00::5]:8080":       "[fd00::5]:8080",
	} {
		a, err := parseAddress(in)
		if err != nil || formatAddress(a) != want {
			t.Errorf("parseAddress(%q) = %v, %v; want %s", in, a, err, want)
		}
	}
}

func TestCheckCommand(t *testing.T) {
	if err := checkCommand("set server web/immutd-a state ready"); err != nil {
		t.Error(err)
	}
	for _, c := range []string{"", "a;b", "a\nb", "a\\b", "a # b", "a\x00", strings.Repeat("a", 1025), "ä"} {
		if checkCommand(c) == nil {
			t.Errorf("checkCommand(%q) accepted", c)
		}
	}
}

func TestQuote(t *testing.T) {
	if got := quote("  No such server.\n\n"); got != `"No such server."` {
		t.Errorf("quote = %s", got)
	}
	got := quote(strings.Repeat("x", 1000))
	if !strings.Contains(got, "(cut at 240 of 1000 bytes)") || len(got) > 300 {
		t.Errorf("quote of 1000 bytes = %s", got)
	}
}
