//go:build linux

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The README's and the docs' shell blocks are run as they are written, so
// that none of them can drift from what the commands do. A block that
// cannot run as written is marked in the markdown, on the line right
// before its fence (blank lines may come between):
//
//	<!-- readme-test: skip (why it cannot run) -->
//
// Every ```sh, ```bash and ```shell block of a file runs in order, each in
// its own bash with `set -Eeuo pipefail`, all in one folder per file: a
// copy of this module's source (so `go build -o gridnet .` works) with the
// gridnet binary already built as ./gridnet and on PATH.

// mdBlock is one fenced shell block of a markdown file.
type mdBlock struct {
	fence int    // line of the opening fence, 1-based
	code  string // the lines between the fences
	skip  string // reason from a skip marker; "" runs the block
}

// markerPrefix starts every readme-test directive.
const markerPrefix = "<!-- readme-test:"

var skipMarker = regexp.MustCompile(`^<!-- readme-test: skip \((.+)\) -->$`)

// shellLangs are the fence languages whose blocks run.
var shellLangs = map[string]bool{"sh": true, "bash": true, "shell": true}

// shellBlocks returns the shell blocks of md. A directive that is not a
// well-formed skip marker, a marker that no shell block follows, and an
// unterminated fence are errors: a typo must not quietly skip a block.
func shellBlocks(md string) ([]mdBlock, error) {
	var (
		blocks     []mdBlock
		skip       string
		markerLine int
		in         bool // inside a fence
		lang       string
		cur        mdBlock
		body       []string
	)
	sc := bufio.NewScanner(strings.NewReader(md))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if in {
			if trimmed == "```" {
				in = false
				if shellLangs[lang] {
					cur.code = strings.Join(body, "\n") + "\n"
					blocks = append(blocks, cur)
				}
				continue
			}
			body = append(body, line)
			continue
		}
		switch {
		case strings.HasPrefix(trimmed, "```"):
			lang = strings.TrimSpace(strings.TrimPrefix(trimmed, "```"))
			if markerLine != 0 && !shellLangs[lang] {
				return nil, fmt.Errorf("line %d: the readme-test marker of line %d is followed by a ```%s block, not a shell block", n, markerLine, lang)
			}
			in, cur, body = true, mdBlock{fence: n, skip: skip}, nil
			skip, markerLine = "", 0
		case strings.HasPrefix(trimmed, markerPrefix):
			m := skipMarker.FindStringSubmatch(trimmed)
			if m == nil || strings.TrimSpace(m[1]) == "" {
				return nil, fmt.Errorf("line %d: %q: want <!-- readme-test: skip (reason) -->", n, trimmed)
			}
			if markerLine != 0 {
				return nil, fmt.Errorf("line %d: a second readme-test marker after the one of line %d", n, markerLine)
			}
			skip, markerLine = m[1], n
		case trimmed == "":
		default:
			if markerLine != 0 {
				return nil, fmt.Errorf("line %d: the readme-test marker of line %d is not followed by a shell block", n, markerLine)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if in {
		return nil, fmt.Errorf("line %d: fence never closed", cur.fence)
	}
	if markerLine != 0 {
		return nil, fmt.Errorf("line %d: the readme-test marker is not followed by a shell block", markerLine)
	}
	return blocks, nil
}

// failedLine is what the ERR trap of a block prints when a command fails,
// or what bash prints when it stops the script itself (an unset variable).
var failedLine = regexp.MustCompile(`(?m)^(?:readme-test: line (\d+): exit status \d+|bash: line (\d+)): (.*)$`)

// blockPreamble is the first line of every block's script: stop at the
// first failing command (in pipelines and subshells too) and at an unset
// variable, and say which line failed.
const blockPreamble = `set -Eeuo pipefail; trap 'echo "readme-test: line $LINENO: exit status $?: $BASH_COMMAND" >&2' ERR` + "\n"

// runBlock runs one block with bash in dir and returns its output (stdout
// and stderr). Processes the block leaves behind are killed.
func runBlock(ctx context.Context, dir string, env []string, code string) ([]byte, error) {
	// Output goes to a file, not a pipe: a process left running in the
	// background would hold a pipe open and keep Wait waiting.
	outFile, err := os.CreateTemp("", "readme-test-output-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(outFile.Name())
	defer outFile.Close()
	cmd := exec.CommandContext(ctx, "bash", "--noprofile", "--norc", "-c", blockPreamble+code)
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = outFile, outFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	err = cmd.Wait()
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // anything started in the background
	out, rerr := os.ReadFile(outFile.Name())
	if err == nil {
		err = rerr
	}
	return out, err
}

// runMarkdown runs md's shell blocks in order in dir and returns the
// blocks it skipped. The first block that fails ends the run; its error
// names the markdown line of the failing command when bash reported it.
func runMarkdown(ctx context.Context, name, md, dir string, env []string, logf func(string, ...any)) (skipped []mdBlock, err error) {
	blocks, err := shellBlocks(md)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	for _, b := range blocks {
		if b.skip != "" {
			skipped = append(skipped, b)
			continue
		}
		out, err := runBlock(ctx, dir, env, b.code)
		if err != nil {
			where := fmt.Sprintf("%s:%d", name, b.fence)
			if m := failedLine.FindSubmatch(out); m != nil {
				if n, _ := strconv.Atoi(string(m[1]) + string(m[2])); n > 1 {
					// Script line 1 is the preamble; line 2 is the
					// first line after the fence.
					where = fmt.Sprintf("%s:%d: %s", name, b.fence+n-1, m[3])
				}
			}
			return skipped, fmt.Errorf("%s: %w\n%s", where, err, out)
		}
		logf("%s:%d: ran\n%s", name, b.fence, out)
	}
	return skipped, nil
}

// blockEnv is the environment of the blocks: this process's, with the
// gridnet binary first on PATH and without any vault key source a
// developer may have set, so the blocks use only the keys they make.
func blockEnv(binDir string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k == "PATH" || strings.HasPrefix(k, "GRIDNET_") || k == "CREDENTIALS_DIRECTORY" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "PATH="+binDir+string(os.PathListSeparator)+os.Getenv("PATH"))
}

// copySource copies the module's source (no tests, test data, binaries or
// hidden folders) from root to dst, so that `go build` works in dst.
func copySource(root, dst string) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if rel != "." && (strings.HasPrefix(name, ".") || name == "testdata" || name == "bin") {
				return filepath.SkipDir
			}
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		keep := (strings.HasSuffix(name, ".go") && !strings.HasSuffix(name, "_test.go")) ||
			name == "go.mod" || name == "go.sum" || name == "Makefile" || strings.HasSuffix(name, ".md")
		if !keep || !d.Type().IsRegular() {
			return nil
		}
		return copyFile(path, filepath.Join(dst, rel), 0o644)
	})
}

