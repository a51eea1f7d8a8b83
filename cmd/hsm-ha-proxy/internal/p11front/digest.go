package p11front

import (
	"crypto/rand"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

// maxRandom bounds one C_GenerateRandom (its output travels in one message).
const maxRandom = 1 << 20

// digestPlan is the plan of a digest, done in software: the input is hashed as it comes.
func digestPlan(m *mech, _ *p11rpc.Mechanism, _ *object) (*opPlan, error) {
	return &opPlan{mech: m, outLen: m.hash.Size()}, nil
}

// digest is the digest family's output: the lifecycle hands it the digest already (opPlan.message).
func (c *conn) digest(_ *session, _ *opPlan, sum []byte) ([]byte, error) { return sum, nil }

func (c *conn) cSeedRandom(req *p11rpc.Request, _ *p11rpc.Reply) error {
	h := req.Ulong()
	req.ByteArray()
	if err := req.Finish(); err != nil {
		return err
	}
	if _, err := c.sess.get(h); err != nil {
		return err
	}
	return rvErr(pkcs11.CKR_RANDOM_SEED_NOT_SUPPORTED, "the generator is the operating system's")
}

func (c *conn) cGenerateRandom(req *p11rpc.Request, w *p11rpc.Reply) error {
	h := req.Ulong()
	n, null := req.ByteBuffer()
	if err := req.Finish(); err != nil {
		return err
	}
	if _, err := c.sess.get(h); err != nil {
		return err
	}
	if n > maxRandom {
		return rvErr(pkcs11.CKR_ARGUMENTS_BAD, "too many random bytes asked for at once")
	}
	out := make([]byte, n) // a NULL buffer (p11-kit 0.24 sends a zero length as NULL) gets nothing
	if null {
		out = out[:0]
	}
	_, _ = rand.Read(out) // never fails (crypto/rand)
	w.ByteArray(out)
	return nil
}
