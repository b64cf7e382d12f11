package vault

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// loadManifest reads and authenticates the manifest and compares every
// item's clear prefix with it (no decryption: this runs on every Open).
// Differences fail with ErrIntegrity unless allow is set; then the Vault
// opens, keeps them for Check and, if the manifest itself is unusable,
// starts from an empty one at the highest authenticated item version.
func (v *Vault) loadManifest(allow bool) error {
	var (
		problems []error
		man      *manifest
		manErr   error
		top      uint64
	)
	err := guard("open", func() error {
		return v.db.View(func(tx *bolt.Tx) error {
			mb := tx.Bucket([]byte(metaBucketName))
			if mb == nil {
				return fmt.Errorf("%w: header bucket missing", ErrCorrupt)
			}
			b, err := items(tx)
			if err != nil {
				return err
			}
			switch raw := mb.Get([]byte(manifestKeyName)); {
			case raw == nil:
				manErr = &IntegrityError{Problem: ProblemManifest}
			default:
				if man, err = openManifest(v.aead, raw); err != nil {
					manErr = &IntegrityError{Problem: ProblemManifest, Err: err}
				}
			}
			if manErr != nil {
				problems = append(problems, manErr)
				if !allow {
					return nil
				}
				top, err = topVersion(v, b)
				return err
			}
			err = b.ForEach(func(k, rec []byte) error {
				if p := v.compareAtOpen(man, string(k), present(rec)); p != nil {
					problems = append(problems, p)
				}
				return nil
			})
			problems = append(problems, missing(man, b)...)
			return err
		})
	})
	if err != nil {
		return err
	}
	if len(problems) > 0 && !allow {
		return errors.Join(problems...)
	}
	if manErr != nil {
		man = newManifest(top)
	}
	v.man, v.manErr = man, manErr
	return nil
}

// compareAtOpen checks the record rec of name against m cheaply: by its
// clear prefix, decrypting only a record whose version differs. A record
// that then fails authentication is not an integrity problem but a
// tampered item, left for Get and Check to report (ErrTampered) so that
// one damaged item does not keep the vault from opening; a record that
// authenticates at another version is an older (or newer) copy.
//
// An item listed at version 0 (never authenticated) is decrypted too: if
// its record now authenticates, an authentic copy was put in its place.
func (v *Vault) compareAtOpen(m *manifest, name string, rec []byte) error {
	p := m.compareClear(name, rec)
	var ie *IntegrityError
	want, listed := m.items[name]
	unauthenticated := p == nil && listed && want == 0
	if !unauthenticated && (!errors.As(p, &ie) || ie.Problem != ProblemVersion) {
		return p
	}
	pt, h, err := openRecord(v.aead, name, rec)
	clear(pt)
	if err != nil {
		return nil
	}
	return m.compareVersion(name, h)
}

// present maps a ForEach value to a non-nil record: a nested bucket (nil
// value) counts as a present item whose record does not parse.
func present(rec []byte) []byte {
	if rec == nil {
		return []byte{}
	}
	return rec
}

// missing returns a ProblemMissing error for each item m lists that b
// lacks, in name order.
func missing(m *manifest, b *bolt.Bucket) []error {
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(m.items)) {
		if b.Get([]byte(name)) == nil {
			errs = append(errs, &IntegrityError{Item: name, Problem: ProblemMissing})
		}
	}
	return errs
}

// missing is the Vault's form of missing, for Check.
func (v *Vault) missing(b *bolt.Bucket) []error { return missing(v.man, b) }

// topVersion returns the highest version among the records in b that
// authenticate in the current layout. Versions of records that do not
// authenticate are not trusted: a forged 2^64-1 must not exhaust the
// generation counter.
func topVersion(v *Vault, b *bolt.Bucket) (uint64, error) {
	var top uint64
	err := b.ForEach(func(k, rec []byte) error {
		pt, h, err := openRecord(v.aead, string(k), present(rec))
		clear(pt)
		if err == nil && h.format == recordVersion {
			top = max(top, h.version)
		}
		return nil
	})
	return top, err
}

// Generation returns the vault's generation: the number of writes (Put,
// Delete, Accept and the format upgrade) committed since it was created,
// as authenticated by the manifest. It only grows, so a value recorded
// outside the file (gridnet vault check --min-generation) detects a
// rollback of the whole file, which the file alone cannot.
func (v *Vault) Generation() uint64 {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if v.man == nil {
		return 0
	}
	return v.man.generation
}

