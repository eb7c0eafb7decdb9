package proxy

import (
	"encoding/hex"
	"math/rand/v2"
)

// newRequestID returns a random version-4 UUID. math/rand/v2's global source
// is seeded from the OS and safe for concurrent use; request ids need to be
// unique, not secret.
func newRequestID() string {
	var s [36]byte
	return string(appendRequestID(s[:0]))
}

// appendRequestID appends a new request id to dst.
func appendRequestID(dst []byte) []byte {
	var b [16]byte
	hi, lo := rand.Uint64(), rand.Uint64()
	for i := range 8 {
		b[i] = byte(hi >> (8 * i))
		b[8+i] = byte(lo >> (8 * i))
	}
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return append(dst, s[:]...)
}

// requestID returns the id of a request whose client sent id (or none):
// id when it is valid, else a new one (generated) in RequestIDGenerate
// mode, else "" (RequestIDOff: an invalid id goes to the app as it came,
// and is neither logged nor echoed). The HTTP/1.1 fast path does the same
// on bytes.
func (h *Handler) requestID(id string) (_ string, generated bool) {
	switch {
	case validRequestID(id):
		return id, false
	case h.genID:
		return newRequestID(), true
	}
	return "", false
}

// maxRequestIDLen bounds a client-supplied request id; a longer one, or one
// with spaces or control characters, is replaced so that logs stay parseable.
const maxRequestIDLen = 128

func validRequestID[T string | []byte](id T) bool {
	if len(id) == 0 || len(id) > maxRequestIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}
