// Package initdata is the Confidential Containers initdata document
// (trustee kbs/docs/initdata.md, version 0.1.0) that carries a pod's policy:
// a TOML document
//
//	algorithm = "sha256"
//	version = "0.1.0"
//
//	[data]
//	"policy.rego" = '''
//	package agent_policy
//	...'''
//
// whose digest, under its own algorithm over the document's exact bytes,
// is the SEV-SNP HOSTDATA the pod VM is launched with. HOSTDATA holds 32
// bytes: a SHA-384 or SHA-512 digest is cut to its first 32, as the spec,
// Kata's runtime, the CoCo attestation agent and Trustee's verifier all do.
// So Trustee, given the same document, checks our pods as it checks Kata's.
//
// The document travels in the pod annotation Annotation, encoded as Kata
// encodes it: standard base64 of the gzip-compressed document.
package initdata

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/BurntSushi/toml"

	"github.com/contrast-vm/contrast/policy"
)

// Annotation is Kata's pod annotation for an initdata document.
const Annotation = "io.katacontainers.config.hypervisor.cc_init_data"

// Version is the one version of the format the spec defines.
const Version = "0.1.0"

// PolicyKey is the entry of [data] that holds the Rego policy.
const PolicyKey = "policy.rego"

// HostDataSize is the size of SEV-SNP HOSTDATA.
const HostDataSize = 32

// MaxSize bounds a document: twice the bound on a policy module, so that a
// largest policy fits with its escapes and the other entries beside it.
// Kubernetes caps a pod's annotations at 256 KiB together, so no real pod
// comes near it; the bound keeps a hostile document from costing more.
const MaxSize = 2 * policy.MaxModuleSize

// Algorithms are the digest algorithms a document may name, as Kata and
// Trustee spell them.
var Algorithms = []string{"sha256", "sha384", "sha512"}

func newHash(algorithm string) (hash.Hash, bool) {
	switch algorithm {
	case "sha256":
		return sha256.New(), true
	case "sha384":
		return sha512.New384(), true
	case "sha512":
		return sha512.New(), true
	}
	return nil, false
}

// Document is a parsed initdata document. Its digest is over Raw, never a
// re-serialisation.
type Document struct {
	raw       []byte
	Algorithm string
	Version   string
	// Data are the document's entries by key.
	Data   map[string]string
	digest []byte
}

// fields is the document's schema. Pointers tell a missing key from an
// empty one.
type fields struct {
	Algorithm *string            `toml:"algorithm"`
	Version   *string            `toml:"version"`
	Data      *map[string]string `toml:"data"`
}

// Parse reads an initdata document strictly, as the spec defines it: valid
// UTF-8 TOML of at most MaxSize bytes with exactly the keys algorithm (one
// of Algorithms), version (Version) and the table data of strings. What a
// pod needs beyond that, ParsePod checks.
func Parse(raw []byte) (*Document, error) {
	if len(raw) == 0 {
		return nil, errors.New("initdata document is empty")
	}
	if len(raw) > MaxSize {
		return nil, fmt.Errorf("initdata document is %d bytes, more than the %d-byte bound", len(raw), MaxSize)
	}
	if !utf8.Valid(raw) {
		return nil, errors.New("initdata document is not valid UTF-8 (TOML is text)")
	}
	var f fields
	md, err := toml.Decode(string(raw), &f)
	if err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			return nil, fmt.Errorf("initdata document is not valid TOML: line %d: %s", perr.Position.Line, perr.Message)
		}
		return nil, fmt.Errorf("initdata document: %w (algorithm and version are strings, [data] a table of strings)", err)
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		keys := make([]string, len(undecoded))
		for i, k := range undecoded {
			keys[i] = k.String()
		}
		return nil, fmt.Errorf("initdata document has unknown keys %s: version %s defines only algorithm, version and the table data", strings.Join(keys, ", "), Version)
	}
	switch {
	case f.Algorithm == nil:
		return nil, fmt.Errorf("initdata document names no algorithm (want one of %s)", strings.Join(Algorithms, ", "))
	case f.Version == nil:
		return nil, fmt.Errorf("initdata document names no version (want %q)", Version)
	case f.Data == nil:
		return nil, fmt.Errorf("initdata document has no [data] table (it must hold %q)", PolicyKey)
	}
	h, ok := newHash(*f.Algorithm)
	if !ok {
		return nil, fmt.Errorf("initdata document: unsupported algorithm %q (want one of %s)", *f.Algorithm, strings.Join(Algorithms, ", "))
	}
	if *f.Version != Version {
		return nil, fmt.Errorf("initdata document: unsupported version %q (want %q)", *f.Version, Version)
	}
	h.Write(raw)
	return &Document{
		raw:       bytes.Clone(raw),
		Algorithm: *f.Algorithm,
		Version:   *f.Version,
		Data:      *f.Data,
		digest:    h.Sum(nil),
	}, nil
}

