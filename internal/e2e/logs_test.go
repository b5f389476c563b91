package e2e

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestLogsOutliveTheInstance: the last output of a local instance and of
// a docker container is kept when immutd terminates them, and `immutd
// logs ID` shows it afterwards, with the token only.
func TestLogsOutliveTheInstance(t *testing.T) {
	t.Run("local", func(t *testing.T) {
		e := newEnv(t, envOpts{})
		e.writeFleet("web.hcl", fleetFile("web", 1, "v1", ""))
		e.start()
		victim := e.waitHealthy("web", 1, "", 30*time.Second).Instances[0]
		if out, code := e.cli("logs", victim.ID); code != 0 || !strings.Contains(out, "listening on") {
			t.Fatalf("logs of the live instance: exit %d: %s", code, out)
		}
		must(t, syscall.Kill(localPID(t, victim), syscall.SIGKILL))
		e.waitTerminated("web", victim.ID)
		checkKeptLogs(t, e, victim.ID)
	})
	t.Run("docker", func(t *testing.T) {
		s := startDockerFleet(t, "logs", 1, nil)
		victim := s.e.fleet(s.fleet.name).Instances[0]
		ctx, cancel := s.en.ctx()
		defer cancel()
		must(t, s.en.cli.ContainerKill(ctx, victim.ProviderRef, "SIGKILL"))
		s.e.waitTerminated(s.fleet.name, victim.ID)
		checkKeptLogs(t, s.e, victim.ID)
	})
}

// checkKeptLogs checks that `immutd logs` shows the sample app's start
// line of the terminated instance id, and refuses without the token.
func checkKeptLogs(t *testing.T, e *env, id string) {
	t.Helper()
	// The kill's record says where the output went.
	if ev := findEvent(e.events(), "terminate_planned", id); ev == nil || !strings.Contains(strings.Join(ev.Evidence, "; "), "its last output is kept: immutd logs "+id) {
		t.Errorf("the terminate_planned event of %s does not link its output: %+v", id, ev)
	}
	out, code := e.cli("logs", id)
	if code != 0 || !strings.Contains(out, "listening on") {
		t.Fatalf("immutd logs %s after it was terminated: exit %d: %q", id, code, out)
	}
	if out, code := runCLI("logs", id, "-addr", e.httpAddr); code == 0 || !strings.Contains(out, "401") && !strings.Contains(out, "token") {
		t.Fatalf("immutd logs without the token: exit %d: %s", code, out)
	}
	if out, code := e.cli("logs", "no-such-instance"); code == 0 || !strings.Contains(out, "no output of instance no-such-instance") {
		t.Fatalf("immutd logs of an unknown instance: exit %d: %s", code, out)
	}
}
