package proxy

import (
	"errors"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2headerReader reads frames from an HTTP/2 connection as the Framer's
// ReadFrame does with ReadMetaHeaders set, a header block (HEADERS and its
// CONTINUATIONs) coming back as one *http2.MetaHeadersFrame; but that
// frame and its Fields are the reader's own, reused for every block.
//
// Why: x/net builds a new MetaHeadersFrame per block and grows its Fields
// by append, field by field: about 730 bytes per request of a usual size,
// half of all that tidegate allocated per h2c request, and so half of its
// garbage collections (about ten a second under make bench's h2c load;
// with GOGC=800, 6% less CPU per request). The checks are x/net's
// readMetaFrame's, in the same order with the same errors: the header
// list limit (Truncated past it, a connection error when a fragment is
// far over it), valid field names and values (a stream error), pseudo-
// fields first, known and not repeated, and HPACK's own errors (a
// connection error: the decoder's state is lost).
//
// The frame it returns, and its Fields, are valid until the next
// readFrame: whoever keeps fields must copy them.
type h2headerReader struct {
	fr      *http2.Framer
	dec     *hpack.Decoder
	maxList uint32 // the header list limit, as Framer.MaxHeaderListSize
	mh      http2.MetaHeadersFrame

	// partial, if set, is called when a block does not end in its first
	// frame (true), and once it has ended or failed (false).
	partial func(open bool)

	// The block being read.
	headersLeft, trailersLeft uint32
	sawRegular                bool
	invalid                   error
}

// h2FieldsKept is the most fields whose slice the reader keeps for the
// next block; a larger one, from an unusual block, is let go.
const h2FieldsKept = 64

// newH2HeaderReader reads from fr header lists of up to maxList bytes
// (counted as SETTINGS_MAX_HEADER_LIST_SIZE counts); 0 means 16 MiB, as
// for the Framer.
func newH2HeaderReader(fr *http2.Framer, maxList uint32) *h2headerReader {
	if maxList == 0 {
		maxList = 16 << 20
	}
	r := &h2headerReader{fr: fr, dec: hpack.NewDecoder(4096, nil), maxList: maxList}
	r.dec.SetMaxStringLength(int(maxList))
	r.dec.SetEmitFunc(r.emit)
	return r
}

// readFrame reads the next frame.
func (r *h2headerReader) readFrame() (http2.Frame, error) {
	f, err := r.fr.ReadFrame()
	if err != nil {
		return f, err
	}
	if hf, ok := f.(*http2.HeadersFrame); ok {
		return r.readBlock(hf)
	}
	return f, nil
}

// readBlock decodes the header block that hf begins, reading its
// CONTINUATION frames (the Framer checks that they follow).
func (r *h2headerReader) readBlock(hf *http2.HeadersFrame) (http2.Frame, error) {
	if cap(r.mh.Fields) > h2FieldsKept {
		r.mh.Fields = nil
	}
	r.mh = http2.MetaHeadersFrame{HeadersFrame: hf, Fields: r.mh.Fields[:0]}
	r.headersLeft, r.trailersLeft = r.maxList, r.maxList
	r.sawRegular, r.invalid = false, nil
	r.dec.SetEmitEnabled(true)

	frag, ended := hf.HeaderBlockFragment(), hf.HeadersEnded()
	if !ended && r.partial != nil {
		r.partial(true)
		defer r.partial(false)
	}
	for {
		// A fragment far over what is left of the limit is not decoded
		// only to be dropped; nor is any fragment after an invalid field,
		// since the sizes are no longer counted.
		if int64(len(frag)) > 2*int64(r.headersLeft+r.trailersLeft) || r.invalid != nil {
			return &r.mh, http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if _, err := r.dec.Write(frag); err != nil {
			return &r.mh, http2.ConnectionError(http2.ErrCodeCompression)
		}
		if ended {
			break
		}
		f, err := r.fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		cf := f.(*http2.ContinuationFrame) // the Framer allows nothing else here
		frag, ended = cf.HeaderBlockFragment(), cf.HeadersEnded()
	}
	if err := r.dec.Close(); err != nil {
		return &r.mh, http2.ConnectionError(http2.ErrCodeCompression)
	}
	if r.invalid != nil {
		return nil, http2.StreamError{StreamID: hf.StreamID, Code: http2.ErrCodeProtocol, Cause: r.invalid}
	}
	if err := checkPseudoFields(r.mh.PseudoFields()); err != nil {
		return nil, http2.StreamError{StreamID: hf.StreamID, Code: http2.ErrCodeProtocol, Cause: err}
	}
	return &r.mh, nil
}

// emit takes one decoded field.
func (r *h2headerReader) emit(hf hpack.HeaderField) {
	if !httpguts.ValidHeaderFieldValue(hf.Value) {
		// The value may be a secret: not in the error.
		r.invalid = errors.New("invalid value of header field " + strconv.Quote(hf.Name))
	}
	if strings.HasPrefix(hf.Name, ":") {
		if r.sawRegular {
			r.invalid = errors.New("pseudo header field after regular field")
		}
	} else {
		r.sawRegular = true
		if !validFieldName(hf.Name) {
			r.invalid = errors.New("invalid header field name " + strconv.Quote(hf.Name))
		}
	}
	if r.invalid != nil {
		r.dec.SetEmitEnabled(false)
		return
	}
	left, size := &r.headersLeft, hf.Size()
	if hf.Name == "trailer" {
		// Counted as the fields it announces would be.
		n := uint32(strings.Count(hf.Value, ",") + 1)
		left, size = &r.trailersLeft, uint32(len(hf.Value))-n+1+n*hpack.HeaderField{}.Size()
	}
	if size > *left {
		r.dec.SetEmitEnabled(false)
		r.mh.Truncated = true
		r.headersLeft, r.trailersLeft = 0, 0
		return
	}
	*left -= size
	r.mh.Fields = append(r.mh.Fields, hf)
}

// validFieldName reports whether name is a field name HTTP/2 allows on
// the wire: a token (h1wire's tchar), in lower case.
func validFieldName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !tchar[c] || 'A' <= c && c <= 'Z' {
			return false
		}
	}
	return true
}

