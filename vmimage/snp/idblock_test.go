package snp

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"
)

func readKey(t *testing.T, name string) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ParsePrivateKeyPEM(readFixture(t, name))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestIDBlockSevSnpMeasureVector is tests/test_id_block.py of
// sev-snp-measure: the ID block of that launch digest with the default
// policy 0x30000 and zero IDs, and the digests of the test keys' public
// halves (what reports carry as ID_KEY_DIGEST and AUTHOR_KEY_DIGEST).
func TestIDBlockSevSnpMeasureVector(t *testing.T) {
	ld, err := base64.StdEncoding.DecodeString("B28FLQi9p6cAqipgjFyqawDrrSl7bWioWkWx5mmlWLZ+G5HShKMB/mPE+gdQRn7t")
	if err != nil {
		t.Fatal(err)
	}
	idKey, authorKey := readKey(t, "id_key_test.pem"), readKey(t, "author_key_test.pem")
	block, auth, err := SignIDBlock([DigestSize]byte(ld), 0x30000, [16]byte{}, [16]byte{}, idKey)
	if err != nil {
		t.Fatal(err)
	}
	const wantBlock = "B28FLQi9p6cAqipgjFyqawDrrSl7bWioWkWx5mmlWLZ+G5HShKMB/mPE+gdQRn7t" +
		"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABAAAAAAAAAAAAAwAAAAAA"
	if got := base64.StdEncoding.EncodeToString(block); got != wantBlock {
		t.Errorf("ID block\n got %s\nwant %s", got, wantBlock)
	}
	if err := AddAuthorKey(auth, authorKey); err != nil {
		t.Fatal(err)
	}
	for _, k := range []struct {
		name string
		key  *ecdsa.PrivateKey
		want string
	}{
		{"id_key_hash", idKey, "hwt+NcU/inLQ0yL3WrKvgmJ5Kq9leWIs5BMcPyHyied8sFYKXjuQs5MuZ07HCcsU"},
		{"author_key", authorKey, "YxEcNLv8Ckk4+aAJvQdJgNgXIyPmFZnJ/TNtqGcySOHcqY0L6PdjdqEGuK/UwKBX"},
	} {
		d, err := KeyDigest(&k.key.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		if got := base64.StdEncoding.EncodeToString(d[:]); got != k.want {
			t.Errorf("%s: %s, want %s", k.name, got, k.want)
		}
	}
	if _, err := VerifyIDBlock(block, auth); err != nil {
		t.Errorf("signed with author key: %v", err)
	}
}

func TestSignIDBlockVerifies(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	digest := [DigestSize]byte{1, 2, 3}
	family := [16]byte{'f'}
	image := [16]byte{'i'}
	block, auth, err := SignIDBlock(digest, 0x30000, family, image, key)
	if err != nil {
		t.Fatal(err)
	}
	if len(block) != IDBlockSize || len(auth) != IDAuthSize {
		t.Fatalf("sizes %d, %d", len(block), len(auth))
	}
	if !bytes.Equal(block[:DigestSize], digest[:]) || block[0x30] != 'f' || block[0x40] != 'i' {
		t.Errorf("ID block fields misplaced: %x", block)
	}
	got, err := VerifyIDBlock(block, auth)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(&key.PublicKey) {
		t.Errorf("ID key parsed back from the auth structure differs from the signing key")
	}

	for _, tc := range []struct {
		name   string
		mutate func(block, auth []byte)
		want   string
	}{
		{"wrong digest", func(b, a []byte) { b[5] ^= 1 }, "ID block signature: does not verify"},
		{"wrong policy", func(b, a []byte) { b[0x58] ^= 1 }, "ID block signature: does not verify"},
		{"wrong signature", func(b, a []byte) { a[0x40] ^= 1 }, "ID block signature: does not verify"},
		{"other key", func(b, a []byte) { a[0x244] ^= 1 }, "ID key"},
		{"version", func(b, a []byte) { b[0x50] = 2 }, "version 2"},
		{"r too wide", func(b, a []byte) { a[0x40+60] = 1 }, "wider than 384 bits"},
		{"author algorithm without key", func(b, a []byte) { a[4] = 1 }, "author key: curve 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, a := bytes.Clone(block), bytes.Clone(auth)
			tc.mutate(b, a)
			_, err := VerifyIDBlock(b, a)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}

	// An author key signs the ID key; tampering with that signature fails.
	author, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := AddAuthorKey(auth, author); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyIDBlock(block, auth); err != nil {
		t.Fatalf("with author key: %v", err)
	}
	auth[0x680] ^= 1
	if _, err := VerifyIDBlock(block, auth); err == nil || !strings.Contains(err.Error(), "by the author key") {
		t.Errorf("tampered author signature: %v", err)
	}
}

func TestSignIDBlockRefuses(t *testing.T) {
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		policy uint64
		key    *ecdsa.PrivateKey
		want   string
	}{
		{"P-256 key", 0x30000, p256, "not an ECDSA P-384 key"},
		{"no key", 0x30000, nil, "not an ECDSA P-384 key"},
		{"reserved bit 17 clear", 0x10000, p384, "policy[17] is reserved"},
		{"reserved high bit", 0x30000 | 1<<40, p384, "guest policy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := SignIDBlock([DigestSize]byte{}, tc.policy, [16]byte{}, [16]byte{}, tc.key)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestParsePrivateKeyPEM(t *testing.T) {
	for _, tc := range []struct {
		name, pem, want string
	}{
		{"not PEM", "hello", "no PEM block"},
		{"certificate", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", `"CERTIFICATE" is not a private key`},
	} {
		if _, err := ParsePrivateKeyPEM([]byte(tc.pem)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
}