func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// TestReadmeCommands runs every shell block of README.md and docs/*.md
// as a user would, and fails when a command in one fails.
func TestReadmeCommands(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Fatal("the README's commands are bash: ", err)
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Fatal("the README builds gridnet with go: ", err)
	}
	ctx := context.Background()
	if d, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.Add(-10*time.Second))
		defer cancel()
	}
	binDir := t.TempDir()
	build := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(binDir, "gridnet"), ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	env := blockEnv(binDir)
	docs, err := filepath.Glob(filepath.Join("docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range append([]string{"README.md"}, docs...) {
		t.Run(file, func(t *testing.T) {
			md, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			blocks, err := shellBlocks(string(md))
			if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			if file == "README.md" && len(blocks) == 0 {
				t.Fatal("README.md has no shell blocks: the quick start is one")
			}
			dir := t.TempDir()
			if err := copySource(".", dir); err != nil {
				t.Fatalf("copy the source: %v", err)
			}
			if err := copyFile(filepath.Join(binDir, "gridnet"), filepath.Join(dir, "gridnet"), 0o755); err != nil {
				t.Fatal(err)
			}
			skipped, err := runMarkdown(ctx, file, string(md), dir, env, t.Logf)
			for _, b := range skipped {
				t.Logf("%s:%d: skipped: %s", file, b.fence, b.skip)
			}
			if err != nil {
				t.Fatal(err)
			}
			if file == "README.md" && len(skipped) == len(blocks) {
				t.Fatal("every shell block of README.md is marked skip")
			}
		})
	}
}

