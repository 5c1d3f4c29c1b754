package initdata

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/contrast-vm/contrast/policy"
)

// kataVector is a document and digest from Kata Containers' own tests:
// kata-containers/kata-containers, src/runtime/pkg/oci/utils_test.go
// (the annotation at line 939, the document at 942, the digest at 954),
// at commit 7c6ba40c54ea29b459b4997cff948caaba4e658b:
// https://github.com/kata-containers/kata-containers/blob/7c6ba40c54ea29b459b4997cff948caaba4e658b/src/runtime/pkg/oci/utils_test.go#L939-L954
// Kata's runtime puts this digest, cut to 32 bytes, into SNP HOSTDATA
// (src/runtime/pkg/govmm/qemu/qemu.go, adjustProperLength). The annotation
// was written by another gzip than Go's (its header carries a time).
var kataVector = struct {
	annotation, document, digest string
}{
	annotation: "H4sIAFlC92cAAytLLSrOzM9TsFVQMtAz1DNQ4krMSc8vyizJyAWJFWckGpmaKXFFpySWJMZyKSUm6pXk5+YoAeXU1dW5QJhLKTklA4toQX5OZnKlXlFqej6yBABS/5JkcQAAAA==",
	document: `version = "0.1.0"
algorithm = "sha256"
[data]
"aa.toml" = '''
'''

"cdh.toml" = '''
'''

"policy.rego" = '''
'''
`,
	digest: "c6694bb7a29d6f37ec72a15582e004b9f3142159682db8509a304407419a49e5",
}

func TestKataVector(t *testing.T) {
	raw, err := DecodeAnnotation(kataVector.annotation)
	if err != nil {
		t.Fatal(err)
	}
	if string(raw) != kataVector.document {
		t.Fatalf("decoded document:\n%q\nwant\n%q", raw, kataVector.document)
	}
	doc, err := Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(doc.Digest()); got != kataVector.digest {
		t.Errorf("digest %s, want Kata's %s", got, kataVector.digest)
	}
	if doc.HostDataHex() != kataVector.digest {
		t.Errorf("HOSTDATA %s, want the whole SHA-256 %s", doc.HostDataHex(), kataVector.digest)
	}
	if doc.Algorithm != "sha256" || doc.Version != "0.1.0" || len(doc.Data) != 3 {
		t.Errorf("parsed %+v", doc)
	}
	// Its policy.rego is empty: a pod may not run under it.
	if _, err := ParsePod(raw); err == nil || !strings.Contains(err.Error(), `"policy.rego" is empty`) {
		t.Errorf("ParsePod of a document with an empty policy: %v", err)
	}
}

// sha384Document's digests were computed with coreutils, not Go:
// `sha384sum` and `sha512sum` of the file holding exactly these bytes
// (coreutils 9.1, Debian 12), on 2026-12-07.
const sha384Document = `algorithm = "sha384"
version = "0.1.0"

[data]
"aa.toml" = '''
[token_configs]
'''
"policy.rego" = '''
package agent_policy

default ExecProcess := false
'''
`

const (
	sha384Sum = "57ffd42893caa742b39d9ce4d08cec39220fadca0c12520a3a02e616d72e6a8da4a8d7bb3f555e87b4623941515a36f6"
	// sha512Prefix is the first 32 bytes (64 hex digits) of `sha512sum`
	// of sha384Document with "sha384" replaced by "sha512".
	sha512Prefix = "e348a32a10c158d8b6a1a969c53bfa9bb183616d56680cb0cf3b0dfd8a8445fa"
)

