package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/aigrid/gridnet/vault"
)

func vaultCommand() *command {
	return &command{
		name:    "vault",
		summary: "keep files in the encrypted vault; change its key",
		help: `A vault is one file: every value in it is sealed with XChaCha20-Poly1305
under a data key, and the data key is wrapped by a key from Argon2id of a
passphrase or from a 32-byte key file. Item names are stored in clear. A
sealed manifest lists every item with the version of its last write, so an
older copy of an item put back, or an item deleted or added outside
gridnet, is refused when the vault is opened ('gridnet vault check').`,
		sub: []*command{vaultLsCommand(), vaultGetCommand(), vaultPutCommand(), vaultRmCommand(), vaultCheckCommand(), vaultRekeyCommand(), vaultKeyfileCommand()},
	}
}

type vaultOpts struct {
	path string
	keys vaultKeyFlags
}

func (o *vaultOpts) register(fs *flag.FlagSet) {
	fs.StringVar(&o.path, "vault", "", "vault file")
	o.keys.register(fs, "", "the vault")
}

func vaultLsCommand() *command {
	return &command{
		name:    "ls",
		summary: "list the items in a vault",
		usage:   "--vault PATH",
		flags:   func(fs *flag.FlagSet) any { o := &vaultOpts{}; o.register(fs); return o },
		run: func(_ context.Context, env Env, a any, args []string) error {
			o := a.(*vaultOpts)
			if len(args) != 0 {
				return usageError("unexpected arguments %q", args)
			}
			v, err := openVault(o.path, o.keys, env)
			if err != nil {
				return err
			}
			defer v.Close()
			items, err := v.List()
			if err != nil {
				return err // "vault: list: ..."
			}
			tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tCLASS\tSIZE\tMODIFIED")
			for _, it := range items {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", it.Name, it.Class, it.Size, it.Modified.UTC().Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
}

func vaultGetCommand() *command {
	type opts struct {
		vaultOpts
		out string
	}
	return &command{
		name:    "get",
		summary: "write an item to stdout or a file",
		usage:   "--vault PATH NAME [--out FILE]",
		help:    "The output file is created 0600 and never replaced.",
		flags: func(fs *flag.FlagSet) any {
			o := &opts{}
			o.register(fs)
			fs.StringVar(&o.out, "out", "", "write to this new file instead of stdout")
			return o
		},
		run: func(_ context.Context, env Env, a any, args []string) error {
			o := a.(*opts)
			if len(args) != 1 {
				return usageError("want one item NAME")
			}
			v, err := openVault(o.path, o.keys, env)
			if err != nil {
				return err
			}
			defer v.Close()
			data, _, err := v.Get(args[0])
			if err != nil {
				return err // "vault: get NAME: ..."
			}
			if o.out == "" {
				_, err = env.Stdout.Write(data)
				return err
			}
			f, err := os.OpenFile(o.out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return fmt.Errorf("write item: %w", err)
			}
			_, err = f.Write(data)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				// Leave no partial copy of a secret behind.
				os.Remove(o.out)
				return fmt.Errorf("write item: %w", err)
			}
			return nil
		},
	}
}

func vaultPutCommand() *command {
	type opts struct {
		vaultOpts
		in, class string
	}
	return &command{
		name:    "put",
		summary: "store a file or stdin as an item",
		usage:   "--vault PATH NAME [--in FILE] [--class user]",
		help:    "Without --in the value is read from stdin. An existing item is replaced.",
		flags: func(fs *flag.FlagSet) any {
			o := &opts{}
			o.register(fs)
			fs.StringVar(&o.in, "in", "", "read the value from this file instead of stdin")
			fs.StringVar(&o.class, "class", string(vault.ClassUser), "item class: user, key, cert or state")
			return o
		},
		run: func(_ context.Context, env Env, a any, args []string) error {
			o := a.(*opts)
			if len(args) != 1 {
				return usageError("want one item NAME")
			}
			class := vault.Class(o.class)
			switch class {
			case vault.ClassUser, vault.ClassKey, vault.ClassCert, vault.ClassState:
			default:
				return usageError("--class %q: want user, key, cert or state", o.class)
			}
			var src io.Reader = env.Stdin
			if o.in != "" {
				f, err := os.Open(o.in)
				if err != nil {
					return fmt.Errorf("read value: %w", err)
				}
				defer f.Close()
				src = f
			}
			data, err := io.ReadAll(io.LimitReader(src, vault.MaxValueSize+1))
			if err != nil {
				return fmt.Errorf("read value: %w", err)
			}
			if len(data) > vault.MaxValueSize {
				return fmt.Errorf("value is larger than the vault's limit of %d bytes", vault.MaxValueSize)
			}
			v, err := openOrCreateVault(o.path, o.keys, env)
			if err != nil {
				return err
			}
			defer v.Close()
			if err := v.Put(args[0], class, data); err != nil {
				return err // "vault: put NAME: ..."
			}
			fmt.Fprintf(env.Stderr, "stored %q (%d bytes, class %s)\n", args[0], len(data), class)
			return nil
		},
	}
}

func vaultRmCommand() *command {
	return &command{
		name:    "rm",
		summary: "delete an item",
		usage:   "--vault PATH NAME",
		flags:   func(fs *flag.FlagSet) any { o := &vaultOpts{}; o.register(fs); return o },
		run: func(_ context.Context, env Env, a any, args []string) error {
			o := a.(*vaultOpts)
			if len(args) != 1 {
				return usageError("want one item NAME")
			}
			v, err := openVault(o.path, o.keys, env)
			if err != nil {
				return err
			}
			defer v.Close()
			if err := v.Delete(args[0]); err != nil {
				return err // "vault: delete NAME: ..."
			}
			return nil
		},
	}
}

// Exit codes of `gridnet vault check`: 0 the vault is sound, 1 it failed
// the check (the problems are listed), 2 the check could not run.
const (
	exitVaultFailed   = 1    // problems found: tampered, rolled back, missing or foreign items, a corrupt file, a generation below --min-generation
	exitVaultNotRun   = 2    // wrong invocation, no or wrong key, no such file, locked: nothing was checked
	vaultCheckProblem = "  " // indent of each problem line
)

func vaultCheckCommand() *command {
	type opts struct {
		vaultOpts
		minGeneration uint64
		accept        bool
	}
	return &command{
		name:    "check",
		summary: "verify every item and the manifest; detect rolled-back, deleted and added items",
		usage:   "--vault PATH [--min-generation N] [--accept]",
		help: `Checks the file's structure, authenticates every item and compares each
with the sealed manifest: an older copy of an item put back ("item X is
version 3, the manifest says 5"), an item deleted ("item X is missing") or
added ("item X is not in the manifest") outside gridnet is reported. The
vault's generation (the number of writes so far) is printed; a copy of the
whole file put back is a consistent older vault that only a generation
recorded elsewhere reveals: pass it as --min-generation.

--accept, after the problems were looked into, rewrites the manifest to
list the items as the file holds them now (an older copy is kept at its
version; an item that fails authentication stays unreadable until it is
removed with 'gridnet vault rm' or replaced with 'gridnet vault put').

Exit status: 0 the vault is sound, 1 problems were found (listed on
stderr), 2 the check could not run (usage, key, file missing or locked).`,
		flags: func(fs *flag.FlagSet) any {
			o := &opts{}
			o.register(fs)
			fs.Uint64Var(&o.minGeneration, "min-generation", 0, "fail if the vault's generation is below N (a value recorded earlier, outside the file)")
			fs.BoolVar(&o.accept, "accept", false, "record the items as they are now in a new manifest")
			return o
		},
		run: func(_ context.Context, env Env, a any, args []string) error {
			o := a.(*opts)
			if len(args) != 0 {
				return usageError("unexpected arguments %q", args)
			}
			if o.path == "" {
				return usageError("--vault is required")
			}
			key, _, err := o.keys.keySource(o.path, env).Resolve(false)
			if err != nil {
				return &exitError{code: exitVaultNotRun, err: err}
			}
			v, err := vault.Open(o.path, key, &vault.Options{AllowIntegrityErrors: true, Logger: stderrLogger(env)})
			if err != nil {
				if errors.Is(err, vault.ErrCorrupt) {
					return &exitError{code: exitVaultFailed, err: err}
				}
				return &exitError{code: exitVaultNotRun, err: err}
			}
			defer v.Close()
			problems := v.Audit()
			if o.accept && len(problems) > 0 {
				reportVaultProblems(env, o.path, "found", problems)
				if err := v.Accept(); err != nil {
					return &exitError{code: exitVaultFailed, err: err}
				}
				fmt.Fprintf(env.Stdout, "vault %s: the manifest now lists the items as they are (generation %d)\n", o.path, v.Generation())
				problems = v.Audit()
			}
			gen := v.Generation()
			if gen < o.minGeneration {
				problems = append(problems, fmt.Errorf("generation %d is below --min-generation %d: the whole file was put back from an older copy, or it is another vault", gen, o.minGeneration))
			}
			if len(problems) > 0 {
				return &exitError{code: exitVaultFailed, err: vaultProblemsError(o.path, problems)}
			}
			items, err := v.List()
			if err != nil {
				return &exitError{code: exitVaultFailed, err: err}
			}
			fmt.Fprintf(env.Stdout, "vault %s: %s, generation %d: every item authenticates and matches the manifest\n", o.path, plural(len(items), "item"), gen)
			return nil
		},
	}
}

// reportVaultProblems writes problems to stderr, one per line.
func reportVaultProblems(env Env, path, verb string, problems []error) {
	fmt.Fprintf(env.Stderr, "vault %s: %s %s:\n", path, verb, plural(len(problems), "problem"))
	for _, p := range problems {
		fmt.Fprintf(env.Stderr, "%s%s\n", vaultCheckProblem, p)
	}
}

// vaultProblemsError is the error of a failed check: the count, then one
// problem per line.
func vaultProblemsError(path string, problems []error) error {
	lines := make([]string, len(problems))
	for i, p := range problems {
		lines[i] = vaultCheckProblem + p.Error()
	}
	return fmt.Errorf("vault %s fails the check (%s):\n%s", path, plural(len(problems), "problem"), strings.Join(lines, "\n"))
}

// plural formats n and noun, adding an s unless n is 1.
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func vaultRekeyCommand() *command {
	type opts struct {
		vaultOpts
		newKeyFile       string
		newPassphraseEnv string
	}
	return &command{
		name:    "rekey",
		summary: "wrap the vault's data key under a new passphrase or key file",
		usage:   "--vault PATH (--new-key-file FILE | --new-passphrase-env VAR | a prompt)",
		help: `The data key is rewrapped in one transaction: afterwards only the new
key opens the vault, and an interruption leaves the old key working.`,
		flags: func(fs *flag.FlagSet) any {
			o := &opts{}
			o.register(fs)
			fs.StringVar(&o.newKeyFile, "new-key-file", "", "new 32-byte key file (see 'gridnet vault keyfile')")
			fs.StringVar(&o.newPassphraseEnv, "new-passphrase-env", "", "environment variable holding the new passphrase")
			return o
		},
		run: func(_ context.Context, env Env, a any, args []string) error {
			o := a.(*opts)
			if len(args) != 0 {
				return usageError("unexpected arguments %q", args)
			}
			var newKey vault.Key
			switch {
			case o.newKeyFile != "" && o.newPassphraseEnv != "":
				return usageError("give one of --new-key-file and --new-passphrase-env")
			case o.newKeyFile != "":
				k, err := vault.ReadKeyFile(o.newKeyFile)
				if err != nil {
					return err
				}
				newKey = k
			case o.newPassphraseEnv != "":
				p, ok := env.LookupEnv(o.newPassphraseEnv)
				if !ok || p == "" {
					return fmt.Errorf("environment variable %s is empty", o.newPassphraseEnv)
				}
				newKey = vault.PassphraseKey([]byte(p))
			default:
				k, _, err := vault.KeySource{Prompt: env.Prompt, IsTerminal: env.StdinIsTerminal}.Resolve(true)
				if err != nil {
					return fmt.Errorf("new key: %w", err)
				}
				newKey = k
			}
			v, err := openVault(o.path, o.keys, env)
			if err != nil {
				return err
			}
			defer v.Close()
			if err := v.Rekey(newKey, nil); err != nil {
				return err // "vault: rekey: ..."
			}
			fmt.Fprintf(env.Stdout, "vault %s rekeyed\n", o.path)
			return nil
		},
	}
}

func vaultKeyfileCommand() *command {
	return &command{
		name:    "keyfile",
		summary: "write a new random 32-byte vault key file (0600)",
		usage:   "FILE",
		run: func(_ context.Context, env Env, _ any, args []string) error {
			if len(args) != 1 {
				return usageError("want one FILE")
			}
			if err := vault.GenerateKeyFile(args[0]); err != nil {
				return err
			}
			fmt.Fprintf(env.Stdout, "key file %s written\n", args[0])
			return nil
		},
	}
}
