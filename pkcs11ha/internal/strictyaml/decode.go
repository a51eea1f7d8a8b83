package strictyaml

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"

	"go.yaml.in/yaml/v3"
)

// ErrEmpty is returned for a file with no document.
var ErrEmpty = errors.New("empty config")

// Decode decodes b strictly into v. On failure it returns the dotted path of the key the decoder
// complains about ("policy.spill_wait", "devices[0].name"), or "" when it cannot tell.
func Decode(b []byte, v any) (field string, err error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return "(file)", ErrEmpty
		}
		// Name the field: find the key on the line the decoder complains about.
		var root yaml.Node
		if yaml.Unmarshal(b, &root) == nil {
			if m := lineRE.FindStringSubmatch(err.Error()); m != nil {
				line, _ := strconv.Atoi(m[1])
				return fieldAtLine(&root, line, ""), err
			}
		}
		return "", err
	}
	return "", nil
}

var lineRE = regexp.MustCompile(`line (\d+)`)

// fieldAtLine returns the dotted path of the key on line.
func fieldAtLine(n *yaml.Node, line int, path string) string {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			if f := fieldAtLine(c, line, path); f != "" {
				return f
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if path != "" {
				p = path + "." + k.Value
			}
			if f := fieldAtLine(v, line, p); f != "" {
				return f
			}
			if k.Line == line {
				return p
			}
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			if f := fieldAtLine(c, line, fmt.Sprintf("%s[%d]", path, i)); f != "" {
				return f
			}
		}
	}
	return ""
}
