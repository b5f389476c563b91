package probe

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/immutd/immutd/internal/state"
)

// KindExec runs a command on the agent's host and passes when it exits 0.
//
// The command runs in a process group of its own, in "/", with stdin
// from /dev/null and only IMMUTD_INSTANCE_ID, IMMUTD_FLEET,
// IMMUTD_ADDRESS (the instance's host:port) and the agent's PATH in its
// environment. When it exits, or when the check's timeout passes, its
// whole process group is killed, so nothing it started outlives the
// probe (a process that leaves the group, with setsid, escapes). Its
// stdout and stderr together, up to maxExecOutput bytes with control
// characters escaped, are the result's detail.
//
// A probe holds one of the Prober's workers until the command and its
// output are done, so at most Options.Workers commands run at once.
const KindExec = "exec"

const (
	// maxExecOutput bounds the output kept of one run, and the detail
	// made of it.
	maxExecOutput = 1 << 10
	// execWaitDelay is how long a probe waits for the output pipes to
	// close once the command's group is dead: a process outside the group
	// may hold them.
	execWaitDelay = time.Second
	// defaultPath is the PATH of a command when the agent has none.
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// execChecker runs exec checks.
type execChecker struct {
	path string // the PATH commands get
}

func newExecChecker(checkEnv) *execChecker {
	path := os.Getenv("PATH")
	if path == "" {
		path = defaultPath
	}
	return &execChecker{path: path}
}

func (e *execChecker) normalize(c state.Check) state.Check {
	c.Command = append([]string(nil), c.Command...)
	return c
}

// describe is "run /usr/local/bin/check-db --port 5432", arguments with
// spaces or special characters quoted.
func (e *execChecker) describe(c state.Check, _ string) string {
	var b strings.Builder
	b.WriteString("run")
	for _, arg := range c.Command {
		b.WriteByte(' ')
		if arg == "" || strings.IndexFunc(arg, needsQuote) >= 0 {
			arg = strconv.Quote(arg)
		}
		b.WriteString(arg)
	}
	return clip(b.String())
}

func needsQuote(r rune) bool {
	return !unicode.IsPrint(r) || unicode.IsSpace(r) || strings.ContainsRune(`"'\$`+"`", r)
}

// run runs the command once.
func (e *execChecker) run(ctx context.Context, j *job) (bool, string) {
	argv := j.check.Command
	if len(argv) == 0 {
		return false, "no command"
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = []string{
		"PATH=" + e.path,
		"IMMUTD_INSTANCE_ID=" + j.t.id,
		"IMMUTD_FLEET=" + j.fleet,
		"IMMUTD_ADDRESS=" + j.address,
	}
	cmd.Dir = "/"
	out := &execOutput{}
	// One writer for both: os/exec then makes a single pipe, so the
	// output keeps the order the command wrote it in.
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = execWaitDelay
	if err := cmd.Start(); err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return false, clip("cannot run " + argv[0] + ": " + err.Error())
	}
	pid := cmd.Process.Pid
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		awaitExit(pid)
	}()
	select {
	case <-exited:
	case <-ctx.Done():
	}
	// The command's first process has not been reaped yet (cmd.Wait
	// below does that), so its pid is still its group's id and the kill
	// reaches only this command's processes: on a timeout the command
	// itself, in any case whatever it left behind.
	_ = unix.Kill(-pid, unix.SIGKILL)
	<-exited
	err := cmd.Wait()
	st := cmd.ProcessState
	text := out.text()
	var ee *exec.ExitError
	switch {
	case st == nil:
		return false, clip("wait: " + err.Error())
	case st.Success():
		// ErrWaitDelay: the command passed, but something outside its
		// group kept its output open; what was read is the output.
		return true, withOutput(st.String(), text)
	case !st.Exited() && errors.Is(ctx.Err(), context.DeadlineExceeded):
		return false, withOutput(j.timeoutDetail, text)
	case err != nil && !errors.As(err, &ee) && !errors.Is(err, exec.ErrWaitDelay):
		return false, withOutput(st.String()+" ("+err.Error()+")", text)
	}
	return false, withOutput(st.String(), text)
}

// awaitExit waits until the process pid has exited, without reaping it.
func awaitExit(pid int) {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			return
		}
	}
}

func withOutput(status, output string) string {
	if output == "" {
		return status
	}
	return status + ": " + output
}

// execOutput keeps the first maxExecOutput bytes written to it and
// discards the rest, so that a chatty command neither blocks on a full
// pipe nor costs memory.
type execOutput struct {
	buf  []byte
	more bool // more was written than kept
}

func (o *execOutput) Write(p []byte) (int, error) {
	room := maxExecOutput - len(o.buf)
	if len(p) > room {
		o.more = true
		o.buf = append(o.buf, p[:room]...)
	} else {
		o.buf = append(o.buf, p...)
	}
	return len(p), nil
}

// text is the kept output as one line of at most maxExecOutput bytes
// (plus "..."): surrounding white space trimmed, newlines, tabs, other
// control and non-printing characters and bytes that are not UTF-8
// escaped as in a Go string literal.
func (o *execOutput) text() string {
	b := o.buf
	if o.more {
		// Do not leave half a character at the cut.
		for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
			if utf8.RuneStart(b[i]) {
				if !utf8.FullRune(b[i:]) {
					b = b[:i]
				}
				break
			}
		}
	}
	s := strings.TrimSpace(string(b))
	var w strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			w.WriteString(`\x`)
			w.WriteString(strconv.FormatUint(uint64(s[i])>>4, 16))
			w.WriteString(strconv.FormatUint(uint64(s[i])&0xf, 16))
		case r == ' ' || unicode.IsPrint(r):
			w.WriteString(s[i : i+size])
		default:
			q := strconv.QuoteRune(r)
			w.WriteString(q[1 : len(q)-1])
		}
		i += size
	}
	out := clipTo(w.String(), maxExecOutput)
	if o.more && len(out) == w.Len() {
		out += "..."
	}
	return out
}
