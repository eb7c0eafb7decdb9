package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// This file is the HTTP/1.1 wire format of the fast path (fast.go): message
// heads parsed in place, without copying or allocating, and chunked bodies
// re-framed on the way through. It is strict by design. A request head it
// does not fully understand is not an error: the connection goes to
// net/http, which gives the canonical answer (400, 431, ...). A response
// head from the app that it cannot parse is a 502.

// h1field is one header field line; both slices point into the read buffer.
type h1field struct{ name, value []byte }

// h1head is a parsed message head. Its slices point into the buffer it was
// parsed from and are valid until that buffer is read past.
type h1head struct {
	method, target []byte // request line
	status         int    // status line
	reason         []byte
	minor          byte // HTTP/1.<minor>
	fields         []h1field
}

// maxFields bounds the fields of a head on the fast path; a head with more
// goes to net/http (requests) or is refused (responses).
const maxFields = 128

var errBareLF = errors.New("line ends in a bare LF")

// scanHead returns the size of the message head at the start of b, through
// its blank line, or 0 if b does not hold a complete head yet. Every line
// must end in CRLF; a bare LF, or a blank line first, is errBareLF.
func scanHead(b []byte) (int, error) {
	start := 0
	for {
		i := bytes.IndexByte(b[start:], '\n')
		if i < 0 {
			return 0, nil
		}
		end := start + i
		if end == 0 || b[end-1] != '\r' {
			return 0, errBareLF
		}
		if end-1 == start { // an empty line
			if start == 0 {
				return 0, errBareLF
			}
			return end + 1, nil
		}
		start = end + 1
	}
}

// byteSet returns the set of ASCII letters, digits and the bytes of extra.
func byteSet(extra string) (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range extra {
		t[c] = true
	}
	return t
}

// tchar marks the bytes allowed in a token (RFC 9110 §5.6.2).
var tchar = byteSet("!#$%&'*+-.^_`|~")

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !tchar[c] {
			return false
		}
	}
	return true
}

// parseRequestHead parses head, a complete request head from scanHead, into
// h. It reports false for anything but an origin-form HTTP/1.1 request with
// well-formed fields: such a request is left to net/http.
func parseRequestHead(head []byte, h *h1head) bool {
	line, rest, ok := cutLine(head)
	if !ok {
		return false
	}
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 || sp > 32 {
		return false
	}
	h.method = line[:sp]
	if !isToken(h.method) {
		return false
	}
	line = line[sp+1:]
	sp = bytes.IndexByte(line, ' ')
	if sp <= 0 || line[0] != '/' {
		return false
	}
	h.target = line[:sp]
	if !plainTarget(h.target) {
		return false
	}
	if string(line[sp+1:]) != "HTTP/1.1" {
		return false
	}
	h.minor = 1
	h.status, h.reason = 0, nil
	return parseFields(rest, h) == nil
}

// parseResponseHead parses head, a complete response head from scanHead,
// into h.
func parseResponseHead(head []byte, h *h1head) error {
	line, rest, ok := cutLine(head)
	if !ok {
		return errors.New("malformed status line")
	}
	if len(line) < 12 || string(line[:7]) != "HTTP/1." || (line[7] != '0' && line[7] != '1') || line[8] != ' ' ||
		(len(line) > 12 && line[12] != ' ') {
		return fmt.Errorf("malformed status line %q", clip(line))
	}
	h.minor = line[7] - '0'
	code := 0
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return fmt.Errorf("malformed status code in %q", clip(line))
		}
		code = code*10 + int(c-'0')
	}
	if code < 100 {
		return fmt.Errorf("malformed status code in %q", clip(line))
	}
	h.status = code
	h.reason = nil
	if len(line) > 13 {
		h.reason = line[13:]
		for _, c := range h.reason {
			if (c < ' ' && c != '\t') || c == 0x7f {
				return fmt.Errorf("control byte in the reason phrase of %q", clip(line))
			}
		}
	}
	h.method, h.target = nil, nil
	return parseFields(rest, h)
}

