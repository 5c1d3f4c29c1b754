package snp

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha512"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"slices"

	"github.com/google/go-sev-guest/abi"
)

// Sizes of the structures SNP_LAUNCH_FINISH takes (SNP firmware ABI,
// "ID Block" and "ID Authentication Information Structure"); QEMU's
// sev-snp-guest object takes both base64-encoded (id-block=, id-auth=).
const (
	IDBlockSize = 96
	IDAuthSize  = 4096
)

// Layout of the ID block.
const (
	idBlockDigest   = 0x00 // launch digest, 48 bytes
	idBlockFamilyID = 0x30 // 16 bytes
	idBlockImageID  = 0x40 // 16 bytes
	idBlockVersion  = 0x50 // u32, must be 1
	idBlockGuestSVN = 0x54 // u32
	idBlockPolicy   = 0x58 // u64, must equal the launch policy
)

// Layout of the ID authentication information.
const (
	idAuthIDKeyAlgo     = 0x000 // u32
	idAuthAuthorKeyAlgo = 0x004 // u32
	idAuthBlockSig      = 0x040 // signature of the ID block by the ID key
	idAuthIDKey         = 0x240 // public ID key
	idAuthIDKeySig      = 0x680 // signature of the ID key by the author key
	idAuthAuthorKey     = 0x880 // public author key
)

// AMD's formats for P-384 keys and signatures: integers little-endian,
// zero-padded to 72 bytes.
const (
	algoECDSAP384SHA384 = 1
	curveP384           = 2
	amdIntSize          = 72
	publicKeySize       = 0x404 // curve u32, qx, qy, reserved
	signatureSize       = 0x200 // r, s, reserved
	p384Size            = 48
)

// SignIDBlock builds the ID block of a launch (its expected measurement,
// guest policy, family and image IDs, version 1, guest SVN 0) and the ID
// authentication structure that signs it with key, an ECDSA P-384 key. With
// them QEMU's launch fails unless the guest measures as digest, and the
// guest's reports carry the key's digest (ID_KEY_DIGEST). The author key
// fields stay empty; AddAuthorKey fills them.
func SignIDBlock(digest [DigestSize]byte, policy uint64, familyID, imageID [16]byte, key *ecdsa.PrivateKey) (idBlock, idAuth []byte, err error) {
	if err := checkPolicy(policy); err != nil {
		return nil, nil, err
	}
	idBlock = make([]byte, IDBlockSize)
	copy(idBlock[idBlockDigest:], digest[:])
	copy(idBlock[idBlockFamilyID:], familyID[:])
	copy(idBlock[idBlockImageID:], imageID[:])
	binary.LittleEndian.PutUint32(idBlock[idBlockVersion:], 1)
	binary.LittleEndian.PutUint32(idBlock[idBlockGuestSVN:], 0)
	binary.LittleEndian.PutUint64(idBlock[idBlockPolicy:], policy)

	idAuth = make([]byte, IDAuthSize)
	binary.LittleEndian.PutUint32(idAuth[idAuthIDKeyAlgo:], algoECDSAP384SHA384)
	if err := putPublicKey(idAuth[idAuthIDKey:], publicKey(key)); err != nil {
		return nil, nil, fmt.Errorf("ID key: %w", err)
	}
	if err := sign(idAuth[idAuthBlockSig:], key, idBlock); err != nil {
		return nil, nil, fmt.Errorf("sign ID block: %w", err)
	}
	return idBlock, idAuth, nil
}

