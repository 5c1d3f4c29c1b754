package ocilayout

import (
	"fmt"
	"hash"
	"io"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// VerifyReader passes r's bytes through and ends them with a *BlobError
// instead of io.EOF when they are not desc.Size bytes with digest
// desc.Digest; where names the store in that error. It reads at most one
// byte past desc.Size. desc.Digest must be valid (a Layout's descriptors
// are).
func VerifyReader(r io.Reader, desc ocispec.Descriptor, where string) io.Reader {
	return &verifier{
		r:     io.LimitReader(r, desc.Size+1),
		desc:  desc,
		where: where,
		hash:  desc.Digest.Algorithm().Hash(),
	}
}

type verifier struct {
	r     io.Reader
	desc  ocispec.Descriptor
	where string
	hash  hash.Hash
	n     int64
	// end is what every Read returns once the stream has ended.
	end error
}

func (v *verifier) Read(p []byte) (int, error) {
	if v.end != nil {
		return 0, v.end
	}
	n, err := v.r.Read(p)
	v.hash.Write(p[:n])
	v.n += int64(n)
	if v.n > v.desc.Size {
		v.end = v.fail("", fmt.Errorf("longer than the %d bytes its descriptor says", v.desc.Size))
		return 0, v.end
	}
	if err == io.EOF {
		err = v.check()
	}
	if err != nil {
		v.end = err
	}
	return n, err
}

// check returns io.EOF for the bytes the descriptor names, a *BlobError
// otherwise.
func (v *verifier) check() error {
	if v.n != v.desc.Size {
		return v.fail("", fmt.Errorf("%d bytes, its descriptor says %d", v.n, v.desc.Size))
	}
	if got := digest.NewDigest(v.desc.Digest.Algorithm(), v.hash); got != v.desc.Digest {
		return v.fail(got, fmt.Errorf("has digest %s, its descriptor says %s", got, v.desc.Digest))
	}
	return io.EOF
}

func (v *verifier) fail(got digest.Digest, err error) error {
	return &BlobError{Where: v.where, Blob: v.desc.Digest, Got: got, Err: err}
}
