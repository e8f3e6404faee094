package policystore

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/mlsgate/mlsgate/label"
	"go.yaml.in/yaml/v3"
)

// ErrApplication marks every error about the content of an application
// file; test with errors.Is.
var ErrApplication = errors.New("bad application")

// FileError is a problem in an application file: the file, the line of the
// offending value (0 when unknown) and what is wrong.
type FileError struct {
	File  string
	Line  int
	Field string // e.g. "servers[1].range"; "" for a YAML syntax error
	Err   error
}

func (e *FileError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":" + strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field + ": ")
	}
	var fe *FieldError
	if errors.As(e.Err, &fe) {
		b.WriteString(fe.Reason)
	} else {
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *FileError) Unwrap() error { return e.Err }

// Is makes every FileError match ErrApplication.
func (e *FileError) Is(target error) bool { return target == ErrApplication }

// MaxFileSize bounds one application file.
const MaxFileSize = 4 << 20

// LoadFile reads and validates one application file.
func LoadFile(path string) (*Application, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > MaxFileSize {
		return nil, &FileError{File: path, Err: fmt.Errorf("file is larger than %d bytes; split it or check that it is an application file", MaxFileSize)}
	}
	return ParseApplication(path, data)
}

// ParseApplication decodes and validates one application from YAML. name is
// used in errors only. Unknown fields are errors, so that a misspelt key
// never silently drops a restriction.
func ParseApplication(name string, data []byte) (*Application, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, &FileError{File: name, Line: yamlErrLine(err), Err: cleanYAMLErr(err)}
	}
	if root.Kind != yaml.DocumentNode || len(root.Content) == 0 {
		return nil, &FileError{File: name, Err: errors.New("empty file: want a YAML mapping with name, type, guest, servers and loadable_from")}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var app Application
	if err := dec.Decode(&app); err != nil {
		fe := &FileError{File: name, Line: yamlErrLine(err), Err: cleanYAMLErr(err)}
		if fe.Line == 0 {
			// A value's own parser (labels, addresses) failed: yaml
			// passes its error on without a position, so find the
			// scalar the error quotes.
			fe.Field, fe.Line = findScalar(root.Content[0], "", quotedInputs(err))
		}
		return nil, fe
	}
	// A second document would be silently ignored: refuse it.
	var extra yaml.Node
	if err := dec.Decode(&extra); err != io.EOF {
		return nil, &FileError{File: name, Line: extra.Line, Err: errors.New("more than one YAML document: put one application per file")}
	}
	if err := app.Validate(); err != nil {
		var fe *FieldError
		if errors.As(err, &fe) {
			return nil, &FileError{File: name, Line: fieldLine(root.Content[0], fe.Field), Field: fe.Field, Err: fe}
		}
		return nil, &FileError{File: name, Err: err}
	}
	return &app, nil
}

var appYAMLLineRE = regexp.MustCompile(`line (\d+)`)

func yamlErrLine(err error) int {
	var te *yaml.TypeError
	msg := err.Error()
	if errors.As(err, &te) && len(te.Errors) > 0 {
		msg = te.Errors[0]
	}
	if m := appYAMLLineRE.FindStringSubmatch(msg); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n
	}
	return 0
}

// cleanYAMLErr drops the "yaml: " prefix and keeps the first of several
// type errors, which carry their own line.
func cleanYAMLErr(err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		msg = te.Errors[0]
		if len(te.Errors) > 1 {
			msg += fmt.Sprintf(" (and %d more)", len(te.Errors)-1)
		}
	}
	msg = yamlLinePrefixRE.ReplaceAllString(msg, "")
	if strings.Contains(msg, "not found in type") {
		msg += "; check the spelling against the fields documented in examples/analyst/analyst.yaml"
	}
	return errors.New(msg)
}

var yamlLinePrefixRE = regexp.MustCompile(`^line \d+: `)