// TestShellBlocks checks what counts as a block and what a marker may say.
func TestShellBlocks(t *testing.T) {
	md := "# t\n" + // 1
		"```sh\n" + // 2
		"echo one\n" + // 3
		"```\n" + // 4
		"```yaml\n" + // 5
		"a: 1\n" + // 6
		"```\n" + // 7
		"<!-- readme-test: skip (needs a daemon) -->\n" + // 8
		"\n" + // 9
		"```bash\n" + // 10
		"gridnet up\n" + // 11
		"```\n" // 12
	blocks, err := shellBlocks(md)
	if err != nil {
		t.Fatal(err)
	}
	want := []mdBlock{{fence: 2, code: "echo one\n"}, {fence: 10, code: "gridnet up\n", skip: "needs a daemon"}}
	if len(blocks) != len(want) {
		t.Fatalf("blocks %+v, want %+v", blocks, want)
	}
	for i := range want {
		if blocks[i] != want[i] {
			t.Errorf("block %d = %+v, want %+v", i, blocks[i], want[i])
		}
	}

	bad := map[string]string{
		"marker without reason":  "<!-- readme-test: skip () -->\n```sh\ntrue\n```\n",
		"unknown directive":      "<!-- readme-test: run-later -->\n```sh\ntrue\n```\n",
		"marker before yaml":     "<!-- readme-test: skip (x) -->\n```yaml\na: 1\n```\n",
		"marker before prose":    "<!-- readme-test: skip (x) -->\nsome text\n```sh\ntrue\n```\n",
		"marker at the end":      "text\n<!-- readme-test: skip (x) -->\n",
		"unterminated fence":     "```sh\ntrue\n",
		"two markers, one block": "<!-- readme-test: skip (x) -->\n<!-- readme-test: skip (y) -->\n```sh\ntrue\n```\n",
	}
	for name, md := range bad {
		if _, err := shellBlocks(md); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestRunMarkdownFailsWhenACommandFails: the runner stops at the first
// failing command, in the middle of a block, in a pipeline or on an unset
// variable, and names its markdown line; a block that passes passes.
func TestRunMarkdownFailsWhenACommandFails(t *testing.T) {
	env := blockEnv(t.TempDir())
	cases := []struct {
		name, cmd string
		status    string // the exit status the error reports
	}{
		{"false", "false", "1"},
		{"exit status", "ls /nonexistent-readme-test-dir", "2"},
		{"pipeline", "false | cat", "1"},
		{"unset variable", `echo "$README_TEST_UNSET"`, "1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			md := "# sample\n" + // 1
				"\n" + // 2
				"```sh\n" + // 3
				"touch before\n" + // 4
				c.cmd + "\n" + // 5
				"touch after\n" + // 6
				"```\n" // 7
			_, err := runMarkdown(context.Background(), "sample.md", md, dir, env, t.Logf)
			if err == nil {
				t.Fatal("a failing command passed")
			}
			var exit *exec.ExitError
			if !errors.As(err, &exit) {
				t.Errorf("error %v does not carry the exit status", err)
			}
			if !strings.HasPrefix(err.Error(), "sample.md:5: ") || !strings.Contains(err.Error(), "exit status "+c.status) {
				t.Errorf("error does not name line 5 and exit status %s: %v", c.status, err)
			}
			if _, err := os.Stat(filepath.Join(dir, "before")); err != nil {
				t.Error("the command before the failing one did not run")
			}
			if _, err := os.Stat(filepath.Join(dir, "after")); err == nil {
				t.Error("the command after the failing one ran")
			}
		})
	}

	dir := t.TempDir()
	md := "```sh\necho ok > out.txt\n```\n<!-- readme-test: skip (would fail) -->\n```sh\nfalse\n```\n```sh\ngrep -q ok out.txt\n```\n"
	skipped, err := runMarkdown(context.Background(), "ok.md", md, dir, env, t.Logf)
	if err != nil {
		t.Fatalf("passing blocks failed: %v", err)
	}
	if len(skipped) != 1 || skipped[0].skip != "would fail" {
		t.Errorf("skipped %+v, want the marked block", skipped)
	}
}

// TestRunBlockKillsWhatItLeftBehind: a block that starts a long-running
// process in the background does not leave it running.
func TestRunBlockKillsWhatItLeftBehind(t *testing.T) {
	dir := t.TempDir()
	env := blockEnv(t.TempDir())
	if out, err := runBlock(context.Background(), dir, env, "sleep 1000 &\necho $! > pid\n"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	// Killed processes are reaped by init; until then they are zombies.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || strings.Contains(string(st), ") Z ") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("background process %d still runs after the block", pid)
		}
	}
}

// FuzzShellBlocks: any markdown either is refused or yields blocks whose
// fence line opens a fence and whose code is text of the file. The seeds
// in testdata/fuzz/FuzzShellBlocks cover blocks, markers and a fence that
// is never closed.
func FuzzShellBlocks(f *testing.F) {
	f.Add("```sh\necho hi\n```\n")
	f.Add("<!-- readme-test: skip (daemon) -->\n\n```bash\ngridnet up\n```\n```yaml\na: 1\n```\n")
	f.Add("```sh\nunclosed\n")
	f.Fuzz(func(t *testing.T, md string) {
		blocks, err := shellBlocks(md)
		if err != nil {
			return
		}
		lines := strings.Split(strings.ReplaceAll(md, "\r\n", "\n"), "\n")
		for _, b := range blocks {
			if b.fence < 1 || b.fence > len(lines) {
				t.Fatalf("fence line %d of %d lines", b.fence, len(lines))
			}
			if fence := strings.TrimSpace(lines[b.fence-1]); !strings.HasPrefix(fence, "```") {
				t.Fatalf("line %d %q opens no fence", b.fence, fence)
			}
			if !strings.Contains(strings.Join(lines, "\n"), strings.TrimSuffix(b.code, "\n")) {
				t.Fatalf("block of line %d: %q is not in the file", b.fence, b.code)
			}
		}
	})
}
