package p11rpc

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// goldenBodies are the request bodies of testdata/golden, seeds for the fuzzers.
func goldenBodies(f *testing.F) [][]byte {
	files, _ := filepath.Glob(filepath.Join("testdata", "golden", "*.txt"))
	var out [][]byte
	for _, path := range files {
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) == 4 && fs[0] == "c" {
				if b, err := hex.DecodeString(fs[3]); err == nil {
					out = append(out, b)
				}
			}
		}
	}
	return out
}

// FuzzReadFrame: any bytes give a frame or an error, never a panic, and never a buffer larger than the
// limit; a frame over the limit is skipped (SkipFrame) and reading goes on, as the front end does.
func FuzzReadFrame(f *testing.F) {
	for _, b := range goldenBodies(f)[:8] {
		var buf bytes.Buffer
		_ = WriteFrame(&buf, Frame{Code: 1, Options: []byte("client"), Body: b})
		f.Add(buf.Bytes())
	}
	f.Add([]byte(msg(nil).u32(1).u32(0xffffffff).u32(0xffffffff)))
	f.Add([]byte(msg(nil).u32(1).u32(0).u32(1<<16 + 4).u32(uint32(CallSign)).array([]byte("uayfy")).u64(1)))
	f.Fuzz(func(t *testing.T, in []byte) {
		const limit = 1 << 16
		r := bytes.NewReader(in)
		for {
			fr, err := ReadFrame(r, limit)
			var tl *FrameTooLargeError
			if errors.As(err, &tl) {
				head, err := SkipFrame(r, tl, 64)
				if err != nil {
					return
				}
				if len(head) > 64 {
					t.Fatalf("SkipFrame kept %d bytes", len(head))
				}
				ParseRequestHead(head)
				continue
			}
			if err != nil {
				return
			}
			if fr.Code == 0 || len(fr.Options)+len(fr.Body) > limit {
				t.Fatalf("frame %+v over the limit or with code 0", fr)
			}
			var out bytes.Buffer
			if err := WriteFrame(&out, fr); err != nil {
				t.Fatal(err)
			}
			if again, err := ReadFrame(&out, limit); err != nil || !bytes.Equal(again.Body, fr.Body) || !bytes.Equal(again.Options, fr.Options) {
				t.Fatalf("frame does not round-trip: %v", err)
			}
		}
	})
}

// FuzzParseRequest: any body parses (and then every argument reads, in signature order) or fails with a
// *ProtocolError; never a panic, and never more than maxAllocFactor bytes allocated per body byte.
func FuzzParseRequest(f *testing.F) {
	for _, b := range goldenBodies(f) {
		f.Add(b, byte(0))
	}
	f.Add([]byte(request(CallSignInit).u64(7).u32(ckmRSAPKCSPSS).y(1).u64(1).u64(2).u64(3).u64(9)), byte(2))
	f.Add([]byte(nestedTemplates(request(CallCreateObject).u64(7).u32(1), 3)), byte(2))
	f.Add([]byte(request(CallGetAttributeValue).u64(7).u64(8).u32(1).u32(ckaWrapTemplate).u32(24).u32(1).u32(0).u32(8)), byte(1))
	f.Fuzz(func(t *testing.T, body []byte, version byte) {
		version %= MaxVersion + 1
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		r, err := ParseRequest(body, version)
		runtime.ReadMemStats(&after)
		if got, limit := after.TotalAlloc-before.TotalAlloc, uint64(maxAllocFactor*len(body)+1<<16); got > limit {
			t.Fatalf("%d bytes allocated for a %d-byte body", got, len(body))
		}
		if err != nil {
			if _, ok := err.(*ProtocolError); !ok {
				t.Fatalf("error %T %v is not a *ProtocolError", err, err)
			}
			return
		}
		if id := CallID(binary.BigEndian.Uint32(body)); r.Call != id {
			t.Fatalf("Call %s, body says %d", r.Call, id)
		}
		if err := walkRequest(r); err != nil {
			t.Fatalf("parsed request does not walk: %v", err)
		}
	})
}
