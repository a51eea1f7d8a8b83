package softhsmtest

import (
	"encoding/binary"
	"sync/atomic"
)

// replyScanner follows the p11-kit RPC byte stream from a server to its client, for one fault: flipping a
// bit in the signature of C_Sign replies (Device.CorruptSignatures). It is deliberately minimal, not a
// codec: it knows the framing (p11-kit/rpc-message.h and rpc-transport.c of p11-kit 0.24: one protocol
// version byte, then frames of a 12-byte header — big-endian uint32 call code, options length, body
// length — the options and the body) and the start of a C_Sign reply body:
//
//	uint32 call id (C_Sign = 43), byte array "ay" (uint32 length 2, the signature string of the reply),
//	byte 1 (the array is present; 0 answers a length query), uint32 data length, the signature.
//
// Anything else passes untouched. Chunks may split frames anywhere, so the scanner keeps its place.
type replyScanner struct {
	versionSeen bool
	hdr         [12]byte
	hdrN        int
	olen, blen  int
	pos         int // bytes of options + body consumed in the current frame
	body        [replyPrefix]byte
	target      int // body offset of the byte to flip in this frame; -1: none
	counts      *signCounts
}

// signCounts counts the C_Sign replies a relay carried: with a signature, and answers to a length query
// (a NULL buffer), to tell one-call signing from miekg/pkcs11's two calls.
type signCounts struct {
	data, query atomic.Int64
}

const (
	rpcCallSign = 43 // P11_RPC_CALL_C_Sign
	// replyPrefix: call id (4), "ay" string (4 + 2), present flag (1), data length (4).
	replyPrefix = 15
)

// feed scans b, the next bytes of the stream, and flips one bit of each C_Sign signature in it when
// corrupt is set.
func (s *replyScanner) feed(b []byte, corrupt bool) {
	for len(b) > 0 {
		if !s.versionSeen {
			s.versionSeen = true
			b = b[1:]
			continue
		}
		if s.hdrN < len(s.hdr) {
			n := copy(s.hdr[s.hdrN:], b)
			s.hdrN += n
			b = b[n:]
			if s.hdrN == len(s.hdr) {
				s.olen = int(binary.BigEndian.Uint32(s.hdr[4:8]))
				s.blen = int(binary.BigEndian.Uint32(s.hdr[8:12]))
				s.pos, s.target = 0, -1
				s.endFrameIfDone()
			}
			continue
		}
		n := s.step(b, corrupt)
		b = b[n:]
		s.pos += n
		s.endFrameIfDone()
	}
}

// step consumes the next bytes of the current frame's options and body (at least one) and returns how many.
func (s *replyScanner) step(b []byte, corrupt bool) int {
	if s.pos < s.olen {
		return min(s.olen-s.pos, len(b))
	}
	off := s.pos - s.olen // offset in the body
	left := s.blen - off
	if off < replyPrefix {
		n := min(replyPrefix-off, len(b), left)
		copy(s.body[off:], b[:n])
		if off+n == replyPrefix {
			s.count()
			s.target = s.signatureMiddle()
		}
		return n
	}
	if s.target >= off && s.target < off+len(b) {
		if corrupt {
			b[s.target-off] ^= 0x01
		}
		s.target = -1
	}
	return min(left, len(b))
}

// count counts a C_Sign reply: with data (present flag 1) or a length answer (0).
func (s *replyScanner) count() {
	b := s.body[:]
	if s.counts == nil || binary.BigEndian.Uint32(b[0:4]) != rpcCallSign || string(b[8:10]) != "ay" {
		return
	}
	if b[10] == 1 {
		s.counts.data.Add(1)
	} else {
		s.counts.query.Add(1)
	}
}

// signatureMiddle is the body offset of the middle byte of a C_Sign reply's signature, or -1.
func (s *replyScanner) signatureMiddle() int {
	b := s.body[:]
	if binary.BigEndian.Uint32(b[0:4]) != rpcCallSign || binary.BigEndian.Uint32(b[4:8]) != 2 || string(b[8:10]) != "ay" || b[10] != 1 {
		return -1
	}
	n := int(binary.BigEndian.Uint32(b[11:15]))
	if n == 0 || replyPrefix+n > s.blen {
		return -1
	}
	return replyPrefix + n/2
}

func (s *replyScanner) endFrameIfDone() {
	if s.pos >= s.olen+s.blen {
		s.hdrN, s.pos, s.target = 0, 0, -1
	}
}
