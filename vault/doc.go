// Package vault is gridnet's encrypted secret store: node and CA private
// keys, certificates, confidential state and user files, kept in one
// embedded bbolt database file whose every value is sealed.
//
// # Cryptography
//
// Each vault has a random 32-byte data key. Items are sealed with
// XChaCha20-Poly1305 under the data key with a fresh random 24-byte nonce
// per write. The data key is itself sealed ("wrapped") with
// XChaCha20-Poly1305 under a key-encryption key (KEK), which is either
// Argon2id(passphrase, random 16-byte salt) or the 32 bytes of a key file
// used directly. Changing the passphrase or switching to a key file
// (Rekey) re-wraps the data key; items are not re-encrypted.
//
// Secrets never reach the disk in clear, temporary files included (the
// package writes none; bbolt writes pages in place). The file is created
// with mode 0600. Item names, classes, sizes and modification times are
// stored in clear (authenticated, see below): do not put secrets in names.
//
// # File format (version 2)
//
// A bbolt (format 2) file with two top-level buckets:
//
//	"gridnet-vault"  key "header": the vault header
//	                 key "manifest": the sealed manifest
//	"items"          key = item name (UTF-8), value = sealed record
//
// Header (integers big endian):
//
//	magic "GNVAULT\x00" (8) | version u16 = 2 | kdf u8
//	kdf = 1 (Argon2id): time u32 | memory KiB u32 | threads u8 | salt (16)
//	kdf = 2 (raw key):  nothing
//	nonce (24) | wrapped data key (32 + 16 tag)
//
// The wrap's associated data is "gridnet-vault data-key\x00" followed by
// every header byte before the nonce, so the version, KDF kind, parameters
// and salt are authenticated. A wrong key and a modified header both fail
// the unwrap and are reported as ErrWrongKey.
//
// Item record:
//
//	layout u8 = 2 | class length u8 | class | mtime i64 (Unix ns)
//	| item version u64 | nonce (24) | ciphertext | tag (16)
//
// The record's associated data is
//
//	"gridnet-vault item\x00" | name length u16 | name | record bytes before the nonce
//
// binding the name, class, mtime and version to the ciphertext: a record
// moved to another name, or a changed class, time or version, fails with
// ErrTampered. List reads the clear prefix without decrypting, so what it
// reports is authenticated only when the item is read (Get, Check).
//
// # Integrity of the whole vault
//
// Sealing each value on its own cannot notice an older sealed copy of an
// item put back, a record deleted, or a deleted item's record restored:
// each of those copies is authentic. The manifest can. It is
//
//	layout u8 = 1 | generation u64 | nonce (24) | sealed body | tag (16)
//	body: count u32 | count x (name length u16 | name | version u64)
//
// sealed with the data key, with "gridnet-vault manifest\x00", the layout
// byte and the generation as associated data; names are strictly
// ascending and no version exceeds the generation. The generation counts
// every committed write (Put, Delete, Accept, the upgrade); a write stores
// its record at version = the new generation, so a version is never
// reused, not even by a name deleted and written again. Each Put or Delete
// writes the record and the re-sealed manifest in the same bbolt
// transaction: both change or neither (the cost is rewriting the manifest,
// about 11 bytes plus the name per item, on every write).
//
// Open authenticates the manifest and compares it with the items by their
// clear prefix, decrypting only a record whose version differs; a record
// that then authenticates at another version, an item the manifest lists
// but the file lacks, an item the manifest does not list, and a missing or
// unusable manifest each fail Open with an *IntegrityError (ErrIntegrity)
// naming the item. A record that fails authentication is not an integrity
// problem: Open succeeds and Get reports ErrTampered for that item only,
// as before. Get and Check authenticate the record first and then compare
// its version. Options.AllowIntegrityErrors opens such a vault anyway for
// Check and Accept (the repair step: the manifest is rewritten to what the
// file holds).
//
// What this cannot detect: a rollback of the whole file (header,
// manifest and items together) to an earlier copy is a consistent earlier
// vault. Only state kept outside the file can tell; Generation reports the
// counter so a caller can record it elsewhere and compare later.
//
// # Upgrading format 1
//
// Format 1 had header version 1 and records without an item version, and
// no manifest. Open upgrades such a file in one transaction: every record
// is re-sealed in layout 2 at version 1 (class and time kept), a record
// that fails authentication is kept as it was and listed at version 0
// (reading it keeps failing with ErrTampered), the manifest is written at
// generation 1, and the header is rewritten as version 2 with the data key
// rewrapped under the same key-encryption key. A crash leaves format 1, to
// be upgraded by the next Open; Options.Logger gets one line per upgrade.
// In a format 2 vault a layout 1 record is an older copy and is refused;
// a version 1 header over a file holding a manifest or layout 2 records
// (the header put back from before the upgrade) fails with ErrIntegrity.
// Builds from before format 2 refuse the upgraded file ("unsupported vault
// format version 2").

// # Key derivation parameters and bounds
//
// New passphrase vaults use Argon2id t=3, m=128 MiB, p=4
// (DefaultKDFParams): about 0.4 s for an Open in a fresh process on the
// 2-core reference machine, 0.3 s for repeated opens in one process; see
// the constants in kdf.go for the measurements behind the choice. The parameters live in the file
// and are checked before deriving anything, on Open as well as on Create:
//
//	time     [MinArgonTime=2,  MaxArgonTime=10]
//	memory   [MinArgonMemoryKiB=19 MiB, MaxArgonMemoryKiB=1 GiB], >= 8 KiB/thread
//	threads  [1, 16]
//	time*memory <= MaxArgonWork (4 GiB-passes)
//
// Costs above the maximum are refused with ErrKDFParams, so a hostile file
// cannot make Open burn minutes or exhaust memory (like age refusing
// scrypt work factors above 2^22). Costs below the minimum are refused
// too, unless Options.InsecureWeakKDF is set: that test-only switch lowers
// the minimum to an absolute floor (time 1, 64 KiB) on Create, Rekey and
// Open alike. InsecureTestOptions bundles it with the floor parameters;
// a vault made that way is refused by every production Open.
//
// # Opening defensively
//
// bbolt trusts its file: garbage can make it fault, loop or allocate
// without bound. Open therefore takes the exclusive flock itself, then
// reads the file with ReadAt and validates what bbolt would touch (meta
// pages and checksums, page size, every reachable page's bounds, type,
// element offsets and key order, bucket nesting, cycles, the freelist),
// extracts and decodes the header, checks the KDF bounds and unwraps the
// data key, and only then lets bbolt map the file. This costs one
// sequential read of the live pages per Open. bbolt calls are also run
// with faults turned into panics and recovered as ErrCorrupt.
//
// # Locking and durability
//
// One process at a time: the file carries an exclusive flock for the
// Vault's lifetime. Open waits Options.LockTimeout (default 1 s) and then
// fails with a *LockError (ErrLocked) naming the holder's pid and command,
// found in /proc/locks. Every Put, Delete and Rekey is one fsynced bbolt
// transaction (with the manifest's update for Put and Delete): after Put
// returns the item survives a crash, and a failed write (disk full: the
// error wraps ENOSPC, EFBIG or EDQUOT) leaves all earlier items intact.
//
// # Memory hygiene
//
// Keys, KEKs and the data key are zeroed when no longer needed (best
// effort: Go may copy memory, and the cipher keeps an internal copy of the
// data key until garbage collected). Key.Destroy zeroes a key's secret.
package vault
