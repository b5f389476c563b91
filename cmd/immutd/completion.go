package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
)

// The completion command is added in init: its script lists every
// command, so it cannot be in the commands table's own initializer.
func init() {
	commands = append(commands, &command{
		name: "completion", args: "bash|zsh", minArgs: 1, maxArgs: 1,
		summary: "print a shell completion script for bash or zsh",
		about: `Print a completion script of immutd's commands and their flags for
bash or zsh. Load it with: source <(immutd completion bash), or put its
output in /etc/bash_completion.d/immutd; for zsh, source it from .zshrc.`,
		setup: func(fs *flag.FlagSet) runFunc {
			return func(_ context.Context, w streams, args []string) error {
				switch args[0] {
				case "bash":
					return writeCompletion(w.out, false)
				case "zsh":
					return writeCompletion(w.out, true)
				}
				return usageError(fmt.Sprintf("unknown shell %q: want bash or zsh", args[0]))
			}
		},
	})
}

// writeCompletion writes a bash completion function (for zsh, through its
// bash compatibility): the words after "immutd" that name a command, and
// then that command's flags.
func writeCompletion(w io.Writer, zsh bool) error {
	top := map[string]bool{}
	subs := map[string][]string{}
	flags := map[string][]string{}
	for _, c := range commands {
		words := strings.Fields(c.name)
		top[words[0]] = true
		if len(words) == 2 {
			subs[words[0]] = append(subs[words[0]], words[1])
		}
		fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		if c.setup != nil && c.name != "completion" {
			c.setup(fs)
		}
		var fl []string
		fs.VisitAll(func(f *flag.Flag) { fl = append(fl, "-"+f.Name) })
		flags[c.name] = fl
	}
	var b strings.Builder
	if zsh {
		b.WriteString("autoload -U +X bashcompinit && bashcompinit\n")
	}
	b.WriteString("# immutd completion (immutd completion bash|zsh)\n_immutd() {\n")
	b.WriteString("  local cur=${COMP_WORDS[COMP_CWORD]} cmd=\"\"\n")
	b.WriteString("  if [ \"$COMP_CWORD\" -ge 2 ]; then cmd=${COMP_WORDS[1]}; fi\n")
	b.WriteString("  if [ \"$COMP_CWORD\" -ge 3 ]; then case \"${COMP_WORDS[1]} ${COMP_WORDS[2]}\" in\n")
	for _, name := range sortedKeys(flags) {
		if strings.Contains(name, " ") {
			fmt.Fprintf(&b, "    %q) cmd=%q ;;\n", name, name)
		}
	}
	b.WriteString("  esac; fi\n")
	b.WriteString("  if [ \"$COMP_CWORD\" -eq 1 ]; then COMPREPLY=($(compgen -W \"" + strings.Join(sortedKeys(top), " ") + "\" -- \"$cur\")); return; fi\n")
	b.WriteString("  case \"$cmd\" in\n")
	for _, group := range sortedKeys(subs) {
		sort.Strings(subs[group])
		fmt.Fprintf(&b, "    %s) if [ \"$COMP_CWORD\" -eq 2 ]; then COMPREPLY=($(compgen -W %q -- \"$cur\")); return; fi ;;\n", group, strings.Join(subs[group], " "))
	}
	b.WriteString("  esac\n  case \"$cur\" in -*) case \"$cmd\" in\n")
	for _, name := range sortedKeys(flags) {
		if len(flags[name]) > 0 {
			fmt.Fprintf(&b, "    %q) COMPREPLY=($(compgen -W %q -- \"$cur\")) ;;\n", name, strings.Join(flags[name], " "))
		}
	}
	b.WriteString("  esac ;; *) COMPREPLY=($(compgen -f -- \"$cur\")) ;; esac\n}\ncomplete -F _immutd immutd\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
