package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"regexp"
	"strings"
)

// hiddenFlagUsage starts the usage text of a hidden alias flag: an older
// spelling that still works but is not shown in help.
const hiddenFlagUsage = "\x00alias of "

// aliasFlag registers name as a hidden second spelling of the flag
// canonical, which must already be defined in fs. Both names set the same
// value; help shows only canonical.
func aliasFlag(fs *flag.FlagSet, name, canonical string) {
	f := fs.Lookup(canonical)
	if f == nil {
		panic("node: alias --" + name + " of undefined flag --" + canonical)
	}
	fs.Var(f.Value, name, hiddenFlagUsage+canonical)
}

// isHiddenFlag reports whether f is an alias registered by aliasFlag.
func isHiddenFlag(f *flag.Flag) bool { return strings.HasPrefix(f.Usage, hiddenFlagUsage) }

// flagSpelling is how help and messages write a flag: -x for one-letter
// flags (like ping -c and events -f), --name for the others.
func flagSpelling(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// hasVisibleFlags reports whether fs has a flag that help shows.
func hasVisibleFlags(fs *flag.FlagSet) bool {
	visible := false
	fs.VisitAll(func(f *flag.Flag) { visible = visible || !isHiddenFlag(f) })
	return visible
}

// printFlags writes fs's flags as help shows them, in the spelling the
// usage lines use (--name, or -x for one letter), without hidden aliases:
//
//	--ca-cert string
//	    CA certificate (PEM) (default "ca.crt")
func printFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		if isHiddenFlag(f) {
			return
		}
		typ, usage := flag.UnquoteUsage(f)
		line := "  " + flagSpelling(f.Name)
		if typ != "" {
			line += " " + typ
		}
		fmt.Fprintf(w, "%s\n      %s", line, usage)
		if !isZeroDefault(f.DefValue) {
			if typ == "string" {
				fmt.Fprintf(w, " (default %q)", f.DefValue)
			} else {
				fmt.Fprintf(w, " (default %s)", f.DefValue)
			}
		}
		fmt.Fprintln(w)
	})
}

// isZeroDefault reports whether a flag's default is its type's zero value,
// which help leaves out.
func isZeroDefault(def string) bool {
	switch def {
	case "", "0", "false", "0s":
		return true
	}
	return false
}

// flagNameInError finds the flag name in the flag package's parse errors
// ("flag provided but not defined: -x", "flag needs an argument: -x",
// "invalid value "v" for flag -x: ...", "invalid boolean value "v" for -x: ...").
var flagNameInError = regexp.MustCompile(`(defined: |argument: |for flag |for )--?([^\s:=]+)`)

// explainFlagError rewrites a flag parse error so that it spells the flag
// as help and usage do (--name), and says "unknown flag" plainly.
func explainFlagError(err error) error {
	msg := flagNameInError.ReplaceAllStringFunc(err.Error(), func(m string) string {
		sub := flagNameInError.FindStringSubmatch(m)
		return sub[1] + flagSpelling(sub[2])
	})
	msg = strings.Replace(msg, "flag provided but not defined: ", "unknown flag ", 1)
	return errors.New(msg)
}