func TestLongDigestsAreCut(t *testing.T) {
	doc, err := ParsePod([]byte(sha384Document))
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(doc.Digest()); got != sha384Sum {
		t.Errorf("SHA-384 digest %s, want %s", got, sha384Sum)
	}
	// The spec, Kata, the CoCo attestation agent and Trustee cut a longer
	// digest to the field's 32 bytes.
	if got := doc.HostDataHex(); got != sha384Sum[:64] {
		t.Errorf("HOSTDATA %s, want the digest's first 32 bytes %s", got, sha384Sum[:64])
	}
	if got := string(doc.Policy()); got != "package agent_policy\n\ndefault ExecProcess := false\n" {
		t.Errorf("policy %q", got)
	}
	if doc.Data["aa.toml"] != "[token_configs]\n" {
		t.Errorf("aa.toml %q", doc.Data["aa.toml"])
	}
	doc512, err := ParsePod([]byte(strings.Replace(sha384Document, "sha384", "sha512", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if got := doc512.HostDataHex(); got != sha512Prefix {
		t.Errorf("SHA-512 HOSTDATA %s, want %s", got, sha512Prefix)
	}
}

func TestParseErrors(t *testing.T) {
	good := "algorithm = \"sha256\"\nversion = \"0.1.0\"\n\n[data]\n\"policy.rego\" = '''\npackage agent_policy\n'''\n"
	for _, tc := range []struct {
		name, doc, want string
	}{
		{"empty", "", "is empty"},
		{"not TOML", "algorithm = sha256\n", "not valid TOML: line 1"},
		{"not UTF-8", "algorithm = \"\xff\"\n", "not valid UTF-8"},
		{"no algorithm", strings.Replace(good, "algorithm = \"sha256\"\n", "", 1), "names no algorithm"},
		{"unknown algorithm", strings.Replace(good, "sha256", "md5", 1), `unsupported algorithm "md5"`},
		{"IANA spelling", strings.Replace(good, "sha256", "sha-256", 1), `unsupported algorithm "sha-256"`},
		{"no version", strings.Replace(good, "version = \"0.1.0\"\n", "", 1), "names no version"},
		{"bad version", strings.Replace(good, "0.1.0", "0.2.0", 1), `unsupported version "0.2.0"`},
		{"version not a string", strings.Replace(good, `"0.1.0"`, "1", 1), "version"},
		{"no data", "algorithm = \"sha256\"\nversion = \"0.1.0\"\n", "no [data] table"},
		{"no policy", strings.Replace(good, "policy.rego", "aa.toml", 1), `no "policy.rego" entry in [data] (entries: "aa.toml")`},
		{"empty policy", strings.Replace(good, "package agent_policy\n", "", 1), `"policy.rego" is empty`},
		{"data entry not a string", good + "extra = 1\n", "a table of strings"},
		{"unknown top-level key", "other = \"x\"\n" + good, "unknown keys other"},
		{"data not strings", strings.Replace(good, "'''\npackage agent_policy\n'''", "1", 1), "policy.rego"},
		{"duplicate key", good + "\"policy.rego\" = \"x\"\n", "not valid TOML"},
		{"too large", good + "# " + strings.Repeat("x", MaxSize) + "\n", "more than the"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParsePod([]byte(tc.doc))
			if err == nil {
				t.Fatalf("ParsePod accepted\n%s", tc.doc)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
		})
	}
	if _, err := ParsePod([]byte(good)); err != nil {
		t.Fatal(err)
	}
	big := strings.Replace(good, "package agent_policy\n", "package agent_policy\n#"+strings.Repeat("x", policy.MaxModuleSize)+"\n", 1)
	if _, err := ParsePod([]byte(big)); err == nil || !strings.Contains(err.Error(), "bound on a policy module") {
		t.Errorf("ParsePod of a policy beyond the module bound: %v", err)
	}
}

func TestWrap(t *testing.T) {
	module := []byte("package agent_policy\n\ndefault ExecProcess := false\n")
	raw, err := Wrap(module)
	if err != nil {
		t.Fatal(err)
	}
	// The exact bytes docs/ and the package comment promise.
	want := "algorithm = \"sha256\"\nversion = \"0.1.0\"\n\n[data]\n\"policy.rego\" = '''\npackage agent_policy\n\ndefault ExecProcess := false\n'''\n"
	if string(raw) != want {
		t.Fatalf("Wrap:\n%q\nwant\n%q", raw, want)
	}
	doc, err := ParsePod(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(doc.Policy(), module) || len(doc.Data) != 1 {
		t.Errorf("wrapped document gives back %q (%d entries)", doc.Policy(), len(doc.Data))
	}

	// Modules a literal string cannot hold go into an escaped basic string
	// and still come back byte for byte.
	for _, m := range []string{
		"package p\nx := \"'''\"\n",
		"package p\r\nx := 1\r\n",
		"package p\nx := \"a\\\\b\\\"c\" # \x01\x7f\n",
		"package p\n# ends in a quote'",
		"package p\n# \"\"\" and \\\n",
		"\npackage p",
	} {
		raw, err := Wrap([]byte(m))
		if err != nil {
			t.Errorf("Wrap(%q): %v", m, err)
			continue
		}
		doc, err := ParsePod(raw)
		if err != nil || string(doc.Policy()) != m {
			t.Errorf("Wrap(%q) = %q, which gives back %v", m, raw, err)
		}
		again, _ := Wrap([]byte(m))
		if !bytes.Equal(raw, again) {
			t.Errorf("Wrap(%q) is not deterministic", m)
		}
	}
	if _, err := Wrap(nil); err == nil {
		t.Error("Wrap of an empty module succeeded")
	}
	if _, err := Wrap([]byte("package p\n\xff")); err == nil {
		t.Error("Wrap of a module that is not UTF-8 succeeded")
	}
}

func TestAnnotationRoundTrip(t *testing.T) {
	raw := []byte(sha384Document)
	value, err := EncodeAnnotation(raw)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := EncodeAnnotation(raw)
	if value != again {
		t.Error("EncodeAnnotation is not deterministic")
	}
	got, err := DecodeAnnotation(value)
	if err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("DecodeAnnotation(EncodeAnnotation(doc)) = %q, %v", got, err)
	}
}

func gzipped(t testing.TB, parts ...[]byte) string {
	t.Helper()
	var b bytes.Buffer
	for _, p := range parts {
		zw := gzip.NewWriter(&b)
		zw.Write(p)
		zw.Close()
	}
	return base64.StdEncoding.EncodeToString(b.Bytes())
}

func TestDecodeAnnotationErrors(t *testing.T) {
	doc := []byte(sha384Document)
	good := gzipped(t, doc)
	raw, _ := base64.StdEncoding.DecodeString(good)
	truncated := base64.StdEncoding.EncodeToString(raw[:len(raw)-4])
	corrupt := bytes.Clone(raw)
	corrupt[len(corrupt)-8] ^= 0xff // the CRC-32
	// 64 MiB of zeros compress to about 64 KiB: a bomb.
	var bomb bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&bomb, gzip.BestCompression)
	zw.Write(make([]byte, 64<<20))
	zw.Close()
	for _, tc := range []struct {
		name, value, want string
	}{
		{"empty", "", "is empty"},
		{"not base64", "!!!!", "not valid base64: bad input at offset 0"},
		{"not gzip", base64.StdEncoding.EncodeToString(doc), "not gzip-compressed"},
		{"truncated", truncated, "decompress"},
		{"bad checksum", base64.StdEncoding.EncodeToString(corrupt), "decompress"},
		{"two members", gzipped(t, doc, doc), "follow the gzip stream"},
		{"trailing bytes", base64.StdEncoding.EncodeToString(append(bytes.Clone(raw), 0)), "follow the gzip stream"},
		{"bomb", base64.StdEncoding.EncodeToString(bomb.Bytes()), "decompresses to more than"},
		{"too long", strings.Repeat("A", 4*MaxSize), "characters of base64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeAnnotation(tc.value)
			if err == nil {
				t.Fatal("DecodeAnnotation accepted it")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), Annotation) {
				t.Errorf("error %q does not name %s and say %q", err, Annotation, tc.want)
			}
		})
	}
}

