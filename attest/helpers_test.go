package attest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha512"
)

func sha384(b []byte) [48]byte { return sha512.Sum384(b) }

func rsaKey(bits int) (*rsa.PrivateKey, error) { return rsa.GenerateKey(rand.Reader, bits) }
