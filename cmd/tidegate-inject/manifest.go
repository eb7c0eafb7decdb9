package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/tidegate/tidegate/deploy/inject"
)

// maxInput bounds what inject and uninject read: far more than any
// manifest set kubectl would apply in one go.
const maxInput = 64 << 20

// document is one YAML document of the input.
type document struct {
	index int    // 1-based, counting only documents with content
	line  int    // 1-based line of its first line in the input
	text  string // as written
	json  []byte // as JSON (after processing: the output)
	obj   string // "Kind namespace/name", for messages
}

func (d *document) where() string {
	if d.obj == "" {
		return fmt.Sprintf("document %d (line %d)", d.index, d.line)
	}
	return fmt.Sprintf("document %d (line %d, %s)", d.index, d.line, d.obj)
}

// manifestCmd is inject (injecting true) and uninject: multi-document YAML
// in, the same documents out, changed where there is a pod template.
// Documents that inject leaves alone are written as they came (comments
// kept); documents with nothing but comments are dropped. If any document
// is bad, nothing is written to stdout and every bad one is named.
func manifestCmd(args []string, e env, injecting bool) error {
	name := "uninject"
	if injecting {
		name = "inject"
	}
	fs := flag.NewFlagSet("tidegate-inject "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	file := fs.String("f", "", "manifests to read, multi-document YAML; - is stdin (required)")
	var pf *paramFlags
	var token *string
	if injecting {
		pf = addParamFlags(fs)
		token = fs.String("token", "", "one fixed drain token for every pod, for reproducible output (default: a random one per pod)")
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *file == "" {
		return usagef("-f is required: a manifest file, or - for stdin")
	}
	var p inject.Params
	if injecting {
		var err error
		if p, err = pf.params(); err != nil {
			return err
		}
		if *token != "" {
			t := *token
			p.Token = func() (string, error) { return t, nil }
		}
	}
	in, err := readInput(*file, e.stdin)
	if err != nil {
		return usageError{err}
	}
	docs := splitDocuments(in)
	bad := 0
	for _, d := range docs {
		if err := processDocument(d, injecting, p, e.stderr); err != nil {
			fmt.Fprintf(e.stderr, "tidegate-inject %s: %v\n", name, err)
			bad++
		}
	}
	if bad > 0 {
		return fmt.Errorf("%d of %d documents are bad (above); nothing written", bad, len(docs))
	}
	if injecting {
		for _, w := range bypassWarnings(docs) {
			fmt.Fprintf(e.stderr, "tidegate-inject: warning: %s\n", w)
		}
	}
	var out bytes.Buffer
	for i, d := range docs {
		if i > 0 {
			out.WriteString("---\n")
		}
		out.WriteString(d.text)
		if !strings.HasSuffix(d.text, "\n") {
			out.WriteByte('\n')
		}
	}
	_, err = e.stdout.Write(out.Bytes())
	return err
}

func readInput(file string, stdin io.Reader) ([]byte, error) {
	var r io.Reader = stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, maxInput+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", file, err)
	}
	if len(b) > maxInput {
		return nil, fmt.Errorf("%s is larger than %d MiB: split it", file, maxInput>>20)
	}
	return b, nil
}

var separator = regexp.MustCompile(`^---(\s|$)`)

// splitDocuments splits a YAML stream at its "---" lines and drops the
// documents with nothing but comments and blank lines. What follows "---"
// on its line (as in "--- {kind: ConfigMap, ...}" or "--- |") is the first
// line of the next document, never dropped.
func splitDocuments(in []byte) []*document {
	var docs []*document
	var cur strings.Builder
	start, content := 1, false
	flush := func() {
		if content {
			docs = append(docs, &document{index: len(docs) + 1, line: start, text: cur.String()})
		}
		cur.Reset()
		content = false
	}
	lines := strings.SplitAfter(string(in), "\n")
	for i, l := range lines {
		if separator.MatchString(l) {
			flush()
			start = i + 2
			rest := strings.TrimLeft(l[len("---"):], " \t")
			if t := strings.TrimSpace(rest); t == "" || strings.HasPrefix(t, "#") {
				continue
			}
			start, l = i+1, rest
		}
		if t := strings.TrimSpace(l); t != "" && !strings.HasPrefix(t, "#") && t != "..." {
			content = true
		}
		cur.WriteString(l)
	}
	flush()
	return docs
}

var yamlLine = regexp.MustCompile(`line (\d+)`)

// processDocument injects (or uninjects) d in place, writing warnings and
// skip reasons to stderr.
func processDocument(d *document, injecting bool, p inject.Params, stderr io.Writer) error {
	j, err := yaml.YAMLToJSON([]byte(d.text))
	if err != nil {
		msg := yamlLine.ReplaceAllStringFunc(err.Error(), func(m string) string {
			n, _ := strconv.Atoi(m[len("line "):])
			return "line " + strconv.Itoa(n+d.line-1)
		})
		return fmt.Errorf("%s: not YAML: %s", d.where(), msg)
	}
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name, Namespace string
		} `json:"metadata"`
	}
	if !bytes.HasPrefix(bytes.TrimSpace(j), []byte("{")) || json.Unmarshal(j, &head) != nil {
		return fmt.Errorf("%s: not a Kubernetes object: want a YAML mapping with apiVersion, kind and metadata", d.where())
	}
	if head.Kind == "" || head.APIVersion == "" {
		return fmt.Errorf("%s: no apiVersion or kind: every document must say what it is", d.where())
	}
	d.obj = head.Kind + " " + head.Metadata.Name
	if head.Metadata.Namespace != "" {
		d.obj = head.Kind + " " + head.Metadata.Namespace + "/" + head.Metadata.Name
	}
	var out []byte
	var changed bool
	if injecting {
		var res inject.Result
		out, res, err = inject.Inject(j, inject.InjectUnlessRefused, p)
		if err != nil {
			return fmt.Errorf("%s: %w", d.where(), err)
		}
		changed = res.Injected
		for _, w := range res.Warnings {
			fmt.Fprintf(stderr, "tidegate-inject: %s: warning: %s\n", d.where(), w)
		}
		if res.Skipped != "" {
			fmt.Fprintf(stderr, "tidegate-inject: %s: not injected: %s\n", d.where(), res.Skipped)
		}
	} else {
		out, changed, err = inject.Uninject(j)
		if err != nil {
			return fmt.Errorf("%s: %w", d.where(), err)
		}
	}
	if !changed {
		d.json = j
		return nil
	}
	y, err := yaml.JSONToYAML(out)
	if err != nil {
		return fmt.Errorf("%s: encoding the result: %w", d.where(), err)
	}
	d.json, d.text = out, string(y)
	return nil
}
