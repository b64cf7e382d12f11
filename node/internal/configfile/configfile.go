// Package configfile is the machinery of gridnet's YAML config file that
// package node (which parses the file) and the command line (whose
// `up --test` checks what the file names) share: the keys of each section
// checked against a Go struct, with a "did you mean" hint for unknown
// ones and the line of every key recorded; errors that name their line;
// the list of every problem found in one file; and reading the file and
// the password files it names.
package configfile

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/aigrid/gridnet/policy"
	"github.com/aigrid/gridnet/policy/suggest"
)

// Error lists every problem found in one config file.
type Error struct {
	// Path is the config file; empty for bytes that came from no file.
	Path     string
	Problems []error
}

// NewError sorts problems by line (those without one last).
func NewError(problems []error) *Error {
	sort.SliceStable(problems, func(i, j int) bool {
		li, lj := ProblemLine(problems[i]), ProblemLine(problems[j])
		return li != 0 && (lj == 0 || li < lj)
	})
	return &Error{Problems: problems}
}

// Error reads "config FILE: line N: problem", or, for several problems,
// "config FILE: N problems:" and one indented problem per line.
func (e *Error) Error() string {
	prefix := "config"
	if e.Path != "" {
		prefix += " " + e.Path
	}
	if len(e.Problems) == 1 {
		return prefix + ": " + e.Problems[0].Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d problems:", prefix, len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p.Error())
	}
	return b.String()
}

// Unwrap returns the problems.
func (e *Error) Unwrap() []error { return e.Problems }

// LineError is a problem at a line of the config file; line 0 means no
// single line is at fault (a required key that is missing).
type LineError struct {
	Line int
	Err  error
}

// Error reads "line N: problem".
func (e *LineError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("line %d: %v", e.Line, e.Err)
	}
	return e.Err.Error()
}

// Unwrap returns the problem.
func (e *LineError) Unwrap() error { return e.Err }

// ProblemLine returns the line a problem names, or 0.
func ProblemLine(err error) int {
	var le *LineError
	if errors.As(err, &le) {
		return le.Line
	}
	var pe *policy.ConfigError
	if errors.As(err, &pe) {
		return pe.Line
	}
	return 0
}

// ValueError is a bad value at n. It is a *yaml.TypeError so that the
// decoder notes it and goes on with the other fields.
func ValueError(n *yaml.Node, format string, args ...any) error {
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: ", n.Line) + fmt.Sprintf(format, args...)}}
}

// HasLine reports whether one of problems is at line (> 0).
func HasLine(problems []error, line int) bool {
	for _, p := range problems {
		if line > 0 && ProblemLine(p) == line {
			return true
		}
	}
	return false
}

// DecodeProblems splits a decoding error into its problems. A type error
// at a line where the key check already found a problem says the same in
// Go's words, and is left out.
func DecodeProblems(err error, known []error) []error {
	if err == nil {
		return nil
	}
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return []error{errors.New(strings.TrimPrefix(err.Error(), "yaml: "))}
	}
	out := make([]error, 0, len(te.Errors))
	for _, s := range te.Errors {
		var line int
		if _, serr := fmt.Sscanf(s, "line %d:", &line); serr == nil {
			_, rest, _ := strings.Cut(s, ": ")
			if strings.HasPrefix(rest, "cannot unmarshal") && HasLine(known, line) {
				continue
			}
			out = append(out, &LineError{line, errors.New(rest)})
			continue
		}
		out = append(out, errors.New(s))
	}
	return out
}

// FirewallProblem places a firewall section error under "firewall." so
// that its path reads as the file's.
func FirewallProblem(err error) error {
	var pe *policy.ConfigError
	if errors.As(err, &pe) {
		moved := *pe
		moved.Path = "firewall." + pe.Path
		return &moved
	}
	return fmt.Errorf("firewall: %w", err)
}

// CheckKeys compares the keys of mapping n with the yaml fields of struct
// type t, recursively, and returns a problem for every unknown key, with a
// "did you mean" hint naming the closest known key of that section. It
// records the line of every known key in lines under its dotted path
// ("vault.path"). Values that are not mappings are left to the decoder,
// which reports a type error with the line.
func CheckKeys(n *yaml.Node, t reflect.Type, section string, lines map[string]int) []error {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind != yaml.MappingNode {
		if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
			return nil // an empty section
		}
		return []error{&LineError{n.Line, fmt.Errorf("%s: want a mapping of %s", sectionName(section), strings.Join(yamlKeys(t), ", "))}}
	}
	known := yamlKeys(t)
	fields := make(map[string]reflect.Type, t.NumField())
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if name := yamlName(f); name != "" {
			fields[name] = f.Type
		}
	}
	var problems []error
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Value == "<<" && k.Tag == "!!merge" {
			// A merge key: the merged mappings' keys land here.
			merged := []*yaml.Node{v}
			if v.Kind == yaml.SequenceNode {
				merged = v.Content
			}
			for _, m := range merged {
				problems = append(problems, CheckKeys(m, t, section, lines)...)
			}
			continue
		}
		ft, ok := fields[k.Value]
		if !ok {
			where := ""
			if section != "" {
				where = " in " + section
			}
			problems = append(problems, &LineError{k.Line, fmt.Errorf("unknown key %q%s%s", k.Value, where, suggest.Hint(k.Value, known...))})
			continue
		}
		path := k.Value
		if section != "" {
			path = section + "." + k.Value
		}
		lines[path] = k.Line
		switch {
		case isSection(ft):
			problems = append(problems, CheckKeys(v, ft, path, lines)...)
		case ft.Kind() == reflect.Slice && isSection(ft.Elem()) && v.Kind == yaml.SequenceNode:
			// A list of sections (serve, forward, proxy.users): each
			// entry's keys are checked, its lines kept as "serve[0].to".
			for j, item := range v.Content {
				ipath := fmt.Sprintf("%s[%d]", path, j)
				lines[ipath] = item.Line
				problems = append(problems, CheckKeys(item, ft.Elem(), ipath, lines)...)
			}
		}
	}
	return problems
}

// isSection reports whether t is a struct whose keys CheckKeys checks
// (not a value type that reads itself from YAML).
func isSection(t reflect.Type) bool {
	return t.Kind() == reflect.Struct && t != reflect.TypeFor[yaml.Node]() && !reflect.PointerTo(t).Implements(reflect.TypeFor[yaml.Unmarshaler]())
}

// yamlName is the config key of struct field f, or "" for none.
func yamlName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if !f.IsExported() || name == "-" {
		return ""
	}
	return name
}

// yamlKeys lists the config keys of struct type t in field order.
func yamlKeys(t reflect.Type) []string {
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		if name := yamlName(t.Field(i)); name != "" {
			keys = append(keys, name)
		}
	}
	return keys
}

// sectionName names a section in messages; the top level is "config".
func sectionName(section string) string {
	if section == "" {
		return "config"
	}
	return section
}