// AddAuthorKey signs the ID key held in idAuth with an author key and puts
// the author's public key beside it. QEMU must then be told
// author-key-enabled=on, and reports carry AUTHOR_KEY_DIGEST.
func AddAuthorKey(idAuth []byte, author *ecdsa.PrivateKey) error {
	if len(idAuth) != IDAuthSize {
		return fmt.Errorf("ID auth is %d bytes, want %d", len(idAuth), IDAuthSize)
	}
	binary.LittleEndian.PutUint32(idAuth[idAuthAuthorKeyAlgo:], algoECDSAP384SHA384)
	if err := putPublicKey(idAuth[idAuthAuthorKey:], publicKey(author)); err != nil {
		return fmt.Errorf("author key: %w", err)
	}
	if err := sign(idAuth[idAuthIDKeySig:], author, idAuth[idAuthIDKey:idAuthIDKey+publicKeySize]); err != nil {
		return fmt.Errorf("sign ID key: %w", err)
	}
	return nil
}

// VerifyIDBlock checks what the firmware checks at launch: the ID block's
// version, its signature by the ID key in idAuth and, if idAuth carries an
// author key, the ID key's signature by it. It returns the ID key.
func VerifyIDBlock(idBlock, idAuth []byte) (*ecdsa.PublicKey, error) {
	if len(idBlock) != IDBlockSize || len(idAuth) != IDAuthSize {
		return nil, fmt.Errorf("ID block and auth are %d and %d bytes, want %d and %d", len(idBlock), len(idAuth), IDBlockSize, IDAuthSize)
	}
	if v := binary.LittleEndian.Uint32(idBlock[idBlockVersion:]); v != 1 {
		return nil, fmt.Errorf("ID block version %d, want 1", v)
	}
	if a := binary.LittleEndian.Uint32(idAuth[idAuthIDKeyAlgo:]); a != algoECDSAP384SHA384 {
		return nil, fmt.Errorf("ID key algorithm %d, want %d (ECDSA P-384 with SHA-384)", a, algoECDSAP384SHA384)
	}
	idKey, err := ParsePublicKey(idAuth[idAuthIDKey : idAuthIDKey+publicKeySize])
	if err != nil {
		return nil, fmt.Errorf("ID key: %w", err)
	}
	if err := verify(idKey, idBlock, idAuth[idAuthBlockSig:idAuthBlockSig+signatureSize]); err != nil {
		return nil, fmt.Errorf("ID block signature: %w", err)
	}
	switch a := binary.LittleEndian.Uint32(idAuth[idAuthAuthorKeyAlgo:]); a {
	case 0:
	case algoECDSAP384SHA384:
		author, err := ParsePublicKey(idAuth[idAuthAuthorKey : idAuthAuthorKey+publicKeySize])
		if err != nil {
			return nil, fmt.Errorf("author key: %w", err)
		}
		if err := verify(author, idAuth[idAuthIDKey:idAuthIDKey+publicKeySize], idAuth[idAuthIDKeySig:idAuthIDKeySig+signatureSize]); err != nil {
			return nil, fmt.Errorf("ID key signature by the author key: %w", err)
		}
	default:
		return nil, fmt.Errorf("author key algorithm %d, want %d (ECDSA P-384 with SHA-384)", a, algoECDSAP384SHA384)
	}
	return idKey, nil
}

// KeyDigest is the SHA-384 of a public key in AMD's format: what reports
// carry as ID_KEY_DIGEST and AUTHOR_KEY_DIGEST.
func KeyDigest(pub *ecdsa.PublicKey) ([DigestSize]byte, error) {
	b := make([]byte, publicKeySize)
	if err := putPublicKey(b, pub); err != nil {
		return [DigestSize]byte{}, err
	}
	return sha512.Sum384(b), nil
}

// ParsePublicKey reads a P-384 public key in AMD's format (curve 2, then
// x and y little-endian in 72 bytes each).
func ParsePublicKey(b []byte) (*ecdsa.PublicKey, error) {
	if len(b) < 4+2*amdIntSize {
		return nil, fmt.Errorf("public key is %d bytes, want %d", len(b), publicKeySize)
	}
	if c := binary.LittleEndian.Uint32(b); c != curveP384 {
		return nil, fmt.Errorf("curve %d, want %d (P-384)", c, curveP384)
	}
	qx, err := fromAMDInt(b[4 : 4+amdIntSize])
	if err != nil {
		return nil, fmt.Errorf("x: %w", err)
	}
	qy, err := fromAMDInt(b[4+amdIntSize : 4+2*amdIntSize])
	if err != nil {
		return nil, fmt.Errorf("y: %w", err)
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P384(), append(append([]byte{4}, qx...), qy...))
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	return pub, nil
}