func clip(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

// cutLine splits the first CRLF-terminated line off b.
func cutLine(b []byte) (line, rest []byte, ok bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 1 || b[i-1] != '\r' {
		return nil, nil, false
	}
	return b[:i-1], b[i+1:], true
}

// parseFields parses field lines up to the blank line into h.fields.
func parseFields(b []byte, h *h1head) error {
	h.fields = h.fields[:0]
	for {
		line, rest, ok := cutLine(b)
		if !ok {
			return errors.New("field line without CRLF")
		}
		if len(line) == 0 {
			return nil
		}
		b = rest
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return fmt.Errorf("malformed field line %q", clip(line))
		}
		name := line[:colon]
		if !isToken(name) { // also refuses obs-fold and space before the colon
			return fmt.Errorf("malformed field name %q", clip(name))
		}
		value := trimOWS(line[colon+1:])
		if !validFieldValue(value) {
			return fmt.Errorf("control byte in field %s", name)
		}
		if len(h.fields) == maxFields {
			return fmt.Errorf("more than %d fields", maxFields)
		}
		h.fields = append(h.fields, h1field{name, value})
	}
}

// validFieldValue reports whether a field value has no control bytes but
// HTAB (RFC 9110 §5.5), as net/http requires.
func validFieldValue(v []byte) bool {
	for _, c := range v {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// fieldIs reports whether name equals lower, which is lower case, ignoring
// ASCII case.
func fieldIs(name []byte, lower string) bool {
	if len(name) != len(lower) {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// eachToken calls f with each element of a comma-separated list, trimmed.
func eachToken(v []byte, f func(tok []byte)) {
	for len(v) > 0 {
		var tok []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			tok, v = v[:i], v[i+1:]
		} else {
			tok, v = v, nil
		}
		if tok = trimOWS(tok); len(tok) > 0 {
			f(tok)
		}
	}
}

// parseContentLength parses a Content-Length value: digits only, no sign,
// at most 18 of them.
func parseContentLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// maxChunkLine bounds a chunk-size line, extensions included, and
// maxTrailerBytes the trailer section of a chunked body.
const (
	maxChunkLine    = 4 << 10
	maxTrailerBytes = 16 << 10
)

// copyChunked copies a chunked body from src to dst, re-framed: chunk
// extensions are dropped, trailer fields are checked and passed on. It
// flushes dst whenever src has nothing more buffered, so a stream reaches
// the client as the app writes it. It returns the body bytes copied;
// errSrc wraps errors reading src, so the caller can tell the app's side
// from the client's.
func copyChunked(dst *bufio.Writer, src *bufio.Reader) (int64, error) {
	var n int64
	for {
		if src.Buffered() == 0 {
			if err := dst.Flush(); err != nil {
				return n, err
			}
		}
		line, err := readLine(src, maxChunkLine)
		if err != nil {
			return n, errSrc{err}
		}
		for _, c := range line {
			if (c < ' ' && c != '\t') || c == 0x7f {
				return n, errSrc{fmt.Errorf("control byte in chunk line %q", clip(line))}
			}
		}
		// As net/http reads it: trailing whitespace, then extensions, off;
		// what is left is hex digits only.
		for len(line) > 0 && (line[len(line)-1] == ' ' || line[len(line)-1] == '\t') {
			line = line[:len(line)-1]
		}
		if i := bytes.IndexByte(line, ';'); i >= 0 {
			line = line[:i]
		}
		size, ok := parseHexSize(line)
		if !ok {
			return n, errSrc{fmt.Errorf("malformed chunk size %q", clip(line))}
		}
		if size == 0 {
			break
		}
		if err := writeChunkSize(dst, size); err != nil {
			return n, err
		}
		for size > 0 {
			if src.Buffered() == 0 {
				if err := dst.Flush(); err != nil {
					return n, err
				}
				if _, err := src.Peek(1); err != nil {
					return n, errSrc{noEOF(err)}
				}
			}
			b, _ := src.Peek(int(min(size, int64(src.Buffered()))))
			w, err := dst.Write(b)
			n += int64(w)
			size -= int64(w)
			_, _ = src.Discard(w)
			if err != nil {
				return n, err
			}
		}
		if crlf, err := readLine(src, 2); err != nil || len(crlf) != 0 {
			if err == nil {
				err = errors.New("chunk data longer than its size")
			}
			return n, errSrc{err}
		}
		if _, err := dst.WriteString("\r\n"); err != nil {
			return n, err
		}
	}
	if _, err := dst.WriteString("0\r\n"); err != nil {
		return n, err
	}
	total := 0
	for {
		line, err := readLine(src, maxTrailerBytes)
		if err != nil {
			return n, errSrc{err}
		}
		if total += len(line) + 2; total > maxTrailerBytes {
			return n, errSrc{errors.New("trailer section too large")}
		}
		if len(line) > 0 {
			colon := bytes.IndexByte(line, ':')
			if colon <= 0 || !isToken(line[:colon]) || !validFieldValue(trimOWS(line[colon+1:])) {
				return n, errSrc{fmt.Errorf("malformed trailer field %q", clip(line))}
			}
		}
		if _, err := dst.Write(line); err != nil {
			return n, err
		}
		if _, err := dst.WriteString("\r\n"); err != nil {
			return n, err
		}
		if len(line) == 0 {
			return n, nil
		}
	}
}

// writeChunkSize writes a chunk's size line.
func writeChunkSize(dst *bufio.Writer, size int64) error {
	var hex [16]byte
	dst.Write(strconv.AppendUint(hex[:0], uint64(size), 16))
	_, err := dst.WriteString("\r\n")
	return err
}

// errSrc marks an error on the side a body is read from.
type errSrc struct{ error }

func (e errSrc) Unwrap() error { return e.error }

// noEOF turns io.EOF in the middle of a body into io.ErrUnexpectedEOF.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// readLine reads one CRLF-terminated line of at most max bytes, without its
// CRLF. The slice is valid until the next read from br.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		if err == bufio.ErrBufferFull {
			return nil, errors.New("line too long")
		}
		return nil, noEOF(err)
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return nil, errBareLF
	}
	line = line[:len(line)-2]
	if len(line) > max {
		return nil, errors.New("line too long")
	}
	return line, nil
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// parseHexSize parses a chunk size: 1 to 15 hex digits.
func parseHexSize(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 15 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		n = n<<4 | int64(c)
	}
	return n, true
}

// plainTarget reports whether an origin-form target is one the fast paths
// pass on as is: visible ASCII only, and valid escapes in the path
// (net/http refuses a path with a bad escape: let it). A path with a byte
// that net/http's proxy sends escaped (url.URL.EscapedPath: a fragment's
// '#', '"', '<', '>', '\', '^', '`', '{', '|', '}') is not plain either:
// the app must read the same target whichever path served the request.
func plainTarget[T string | []byte](target T) bool {
	inPath := true
	for i := 0; i < len(target); i++ {
		switch c := target[i]; {
		case c <= ' ' || c >= 0x7f:
			return false
		case c == '?':
			inPath = false
		case inPath && escapedInPath[c]:
			return false
		case c == '%' && inPath:
			if i+2 >= len(target) || !isHex(target[i+1]) || !isHex(target[i+2]) {
				return false
			}
		}
	}
	return true
}

// escapedInPath marks the visible ASCII bytes that url.URL.EscapedPath
// escapes in a path.
var escapedInPath = func() (t [256]bool) {
	for _, c := range "#\"<>\\^`{|}" {
		t[c] = true
	}
	return t
}()
