package shim

import (
	"context"
	"crypto/sha512"
	"strings"
	"testing"

	"github.com/contrast-vm/contrast/policy"
	"github.com/contrast-vm/contrast/policy/initdata"
)

// testInitdata is module wrapped into the minimal initdata document, as a
// pod with a bare policy annotation launches.
func testInitdata(t testing.TB, module []byte) *initdata.Document {
	t.Helper()
	doc, err := initdata.WrapDocument(module)
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// kataStyleDocument is an initdata document as a Kata user writes it by
// hand: SHA-384, an attestation agent's configuration beside the policy.
const kataStyleDocument = `algorithm = "sha384"
version = "0.1.0"

[data]
"aa.toml" = '''
[token_configs]
'''
"policy.rego" = '''
package agent_policy
'''
`

func TestPodInitdata(t *testing.T) {
	ctx := context.Background()
	cfg := DefaultConfig()
	kata, err := initdata.EncodeAnnotation([]byte(kataStyleDocument))
	if err != nil {
		t.Fatal(err)
	}
	module := []byte("package agent_policy\n\ndefault ExecProcess := false\n")

	t.Run("kata annotation", func(t *testing.T) {
		doc, source, err := podInitdata(ctx, cfg, "p1", map[string]string{initdata.Annotation: kata})
		if err != nil {
			t.Fatal(err)
		}
		// HOSTDATA: the SHA-384 of the document's bytes, first 32 bytes.
		sum := sha512.Sum384([]byte(kataStyleDocument))
		if hd := doc.HostData(); source != initdata.Annotation || string(hd[:]) != string(sum[:32]) || string(doc.Raw()) != kataStyleDocument {
			t.Errorf("podInitdata = %x from %q, want %x from %s", hd, source, sum[:32], initdata.Annotation)
		}
	})
	t.Run("bare policy", func(t *testing.T) {
		doc, source, err := podInitdata(ctx, cfg, "p1", map[string]string{policy.Annotation: policy.EncodeAnnotation(module)})
		if err != nil {
			t.Fatal(err)
		}
		if want := testInitdata(t, module); source != policy.Annotation || string(doc.Raw()) != string(want.Raw()) || string(doc.Policy()) != string(module) {
			t.Errorf("podInitdata = %q from %q, want the wrapped module", doc.Raw(), source)
		}
	})
	t.Run("both", func(t *testing.T) {
		_, _, err := podInitdata(ctx, cfg, "p1", map[string]string{initdata.Annotation: kata, policy.Annotation: policy.EncodeAnnotation(module)})
		if err == nil || !strings.Contains(err.Error(), "both set") || !strings.Contains(err.Error(), "p1") {
			t.Errorf("both annotations: %v", err)
		}
	})
	t.Run("malformed", func(t *testing.T) {
		bad, _ := initdata.EncodeAnnotation([]byte(strings.Replace(kataStyleDocument, "sha384", "md5", 1)))
		_, _, err := podInitdata(ctx, cfg, "p1", map[string]string{initdata.Annotation: bad})
		if err == nil || !strings.Contains(err.Error(), `unsupported algorithm "md5"`) || !strings.Contains(err.Error(), initdata.Annotation) {
			t.Errorf("malformed document: %v", err)
		}
	})
	t.Run("none, deny-all", func(t *testing.T) {
		_, _, err := podInitdata(ctx, cfg, "p1", nil)
		if err == nil || !strings.Contains(err.Error(), "carries no policy") {
			t.Errorf("no policy under deny-all: %v", err)
		}
	})
	t.Run("none, allow-all", func(t *testing.T) {
		c := cfg
		c.Policy.Default = DefaultPolicyAllowAll
		doc, source, err := podInitdata(ctx, c, "p1", nil)
		if err != nil || source != "default:allow-all" || string(doc.Policy()) != string(policy.AllowAll()) {
			t.Errorf("no policy under allow-all: %v, %q", err, source)
		}
	})
}