// Accept makes the manifest describe the file as it is now, in one
// transaction: every item that authenticates is listed at its record's
// version (a rolled-back item is accepted at the older version), every
// item that does not is listed at version 0 (Get and Check keep reporting
// it as tampered; Delete removes it), items the file lacks are dropped, and
// the generation moves past every authenticated version. Entries that Put
// could never have written (a name that fails ValidateName, a nested
// bucket) are removed from the file. It is the repair step after Check has
// reported ErrIntegrity and the problems were looked into; it does not
// make a tampered item readable.
func (v *Vault) Accept() error {
	err := v.write("accept", func(b *bolt.Bucket, next *manifest) error {
		next.items = map[string]uint64{}
		var top uint64
		var junk [][]byte
		err := b.ForEach(func(k, rec []byte) error {
			name := string(k)
			if rec == nil || ValidateName(name) != nil {
				junk = append(junk, k)
				return nil
			}
			pt, h, err := openRecord(v.aead, name, rec)
			clear(pt)
			if err == nil && h.format == recordVersion && h.version != 0 {
				next.items[name] = h.version
				top = max(top, h.version)
			} else {
				next.items[name] = 0
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range junk {
			var err error
			if b.Bucket(k) != nil {
				err = b.DeleteBucket(k)
			} else {
				err = b.Delete(k)
			}
			if err != nil {
				return err
			}
		}
		if top >= next.generation {
			if top == math.MaxUint64 {
				return fmt.Errorf("%w: an item version leaves no room for the generation counter", ErrIntegrity)
			}
			next.generation = top + 1
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("vault: accept %s: %w", v.path, withErrno(err))
	}
	return nil
}

// upgrade converts a format 1 vault to format 2 in one transaction: every
// record is re-sealed in the current layout at version 1 (keeping its
// class and time), a record that fails authentication is kept as it is and
// listed at version 0, the manifest is written at generation 1, and the
// header is rewritten as format 2 with the data key rewrapped under the
// same key-encryption key kek (the header version is part of the wrap's
// associated data). A crash leaves the file in format 1, to be upgraded by
// the next Open.
//
// A format 1 header over a file that already holds a manifest or format 2
// records means the header was put back from a copy older than the
// upgrade; that fails with ErrIntegrity rather than being upgraded again.
func (v *Vault) upgrade(h *header, kek []byte, log *slog.Logger) error {
	rnd := rand.Reader
	const gen = 1
	man := newManifest(gen)
	damaged := 0
	err := v.update("upgrade", func(tx *bolt.Tx) error {
		mb := tx.Bucket([]byte(metaBucketName))
		if mb == nil {
			return fmt.Errorf("%w: header bucket missing", ErrCorrupt)
		}
		if mb.Get([]byte(manifestKeyName)) != nil {
			return fmt.Errorf("%w: the header says format 1 but the file holds a format 2 manifest: the header was put back from a copy made before the upgrade", ErrIntegrity)
		}
		b, err := items(tx)
		if err != nil {
			return err
		}
		var names []string
		if err := b.ForEach(func(k, _ []byte) error { names = append(names, string(k)); return nil }); err != nil {
			return err
		}
		for _, name := range names {
			rec := b.Get([]byte(name))
			pt, rh, err := openRecord(v.aead, name, present(rec))
			if err == nil && rh.format == recordVersion {
				clear(pt)
				return fmt.Errorf("%w: the header says format 1 but item %q is a format 2 record: the header was put back from a copy made before the upgrade", ErrIntegrity, name)
			}
			if ValidateName(name) != nil {
				// Put never wrote such a name: leave it out of the
				// manifest (Open reports it, Accept removes it).
				clear(pt)
				damaged++
				continue
			}
			if err != nil {
				man.items[name] = 0
				damaged++
				continue
			}
			sealed, err := sealRecord(v.aead, rnd, name, rh.class, rh.modified, gen, pt)
			clear(pt)
			if err != nil {
				return err
			}
			if err := b.Put([]byte(name), sealed); err != nil {
				return err
			}
			man.items[name] = gen
		}
		nh := *h
		nh.version = formatVersion
		nh.nonce = make([]byte, nonceSize)
		if _, err := io.ReadFull(rnd, nh.nonce); err != nil {
			return fmt.Errorf("reading random nonce: %w", err)
		}
		if err := nh.wrap(kek, v.dataKey); err != nil {
			return err
		}
		if err := mb.Put([]byte(headerKeyName), nh.encode()); err != nil {
			return err
		}
		sealed, err := sealManifest(v.aead, rnd, man)
		if err != nil {
			return err
		}
		return mb.Put([]byte(manifestKeyName), sealed)
	})
	if err != nil {
		return fmt.Errorf("upgrading format 1 to 2: %w", withErrno(err))
	}
	log.Info("vault upgraded from format 1 to format 2: items are now bound to versions listed in a sealed manifest",
		"path", v.path, "items", len(man.items), "unreadable_items", damaged)
	return nil
}
