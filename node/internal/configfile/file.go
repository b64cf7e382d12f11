package configfile

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"strings"

	"go.yaml.in/yaml/v3"
)

// MaxSize bounds a config file: a real one is a few kilobytes.
const MaxSize = 1 << 20

// Read reads the config file at path, at most MaxSize bytes. Its errors
// name the file.
func Read(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if len(data) > MaxSize {
		return nil, fmt.Errorf("config %s: larger than %d bytes", path, MaxSize)
	}
	return data, nil
}

// Lines maps the dotted path of every known key in the YAML config data
// ("vault.path", "serve[0].to") to its line, as CheckKeys records them for
// the struct type t. Problems are left to the parser: a key it does not
// know, or data that is not YAML, has no line here.
func Lines(data []byte, t reflect.Type) map[string]int {
	lines := map[string]int{}
	var doc yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(data)).Decode(&doc); err != nil || len(doc.Content) == 0 {
		return lines
	}
	CheckKeys(doc.Content[0], t, "", lines)
	return lines
}

// ReadPasswordFile reads a proxy user's password: the first line of the
// file, 1 to 255 bytes.
func ReadPasswordFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("password file: %w", err)
	}
	pass, _, _ := strings.Cut(string(b), "\n")
	pass = strings.TrimSuffix(pass, "\r")
	if pass == "" || len(pass) > 255 {
		return "", fmt.Errorf("password file %s: want a password of 1 to 255 bytes on its first line", path)
	}
	return pass, nil
}

// NewLogger is the logger the config's log section asks for: slog's text
// or JSON handler ("json") on w, at level.
func NewLogger(w io.Writer, level slog.Level, format string) *slog.Logger {
	hopts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, hopts))
	}
	return slog.New(slog.NewTextHandler(w, hopts))
}