// fieldLine finds the line of a field path such as "servers[1].range" or
// "integrity.analyst_t" in the YAML tree; it falls back to the deepest part
// of the path it can find.
func fieldLine(n *yaml.Node, path string) int {
	line := n.Line
	for _, part := range splitFieldPath(path) {
		if n == nil {
			break
		}
		switch {
		case part.index >= 0:
			if n.Kind != yaml.SequenceNode || part.index >= len(n.Content) {
				return line
			}
			n = n.Content[part.index]
		default:
			if n.Kind != yaml.MappingNode {
				return line
			}
			var next *yaml.Node
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == part.key {
					next = n.Content[i+1]
					line = n.Content[i].Line
					break
				}
			}
			if next == nil {
				return line
			}
			n = next
		}
		line = n.Line
	}
	return line
}

type pathPart struct {
	key   string
	index int
}

func splitFieldPath(path string) []pathPart {
	var parts []pathPart
	for _, seg := range strings.Split(path, ".") {
		key, rest, _ := strings.Cut(seg, "[")
		if key != "" {
			parts = append(parts, pathPart{key: key, index: -1})
		}
		for rest != "" {
			num, after, ok := strings.Cut(rest, "]")
			if !ok {
				break
			}
			if i, err := strconv.Atoi(num); err == nil {
				parts = append(parts, pathPart{index: i})
			}
			rest = strings.TrimPrefix(after, "[")
		}
	}
	return parts
}

// LoadDir loads every *.yaml and *.yml file of dir, sorted by name. It is all
// or nothing: the first bad file is returned as the error and no
// application at all, so that a caller never installs half a directory.
// Two files defining the same application name are an error naming both.
func LoadDir(dir string) ([]*Application, error) {
	var files []string
	for _, pat := range []string{"*.yaml", "*.yml"} {
		m, err := filepath.Glob(filepath.Join(dir, pat))
		if err != nil {
			return nil, err
		}
		files = append(files, m...)
	}
	if len(files) == 0 {
		if _, err := os.Stat(dir); err != nil {
			return nil, fmt.Errorf("application directory: %w", err)
		}
		return nil, fmt.Errorf("application directory %s holds no *.yaml files", dir)
	}
	sort.Strings(files)
	apps := make([]*Application, 0, len(files))
	seen := map[string]string{}
	for _, f := range files {
		app, err := LoadFile(f)
		if err != nil {
			return nil, err
		}
		if prev, dup := seen[app.Name]; dup {
			return nil, &FileError{File: f, Field: "name", Err: fmt.Errorf("application %q is already defined in %s: rename one of them", app.Name, prev)}
		}
		seen[app.Name] = f
		apps = append(apps, app)
	}
	if _, err := NewIndex(apps); err != nil {
		return nil, err
	}
	return apps, nil
}

var quotedRE = regexp.MustCompile(`"((?:[^"\\]|\\.)*)"`)

// quotedInputs lists the texts an error says it could not parse: the input
// of a label error, else every quoted string in the message.
func quotedInputs(err error) []string {
	var se *label.SyntaxError
	var ie *label.InvertedError
	switch {
	case errors.As(err, &se):
		return []string{se.Input}
	case errors.As(err, &ie):
		return []string{ie.Input}
	}
	var out []string
	for _, m := range quotedRE.FindAllStringSubmatch(err.Error(), -1) {
		if s, uerr := strconv.Unquote(`"` + m[1] + `"`); uerr == nil {
			out = append(out, s)
		}
	}
	return out
}

// findScalar returns the path and line of the first scalar, in document
// order, whose value is one of want.
func findScalar(n *yaml.Node, path string, want []string) (string, int) {
	if len(want) == 0 || n == nil {
		return "", 0
	}
	switch n.Kind {
	case yaml.ScalarNode:
		for _, w := range want {
			if n.Value == w {
				return path, n.Line
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			p := n.Content[i].Value
			if path != "" {
				p = path + "." + p
			}
			if f, l := findScalar(n.Content[i+1], p, want); l > 0 {
				return f, l
			}
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			if f, l := findScalar(c, fmt.Sprintf("%s[%d]", path, i), want); l > 0 {
				return f, l
			}
		}
	}
	return "", 0
}
