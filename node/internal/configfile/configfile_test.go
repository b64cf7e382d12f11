package configfile

import (
	"errors"
	"reflect"
	"testing"
)

type testSection struct {
	Path string `yaml:"path"`
	Key  string `yaml:"key_file"`
}

type testEntry struct {
	To string `yaml:"to"`
}

type testConfig struct {
	Vault testSection `yaml:"vault"`
	Serve []testEntry `yaml:"serve"`
	Name  string      `yaml:"name"`
}

// TestLines: every known key's dotted path maps to its line, list entries
// and merged keys included; unknown keys and bad data have none.
func TestLines(t *testing.T) {
	data := []byte("name: a\nvault:\n  <<: {path: v}\n  key_file: k\nserve:\n  - to: x\n  - {to: y}\nbogus: 1\n")
	got := Lines(data, reflect.TypeFor[testConfig]())
	want := map[string]int{"name": 1, "vault": 2, "vault.path": 3, "vault.key_file": 4, "serve": 5, "serve[0]": 6, "serve[0].to": 6, "serve[1]": 7, "serve[1].to": 7}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Lines = %v, want %v", got, want)
	}
	if got := Lines([]byte("vault: [unclosed\n"), reflect.TypeFor[testConfig]()); len(got) != 0 {
		t.Errorf("Lines of bad YAML = %v, want none", got)
	}
}

// TestErrorListsProblemsByLine: problems are sorted by line, those
// without one last, and the message names the file.
func TestErrorListsProblemsByLine(t *testing.T) {
	missing := errors.New("vault.path is required")
	e := NewError([]error{
		&LineError{Line: 0, Err: missing},
		&LineError{Line: 7, Err: errors.New("seven")},
		&LineError{Line: 3, Err: errors.New("three")},
	})
	e.Path = "node.yaml"
	want := "config node.yaml: 3 problems:\n  line 3: three\n  line 7: seven\n  vault.path is required"
	if e.Error() != want {
		t.Errorf("got %q, want %q", e.Error(), want)
	}
	if !errors.Is(e, missing) {
		t.Error("the problems are not unwrapped")
	}
	one := NewError([]error{&LineError{Line: 2, Err: errors.New("bad")}})
	if got := one.Error(); got != "config: line 2: bad" {
		t.Errorf("one problem without a file: %q", got)
	}
}
