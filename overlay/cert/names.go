package cert

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Name rules. Node names and domains are lowercase DNS names so that they
// can appear unchanged in the spiffe:// URI, in overlay DNS (NAME.DOMAIN)
// and in X.509 name constraints; lowercase-only means there is exactly one
// spelling of each name, so string comparison is identity comparison.
//
//   - Node name: one RFC 1123 label: 1..63 characters from [a-z0-9-],
//     starting and ending with a letter or digit ("web-1").
//   - Domain: 1..253 characters, one or more such labels joined by '.',
//     no trailing dot ("corp.example", "lab").
//   - Group and attribute key: 1..63 characters from [a-z0-9._:-], starting
//     with a letter or digit ("admins", "role:db", "os.version").
//   - Attribute value: 0..255 bytes of valid UTF-8 without control
//     characters.
//   - CA name: 1..64 bytes (the X.520 upper bound for a common name) of
//     valid UTF-8 without control characters.
const (
	// MaxLabelLen is the longest DNS label (RFC 1035), and so the longest
	// node name, group and attribute key.
	MaxLabelLen = 63
	// MaxDomainLen is the longest DNS name in text form (RFC 1035).
	MaxDomainLen = 253
	// MaxCANameLen is ub-common-name from X.520.
	MaxCANameLen = 64
	// MaxAttributeValueLen bounds attribute values, which are short posture
	// claims, not documents.
	MaxAttributeValueLen = 255
	// MaxGroups bounds the groups of one node; certificates are exchanged
	// on every handshake and should stay small.
	MaxGroups = 64
	// MaxAttributes bounds the attributes of one node, for the same reason.
	MaxAttributes = 64
	// MaxAddresses bounds the overlay addresses of one node.
	MaxAddresses = 32
)

// ErrInvalidName is wrapped by every name, group, attribute and address
// validation failure of the issuing side.
var ErrInvalidName = errors.New("invalid name")

// isLowerAlnum reports whether b is in [a-z0-9].
func isLowerAlnum(b byte) bool {
	return 'a' <= b && b <= 'z' || '0' <= b && b <= '9'
}

// validLabel reports whether s is a lowercase RFC 1123 label.
func validLabel(s string) bool {
	if len(s) == 0 || len(s) > MaxLabelLen {
		return false
	}
	if !isLowerAlnum(s[0]) || !isLowerAlnum(s[len(s)-1]) {
		return false
	}
	for i := 1; i < len(s)-1; i++ {
		if !isLowerAlnum(s[i]) && s[i] != '-' {
			return false
		}
	}
	return true
}

// ValidateName checks a node name (see the name rules above).
func ValidateName(name string) error {
	if !validLabel(name) {
		return fmt.Errorf("%w: node name %q: want 1-%d of [a-z0-9-], starting and ending with a letter or digit", ErrInvalidName, name, MaxLabelLen)
	}
	return nil
}

// ValidateDomain checks a governance domain (see the name rules above).
func ValidateDomain(domain string) error {
	if len(domain) == 0 || len(domain) > MaxDomainLen {
		return fmt.Errorf("%w: domain %q: length must be 1-%d", ErrInvalidName, domain, MaxDomainLen)
	}
	for label := range strings.SplitSeq(domain, ".") {
		if !validLabel(label) {
			return fmt.Errorf("%w: domain %q: label %q: want 1-%d of [a-z0-9-], starting and ending with a letter or digit", ErrInvalidName, domain, label, MaxLabelLen)
		}
	}
	return nil
}

// validToken reports whether s is a group name or attribute key.
func validToken(s string) bool {
	if len(s) == 0 || len(s) > MaxLabelLen || !isLowerAlnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case isLowerAlnum(c), c == '.', c == '_', c == ':', c == '-':
		default:
			return false
		}
	}
	return true
}

// ValidateGroup checks a group name (see the name rules above).
func ValidateGroup(group string) error {
	if !validToken(group) {
		return fmt.Errorf("%w: group %q: want 1-%d of [a-z0-9._:-], starting with a letter or digit", ErrInvalidName, group, MaxLabelLen)
	}
	return nil
}

