package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestCompletionScripts: the scripts are valid shell, name every command
// and its flags, and an unknown shell is a usage error.
func TestCompletionScripts(t *testing.T) {
	code, out, _ := runCLI(t, "completion", "bash")
	if code != 0 {
		t.Fatalf("completion bash: exit %d", code)
	}
	for _, want := range []string{"complete -F _immutd immutd", `"fleet drain") cmd="fleet drain"`, "-token-file", "-follow", " rollout ", "logs"} {
		if !strings.Contains(out, want) {
			t.Errorf("bash completion lacks %q", want)
		}
	}
	if bash, err := exec.LookPath("bash"); err == nil {
		cmd := exec.Command(bash, "-n")
		cmd.Stdin = strings.NewReader(out)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("bash -n of the script: %v: %s", err, b)
		}
	}
	if code, out, _ := runCLI(t, "completion", "zsh"); code != 0 || !strings.HasPrefix(out, "autoload -U +X bashcompinit") {
		t.Errorf("completion zsh: exit %d: %.60s", code, out)
	}
	if code, _, errOut := runCLI(t, "completion", "fish"); code != 2 || !strings.Contains(errOut, `unknown shell "fish"`) {
		t.Errorf("completion fish: exit %d: %s", code, errOut)
	}
}