// ParsePrivateKeyPEM reads a P-384 private key from PEM: SEC 1 ("EC
// PRIVATE KEY", what `openssl ecparam -genkey` writes) or PKCS #8.
func ParsePrivateKeyPEM(b []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	var key any
	var err error
	switch block.Type {
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key", block.Type)
	}
	if err != nil {
		return nil, err
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P384() {
		return nil, fmt.Errorf("key is a %T, SNP wants an ECDSA P-384 key (openssl ecparam -name secp384r1 -genkey -noout)", key)
	}
	return ec, nil
}

// checkPolicy refuses a guest policy the firmware rejects at launch
// (reserved bits), using go-sev-guest's reading of the ABI.
func checkPolicy(policy uint64) error {
	if _, err := abi.ParseSnpPolicy(policy); err != nil {
		return fmt.Errorf("guest policy %#x: %w", policy, err)
	}
	return nil
}

func putPublicKey(dst []byte, key *ecdsa.PublicKey) error {
	if key == nil || key.Curve != elliptic.P384() {
		return errors.New("not an ECDSA P-384 key")
	}
	raw, err := key.Bytes() // 0x04 || x || y, big-endian
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint32(dst, curveP384)
	putAMDInt(dst[4:4+amdIntSize], raw[1:1+p384Size])
	putAMDInt(dst[4+amdIntSize:4+2*amdIntSize], raw[1+p384Size:])
	return nil
}

// publicKey is the public half of key, nil for a nil key.
func publicKey(key *ecdsa.PrivateKey) *ecdsa.PublicKey {
	if key == nil {
		return nil
	}
	return &key.PublicKey
}

func sign(dst []byte, key *ecdsa.PrivateKey, msg []byte) error {
	if key == nil || key.Curve != elliptic.P384() {
		return errors.New("not an ECDSA P-384 key")
	}
	h := sha512.Sum384(msg)
	r, s, err := ecdsa.Sign(rand.Reader, key, h[:])
	if err != nil {
		return err
	}
	putAMDInt(dst[0:amdIntSize], r.FillBytes(make([]byte, p384Size)))
	putAMDInt(dst[amdIntSize:2*amdIntSize], s.FillBytes(make([]byte, p384Size)))
	return nil
}

func verify(key *ecdsa.PublicKey, msg, sig []byte) error {
	r, err := fromAMDInt(sig[0:amdIntSize])
	if err != nil {
		return fmt.Errorf("r: %w", err)
	}
	s, err := fromAMDInt(sig[amdIntSize : 2*amdIntSize])
	if err != nil {
		return fmt.Errorf("s: %w", err)
	}
	h := sha512.Sum384(msg)
	if !ecdsa.Verify(key, h[:], new(big.Int).SetBytes(r), new(big.Int).SetBytes(s)) {
		return errors.New("does not verify")
	}
	return nil
}

// putAMDInt writes a 48-byte big-endian integer little-endian into a
// 72-byte field (the rest stays zero).
func putAMDInt(dst, bigEndian []byte) {
	le := slices.Clone(bigEndian)
	slices.Reverse(le)
	copy(dst, le)
}

// fromAMDInt reads a 72-byte little-endian field back into a 48-byte
// big-endian integer, refusing bits beyond P-384's size.
func fromAMDInt(field []byte) ([]byte, error) {
	for _, c := range field[p384Size:] {
		if c != 0 {
			return nil, errors.New("integer wider than 384 bits")
		}
	}
	be := slices.Clone(field[:p384Size])
	slices.Reverse(be)
	return be, nil
}