// ValidateAttributeKey checks an attribute key (see the name rules above).
func ValidateAttributeKey(key string) error {
	if !validToken(key) {
		return fmt.Errorf("%w: attribute key %q: want 1-%d of [a-z0-9._:-], starting with a letter or digit", ErrInvalidName, key, MaxLabelLen)
	}
	return nil
}

// printableText reports whether s is valid UTF-8 without control characters.
func printableText(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// ValidateAttributeValue checks an attribute value (see the name rules
// above).
func ValidateAttributeValue(v string) error {
	if len(v) > MaxAttributeValueLen || !printableText(v) {
		return fmt.Errorf("%w: attribute value %q: want at most %d bytes of UTF-8 without control characters", ErrInvalidName, v, MaxAttributeValueLen)
	}
	return nil
}

// ValidateCAName checks a CA name (see the name rules above).
func ValidateCAName(name string) error {
	if len(name) == 0 || len(name) > MaxCANameLen || !printableText(name) {
		return fmt.Errorf("%w: CA name %q: want 1-%d bytes of UTF-8 without control characters", ErrInvalidName, name, MaxCANameLen)
	}
	return nil
}

// normalizeGroups validates groups and returns them sorted and
// de-duplicated (nil when empty).
func normalizeGroups(groups []string) ([]string, error) {
	if len(groups) == 0 {
		return nil, nil
	}
	out := slices.Clone(groups)
	slices.Sort(out)
	out = slices.Compact(out)
	if len(out) > MaxGroups {
		return nil, fmt.Errorf("%w: %d groups, at most %d", ErrInvalidName, len(out), MaxGroups)
	}
	for _, g := range out {
		if err := ValidateGroup(g); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// validateAttributes checks every attribute key and value.
func validateAttributes(attrs map[string]string) error {
	if len(attrs) > MaxAttributes {
		return fmt.Errorf("%w: %d attributes, at most %d", ErrInvalidName, len(attrs), MaxAttributes)
	}
	for k, v := range attrs {
		if err := ValidateAttributeKey(k); err != nil {
			return err
		}
		if err := ValidateAttributeValue(v); err != nil {
			return fmt.Errorf("attribute %q: %w", k, err)
		}
	}
	return nil
}

// validateAddress checks one overlay address: a valid prefix whose address
// is a plain, specific unicast-capable IPv4 or IPv6 address. IPv4-mapped
// IPv6 addresses are refused because X.509 would silently turn them into
// IPv4 (netip.Prefix never carries a zone). The address keeps its
// host bits (100.64.0.2/10 is the node 100.64.0.2 in 100.64.0.0/10).
func validateAddress(p netip.Prefix) error {
	a := p.Addr()
	switch {
	case !p.IsValid():
		return fmt.Errorf("%w: address %v: invalid prefix", ErrInvalidName, p)
	case a.Is4In6():
		return fmt.Errorf("%w: address %v: IPv4-mapped IPv6 is not allowed, use the IPv4 form", ErrInvalidName, p)
	case a.IsUnspecified(), a.IsMulticast(), a.IsLoopback():
		return fmt.Errorf("%w: address %v: not a node address", ErrInvalidName, p)
	}
	return nil
}

// validateAddresses checks every address and refuses duplicates.
func validateAddresses(addrs []netip.Prefix) error {
	if len(addrs) > MaxAddresses {
		return fmt.Errorf("%w: %d addresses, at most %d", ErrInvalidName, len(addrs), MaxAddresses)
	}
	seen := make(map[netip.Addr]struct{}, len(addrs))
	for _, p := range addrs {
		if err := validateAddress(p); err != nil {
			return err
		}
		if _, dup := seen[p.Addr()]; dup {
			return fmt.Errorf("%w: address %v listed twice", ErrInvalidName, p.Addr())
		}
		seen[p.Addr()] = struct{}{}
	}
	return nil
}

// sortedKeys returns the keys of m in ascending order.
func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