func TestFromAnnotations(t *testing.T) {
	module := []byte("package agent_policy\n")
	wrapped, err := Wrap(module)
	if err != nil {
		t.Fatal(err)
	}
	kata, _ := EncodeAnnotation([]byte(sha384Document))
	bare := policy.EncodeAnnotation(module)

	doc, key, err := FromAnnotations(map[string]string{Annotation: kata})
	if err != nil || key != Annotation || doc.HostDataHex() != sha384Sum[:64] {
		t.Errorf("initdata annotation: %v, %q, %v", doc, key, err)
	}
	for _, k := range []string{policy.Annotation, policy.AnnotationKata} {
		doc, key, err := FromAnnotations(map[string]string{k: bare})
		if err != nil || key != k || !bytes.Equal(doc.Raw(), wrapped) || !bytes.Equal(doc.Policy(), module) {
			t.Errorf("bare policy under %s: %v, %q, %v", k, doc, key, err)
		}
		_, _, err = FromAnnotations(map[string]string{Annotation: kata, k: bare})
		if err == nil || !strings.Contains(err.Error(), "both set") || !strings.Contains(err.Error(), k) {
			t.Errorf("initdata and %s together: %v", k, err)
		}
	}
	if doc, key, err := FromAnnotations(map[string]string{"other": "x"}); doc != nil || key != "" || err != nil {
		t.Errorf("no policy: %v, %q, %v", doc, key, err)
	}
	noPolicy, _ := EncodeAnnotation([]byte(kataVector.document))
	if _, _, err := FromAnnotations(map[string]string{Annotation: noPolicy}); err == nil || !strings.Contains(err.Error(), Annotation) {
		t.Errorf("document with an empty policy: %v", err)
	}
	if _, _, err := FromAnnotations(map[string]string{Annotation: ""}); err == nil {
		t.Error("empty initdata annotation accepted")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(sha384Document))
	f.Add([]byte(kataVector.document))
	f.Add([]byte("algorithm = \"sha256\"\nversion = \"0.1.0\"\n[data]\n\"policy.rego\" = \"\"\"\nx\\u0001\"\"\"\n"))
	f.Add([]byte("algorithm = \"sha512\"\nversion = \"0.1.0\"\n[data.x]\ny = 1\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		doc, err := Parse(raw)
		if err != nil {
			return
		}
		if !bytes.Equal(doc.Raw(), raw) {
			t.Fatal("Raw differs from the input")
		}
		h, _ := newHash(doc.Algorithm)
		h.Write(raw)
		if !bytes.Equal(doc.Digest(), h.Sum(nil)) {
			t.Fatal("digest is not over the raw bytes")
		}
		hd := doc.HostData()
		if !bytes.Equal(hd[:], doc.Digest()[:HostDataSize]) {
			t.Fatal("HOSTDATA is not the digest's first 32 bytes")
		}
		if pod, err := ParsePod(raw); err == nil {
			// A policy taken out and wrapped comes back byte for byte.
			wrapped, err := Wrap(pod.Policy())
			if err != nil {
				t.Fatalf("Wrap of a parsed policy %q: %v", pod.Policy(), err)
			}
			again, err := ParsePod(wrapped)
			if err != nil || !bytes.Equal(again.Policy(), pod.Policy()) {
				t.Fatalf("wrapped policy does not come back: %v", err)
			}
		}
	})
}

func FuzzDecodeAnnotation(f *testing.F) {
	f.Add(kataVector.annotation)
	f.Add(gzipped(f, []byte(sha384Document)))
	f.Add(gzipped(f, []byte("x"), []byte("y")))
	f.Add("H4sIAAAAAAAA/w==")
	// A bomb: 4 MiB of zeros, twice MaxSize, in about 4 KiB.
	f.Add(gzipped(f, make([]byte, 2*MaxSize)))
	f.Fuzz(func(t *testing.T, value string) {
		doc, err := DecodeAnnotation(value)
		if err != nil {
			return
		}
		if len(doc) > MaxSize {
			t.Fatalf("decoded %d bytes, more than MaxSize", len(doc))
		}
		// Whatever decodes re-encodes to a value that decodes the same.
		again, err := EncodeAnnotation(doc)
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeAnnotation(again)
		if err != nil || !bytes.Equal(back, doc) {
			t.Fatalf("round trip: %v", err)
		}
	})
}
