package generate

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"gopkg.in/yaml.v3"
)

// chunk is one YAML document of the input as bytes. Documents that the
// generator does not change are written back byte for byte; a changed one is
// re-encoded from its node tree, after its prefix.
type chunk struct {
	// prefix is what precedes the document's content: comment and
	// directive lines and a bare "---" marker line.
	prefix []byte
	// body is the document itself, up to the next document.
	body []byte
	// endMarker: the body ends the document with a "..." line.
	endMarker bool
}

func (c chunk) bytes() []byte { return append(append([]byte{}, c.prefix...), c.body...) }

// splitDocuments splits a YAML stream at its document markers. A line
// starting with "---" or "..." (followed by nothing or a blank) cannot be
// inside a document's content in YAML, so splitting at them is exact.
// Comments before a document's "---" stay with that document.
func splitDocuments(in []byte) []chunk {
	var chunks []chunk
	var cur chunk
	seenMarker, seenContent := false, false
	flush := func() {
		if len(cur.prefix) > 0 || len(cur.body) > 0 {
			chunks = append(chunks, cur)
		}
		cur, seenMarker, seenContent = chunk{}, false, false
	}
	for len(in) > 0 {
		end := bytes.IndexByte(in, '\n')
		if end < 0 {
			end = len(in)
		} else {
			end++
		}
		line := in[:end]
		in = in[end:]
		switch {
		case isMarker(line, "---"):
			if seenMarker || seenContent {
				flush()
			}
			seenMarker = true
			if len(bytes.TrimSpace(stripComment(line[3:]))) == 0 {
				cur.prefix = append(cur.prefix, line...)
			} else {
				// "--- value": the marker line is part of the content.
				cur.body = append(cur.body, line...)
				seenContent = true
			}
		case isMarker(line, "..."):
			cur.body = append(cur.body, line...)
			cur.endMarker = true
			flush()
		case !seenContent && isPrefixLine(line):
			if len(cur.body) > 0 {
				cur.body = append(cur.body, line...)
			} else {
				cur.prefix = append(cur.prefix, line...)
			}
		default:
			cur.body = append(cur.body, line...)
			seenContent = true
		}
	}
	flush()
	return chunks
}

func isMarker(line []byte, marker string) bool {
	if !bytes.HasPrefix(line, []byte(marker)) {
		return false
	}
	rest := line[len(marker):]
	return len(rest) == 0 || rest[0] == ' ' || rest[0] == '\t' || rest[0] == '\n' || rest[0] == '\r'
}

// isPrefixLine: blank, a comment or a directive, before a document's content.
func isPrefixLine(line []byte) bool {
	t := bytes.TrimLeft(line, " \t")
	return len(bytes.TrimSpace(t)) == 0 || t[0] == '#' || line[0] == '%'
}

func stripComment(b []byte) []byte {
	if i := bytes.IndexByte(b, '#'); i >= 0 {
		return b[:i]
	}
	return b
}

// parseChunk parses a chunk's body into a document node; nil when the chunk
// holds no document (only comments, or an empty document).
func parseChunk(c chunk) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(c.body))
	var doc yaml.Node
	if err := safeDecode(dec, &doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, err
	}
	var extra yaml.Node
	if err := safeDecode(dec, &extra); !errors.Is(err, io.EOF) {
		// The split found one document; anything else is a parse error in
		// disguise (yaml.v3 starts a document at stray content).
		if err == nil {
			err = errors.New("unexpected content after the document")
		}
		return nil, err
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, nil
	}
	if root := doc.Content[0]; root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil, nil
	}
	return &doc, nil
}

// safeDecode turns a panic inside the YAML parser into an error: the input
// is the user's, and a parser bug must not take the tool down.
func safeDecode(dec *yaml.Decoder, v *yaml.Node) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("YAML parser failed: %v", r)
		}
	}()
	return dec.Decode(v)
}

// encodeDocument writes a document node back as YAML.
func encodeDocument(doc *yaml.Node) ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// describe names a document in messages: "document 2 (Deployment web)".
func describe(n int, kind, name string) string {
	switch {
	case kind == "":
		return fmt.Sprintf("document %d", n)
	case name == "":
		return fmt.Sprintf("document %d (%s)", n, kind)
	default:
		return fmt.Sprintf("document %d (%s %s)", n, kind, name)
	}
}

// Node tree helpers. Kubernetes YAML is a tree of mappings and sequences;
// the generator edits it in place so comments and key order survive.

// mappingValue returns the value node of key in mapping m, or nil.
func mappingValue(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// lookupPath follows keys through nested mappings.
func lookupPath(m *yaml.Node, keys ...string) *yaml.Node {
	for _, k := range keys {
		m = mappingValue(m, k)
		if m == nil {
			return nil
		}
	}
	return m
}

// ensureMapping returns the mapping under key in m, creating it (or
// replacing a null) when absent. An alias there is refused: editing it would
// edit every place that shares it.
func ensureMapping(m *yaml.Node, path []string, key string) (*yaml.Node, error) {
	where := strings.Join(append(append([]string{}, path...), key), ".")
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value != key {
			continue
		}
		v := m.Content[i+1]
		switch {
		case v.Kind == yaml.AliasNode:
			return nil, fmt.Errorf("%s is a YAML alias; write it out so the policy annotation can be added to this pod alone", where)
		case v.Kind == yaml.MappingNode:
			v.Style &^= yaml.FlowStyle
			return v, nil
		case v.Kind == yaml.ScalarNode && v.Tag == "!!null":
			*v = yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", HeadComment: v.HeadComment, LineComment: v.LineComment, FootComment: v.FootComment}
			return v, nil
		default:
			return nil, fmt.Errorf("%s is not a mapping", where)
		}
	}
	v := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: key}, v)
	// A flow mapping ({a: b}) that grows a nested mapping becomes a block
	// one, so the long annotation gets a line of its own.
	m.Style &^= yaml.FlowStyle
	return v, nil
}

// setString sets key in mapping m to a string, keeping the key's place.
func setString(m *yaml.Node, key, value string) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			v := m.Content[i+1]
			*v = yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: value, HeadComment: v.HeadComment, LineComment: v.LineComment, FootComment: v.FootComment}
			return
		}
	}
	m.Content = append(m.Content,
		&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: key},
		&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: value})
}

// deleteKey removes key from mapping m and reports whether it was there.
func deleteKey(m *yaml.Node, key string) bool {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content = append(m.Content[:i], m.Content[i+2:]...)
			return true
		}
	}
	return false
}
