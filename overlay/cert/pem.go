package cert

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"fmt"
)

// PEM block types, as written by openssl and expected by other tools.
const (
	PEMTypeCertificate = "CERTIFICATE"
	PEMTypeCSR         = "CERTIFICATE REQUEST"
	PEMTypeCSRLegacy   = "NEW CERTIFICATE REQUEST" // accepted on input only
	PEMTypeCRL         = "X509 CRL"
	PEMTypePrivateKey  = "PRIVATE KEY" // PKCS#8
)

// EncodeCertPEM returns c as a PEM CERTIFICATE block.
func EncodeCertPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: PEMTypeCertificate, Bytes: c.Raw})
}

// ParseCertPEM returns the first certificate in b: the first CERTIFICATE
// block of PEM input (other block types are skipped), or b itself parsed
// as DER if b contains no PEM block. It does not verify anything.
func ParseCertPEM(b []byte) (*x509.Certificate, error) {
	certs, err := parseCerts(b, true)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

// ParseCertsPEM returns every certificate in b, e.g. a CA bundle of a
// federation; PEM with at least one CERTIFICATE block, or a single DER
// certificate.
func ParseCertsPEM(b []byte) ([]*x509.Certificate, error) {
	return parseCerts(b, false)
}

// parseCerts implements ParseCertPEM and ParseCertsPEM.
func parseCerts(b []byte, firstOnly bool) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	sawPEM := false
	rest := b
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		sawPEM = true
		if block.Type != PEMTypeCertificate {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate %d: %w: %v", len(out)+1, ErrMalformed, err)
		}
		out = append(out, c)
		if firstOnly {
			break
		}
	}
	if !sawPEM {
		c, err := x509.ParseCertificate(b)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w: %v", ErrMalformed, err)
		}
		return []*x509.Certificate{c}, nil
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("parse certificate: %w: no %s PEM block", ErrMalformed, PEMTypeCertificate)
	}
	return out, nil
}

// EncodeCSRPEM returns request DER as a PEM CERTIFICATE REQUEST block.
func EncodeCSRPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: PEMTypeCSR, Bytes: der})
}

// ParseCSRPEM parses and verifies (see ParseCSR) the first certificate
// request in b, PEM or DER.
func ParseCSRPEM(b []byte) (*CSR, error) {
	der, err := firstBlock(b, PEMTypeCSR, PEMTypeCSRLegacy)
	if err != nil {
		return nil, fmt.Errorf("parse CSR: %w", err)
	}
	return ParseCSR(der)
}

// EncodeCRLPEM returns crl as a PEM X509 CRL block.
func EncodeCRLPEM(crl *x509.RevocationList) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: PEMTypeCRL, Bytes: crl.Raw})
}

// ParseCRLPEM parses the first CRL in b, PEM or DER. It does not check the
// signature; Pool.ApplyCRL does.
func ParseCRLPEM(b []byte) (*x509.RevocationList, error) {
	der, err := firstBlock(b, PEMTypeCRL)
	if err != nil {
		return nil, fmt.Errorf("parse CRL: %w", err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("parse CRL: %w: %v", ErrMalformed, err)
	}
	return crl, nil
}

// EncodeKeyPEM returns key as a PKCS#8 PRIVATE KEY PEM block (the form
// openssl reads). The output is secret.
func EncodeKeyPEM(key ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: PEMTypePrivateKey, Bytes: der}), nil
}

// ParseKeyPEM parses an Ed25519 PKCS#8 private key, PEM or DER.
func ParseKeyPEM(b []byte) (ed25519.PrivateKey, error) {
	der, err := firstBlock(b, PEMTypePrivateKey)
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w: %v", ErrMalformed, err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("parse private key: %w: %T is not Ed25519", ErrMalformed, k)
	}
	return ek, nil
}

// firstBlock returns the bytes of the first PEM block in b with one of the
// given types, or b itself when b contains no PEM block at all (DER).
func firstBlock(b []byte, types ...string) ([]byte, error) {
	sawPEM := false
	rest := b
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			if !sawPEM {
				return b, nil
			}
			return nil, fmt.Errorf("%w: no %s PEM block", ErrMalformed, types[0])
		}
		sawPEM = true
		for _, t := range types {
			if block.Type == t {
				return block.Bytes, nil
			}
		}
	}
}
