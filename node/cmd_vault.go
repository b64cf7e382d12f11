package node

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
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
passphrase or from a 32-byte key file. Item names are stored in clear.`,
		sub: []*command{vaultLsCommand(), vaultGetCommand(), vaultPutCommand(), vaultRmCommand(), vaultRekeyCommand(), vaultKeyfileCommand()},
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