// ParsePod is Parse for a pod's document, which must carry its policy: a
// non-empty policy.rego of at most policy.MaxModuleSize bytes. A pod
// without one is refused, never run under a default.
func ParsePod(raw []byte) (*Document, error) {
	d, err := Parse(raw)
	if err != nil {
		return nil, err
	}
	module, ok := d.Data[PolicyKey]
	switch {
	case !ok:
		return nil, fmt.Errorf("initdata document has no %q entry in [data] (entries: %s): the pod's policy must be in it", PolicyKey, keyList(d.Data))
	case module == "":
		return nil, fmt.Errorf("initdata document: %q is empty", PolicyKey)
	case len(module) > policy.MaxModuleSize:
		return nil, fmt.Errorf("initdata document: %q is %d bytes, more than the %d-byte bound on a policy module", PolicyKey, len(module), policy.MaxModuleSize)
	}
	return d, nil
}

func keyList(data map[string]string) string {
	if len(data) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(data))
	for k := range data {
		keys = append(keys, fmt.Sprintf("%q", k))
	}
	sort.Strings(keys)
	return strings.Join(keys, ", ")
}

// Raw returns the document's exact bytes, which its digest covers.
func (d *Document) Raw() []byte { return bytes.Clone(d.raw) }

// Policy returns the Rego module of the document's policy.rego.
func (d *Document) Policy() []byte { return []byte(d.Data[PolicyKey]) }

// Digest returns the document's digest under its algorithm (32, 48 or 64
// bytes).
func (d *Document) Digest() []byte { return bytes.Clone(d.digest) }

// HostData returns the SEV-SNP HOSTDATA that binds the document: its
// digest cut to 32 bytes (all of a SHA-256).
func (d *Document) HostData() [HostDataSize]byte {
	var hd [HostDataSize]byte
	copy(hd[:], d.digest)
	return hd
}

// HostDataHex is HostData in lower-case hex.
func (d *Document) HostDataHex() string {
	hd := d.HostData()
	return hex.EncodeToString(hd[:])
}

// Wrap returns the minimal document that carries a bare policy module:
// SHA-256, version 0.1.0, and policy.rego alone, written byte for byte as
//
//	algorithm = "sha256"\n
//	version = "0.1.0"\n
//	\n
//	[data]\n
//	"policy.rego" = '''\n
//	<module>'''\n
//
// (TOML drops the newline right after the opening quotes, so the value is
// exactly the module). A module that a literal string cannot hold as it is
// (it contains three apostrophes in a row or a control character other
// than tab and newline, or ends in an apostrophe) goes into a multi-line basic string instead, """\n<module>""",
// with \ and " escaped as \\ and \", and other control characters as
// \uXXXX. The same module always gives the same bytes, so a verifier
// recomputes HOSTDATA from the policy alone.
func Wrap(module []byte) ([]byte, error) {
	doc, err := WrapDocument(module)
	if err != nil {
		return nil, err
	}
	return doc.Raw(), nil
}

// WrapDocument is Wrap's document, parsed.
func WrapDocument(module []byte) (*Document, error) {
	if len(module) == 0 {
		return nil, errors.New("wrap policy into initdata: the policy module is empty")
	}
	if !utf8.Valid(module) {
		return nil, errors.New("wrap policy into initdata: the policy module is not valid UTF-8")
	}
	var b bytes.Buffer
	b.WriteString("algorithm = \"sha256\"\nversion = \"" + Version + "\"\n\n[data]\n\"" + PolicyKey + "\" = ")
	if literalSafe(module) {
		b.WriteString("'''\n")
		b.Write(module)
		b.WriteString("'''\n")
	} else {
		b.WriteString("\"\"\"\n")
		writeEscaped(&b, module)
		b.WriteString("\"\"\"\n")
	}
	doc, err := ParsePod(b.Bytes())
	if err != nil {
		return nil, fmt.Errorf("wrap policy into initdata: %w", err)
	}
	// A TOML reader that normalised anything would make the agent
	// evaluate other bytes than the module: refuse rather than bind them.
	if !bytes.Equal(doc.Policy(), module) {
		return nil, errors.New("wrap policy into initdata: the document does not give back the module byte for byte")
	}
	return doc, nil
}

// literalSafe reports whether a TOML multi-line literal string holds s as
// it is.
func literalSafe(s []byte) bool {
	if bytes.Contains(s, []byte("'''")) || s[len(s)-1] == '\'' {
		return false
	}
	for _, c := range s {
		if (c < 0x20 && c != '\t' && c != '\n') || c == 0x7f {
			return false
		}
	}
	return true
}

func writeEscaped(b *bytes.Buffer, s []byte) {
	for _, c := range s {
		switch {
		case c == '\\':
			b.WriteString(`\\`)
		case c == '"':
			b.WriteString(`\"`)
		case c == '\n' || c == '\t':
			b.WriteByte(c)
		case c < 0x20 || c == 0x7f:
			fmt.Fprintf(b, `\u%04X`, c)
		default:
			b.WriteByte(c)
		}
	}
}