// checkPseudoFields checks a block's pseudo-fields: known ones, none
// twice, not a request's and a response's together.
func checkPseudoFields(pf []hpack.HeaderField) error {
	var request, response bool
	for i, f := range pf {
		switch f.Name {
		case ":method", ":path", ":scheme", ":authority", ":protocol":
			request = true
		case ":status":
			response = true
		default:
			return errors.New("invalid pseudo-header " + strconv.Quote(f.Name))
		}
		for _, g := range pf[:i] {
			if f.Name == g.Name {
				return errors.New("duplicate pseudo-header " + strconv.Quote(f.Name))
			}
		}
	}
	if request && response {
		return errors.New("mix of request and response pseudo headers")
	}
	return nil
}

// validH2Target reports whether a request's :scheme, :authority, Host
// fields and :path pass the checks x/net's server makes before a handler
// sees the request (its internal/httpcommon.NewServerRequest), which it
// refuses with a stream error: a scheme other than http or https, a
// :path that is not origin-form nor "*" (RFC 9113 §8.3.1), more than
// one Host field, a Host that differs from :authority (a request that
// names two targets: RFC 9113 §8.3.1 says to treat it as malformed),
// userinfo in the authority, or an authority that is not a valid host.
func validH2Target(rq *h2Request) bool {
	authority := rq.authority
	hosts := 0
	for _, f := range rq.fields {
		if f.Name != "host" {
			continue
		}
		if hosts++; hosts > 1 {
			return false
		}
		if authority == "" {
			authority = f.Value
		} else if f.Value != authority {
			return false
		}
	}
	if rq.method != "CONNECT" {
		if rq.scheme != "http" && rq.scheme != "https" || rq.path[0] != '/' && rq.path != "*" {
			return false
		}
		if strings.IndexByte(authority, '@') >= 0 {
			return false
		}
	}
	return authority == "" || httpguts.ValidHostHeader(authority)
}
