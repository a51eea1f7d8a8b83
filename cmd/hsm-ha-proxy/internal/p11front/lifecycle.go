package p11front

import (
	"bytes"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
)

// opKind is one of the operations a session can have active, one of each kind (PKCS#11).
type opKind int

const (
	opSign opKind = iota
	opVerify
	opEncrypt
	opDecrypt
	opDigest
	numOpKinds
)

// opState is what a session has in progress: its search and its active operations. It is plain data — no
// pointers into the server, no keys, no running hashes, no closures — so that a session's state can be
// handed to another process (a hot upgrade of the sidecar) and go on there; everything else a call needs
// is derived from it by the call (opPlan).
type opState struct {
	Find   *findOp
	Active [numOpKinds]*activeOp
}

// activeOp is one active operation (sign, verify, encrypt, decrypt, digest), as plain data (see opState).
type activeOp struct {
	Mech p11rpc.Mechanism // as C_*Init sent it (a copy): the type and its parameters (PSS, OAEP)
	Key  uint64           // the key's object handle (0 for a digest)

	Multi     bool   // an Update call was made: the single-part call is out of order now
	Input     []byte // the input gathered by Update calls, for a mechanism that does not hash it
	HashState []byte // for one that does (hash-and-sign, digests): the running hash's state (MarshalBinary)
	// HeldPart is an Update's part that asked only for its output's size (see update).
	HeldPart    []byte
	HasHeldPart bool

	// Out is an output computed for a buffer too small for it, kept for the caller's next try (so that a
	// device is asked once), with the input it is the output of.
	Out    []byte
	OutFor []byte
	HasOut bool
}

// family is what one kind of operation does that the lifecycle (this file) does not: which mechanisms
// and keys it takes and what it computes. Sign and verify share the signature plan (sigplan.go), encrypt
// and decrypt the RSA one (crypt.go); with a secret key (HMAC, AES-GCM) all four take the secret-key plan
// and outputs instead (secretmech.go, secretops.go).
type family struct {
	name     string // "signature": for "no signature", "signature already active"
	call     string // the single-part call, "C_Sign"
	flag     uint64 // the mechanisms it takes: CKF_SIGN, CKF_VERIFY, ...
	class    uint64 // the key pair's object class (or CKO_SECRET_KEY, see keyObject); 0: no key (digests)
	tooLong  rv     // input gathered past opPlan.maxInput
	onDevice bool   // the cluster's key does the work: C_*Init checks that the cluster has the key
	// exact: the output's length (opPlan.outLen) is known before the output is computed; otherwise it is an
	// upper bound, answered to a size query only.
	exact bool
	// plan checks the mechanism and its parameters against the key and derives what the calls need.
	plan func(m *mech, mp *p11rpc.Mechanism, o *object) (*opPlan, error)
	// output computes the output from the input (its digest for a hashing mechanism); nil for verify.
	output func(c *conn, s *session, p *opPlan, in []byte) ([]byte, error)
}

var families = [numOpKinds]family{
	opSign: {name: "signature", call: "C_Sign", flag: pkcs11.CKF_SIGN, class: pkcs11.CKO_PRIVATE_KEY,
		tooLong: pkcs11.CKR_DATA_LEN_RANGE, onDevice: true, exact: true, plan: withSecrets(opSign, sigPlan),
		output: secretOutput((*conn).sign)},
	opVerify: {name: "verification", call: "C_Verify", flag: pkcs11.CKF_VERIFY, class: pkcs11.CKO_PUBLIC_KEY,
		tooLong: pkcs11.CKR_DATA_LEN_RANGE, plan: withSecrets(opVerify, sigPlan)},
	opEncrypt: {name: "encryption", call: "C_Encrypt", flag: pkcs11.CKF_ENCRYPT, class: pkcs11.CKO_PUBLIC_KEY,
		tooLong: pkcs11.CKR_DATA_LEN_RANGE, exact: true, plan: withSecrets(opEncrypt, cryptPlan),
		output: secretOutput((*conn).encrypt)},
	opDecrypt: {name: "decryption", call: "C_Decrypt", flag: pkcs11.CKF_DECRYPT, class: pkcs11.CKO_PRIVATE_KEY,
		tooLong: pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE, onDevice: true, plan: withSecrets(opDecrypt, cryptPlan),
		output: secretOutput((*conn).decrypt)},
	opDigest: {name: "digest", call: "C_Digest", flag: pkcs11.CKF_DIGEST,
		tooLong: pkcs11.CKR_DATA_LEN_RANGE, exact: true, plan: digestPlan, output: (*conn).digest},
}

// opInit is the handler of C_SignInit, C_VerifyInit, C_EncryptInit, C_DecryptInit ("uMu": session,
// mechanism, key) and C_DigestInit ("uM"). A NULL mechanism cancels the active operation (PKCS#11 3.0).
func opInit(k opKind) handler {
	f := &families[k]
	return func(c *conn, req *p11rpc.Request, _ *p11rpc.Reply) error {
		h, mp := req.Ulong(), req.Mechanism()
		var key uint64
		if f.class != 0 {
			key = req.Ulong()
		}
		if err := req.Finish(); err != nil {
			return err
		}
		s, err := c.grantedSession(h)
		if err != nil {
			return err
		}
		var o *object
		if f.class != 0 {
			if o, err = c.keyObject(s, key, f.class, mp != nil); err != nil {
				return err
			}
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		switch {
		case mp == nil:
			s.ops.Active[k] = nil
			return nil
		case s.ops.Active[k] != nil:
			return rvErr(pkcs11.CKR_OPERATION_ACTIVE, f.name+" already active")
		}
		if err := c.checkInit(f, mp, o); err != nil {
			return err
		}
		s.ops.Active[k] = &activeOp{Mech: *mp.Clone(), Key: key}
		return nil
	}
}

// checkInit refuses at C_*Init what the operation could not do.
func (c *conn) checkInit(f *family, mp *p11rpc.Mechanism, o *object) error {
	m, err := mechNamed(mp.Type, f.flag)
	if err != nil {
		return err
	}
	if _, err := f.plan(m, mp, o); err != nil {
		c.warnPSSZero(f.call+"Init", err, o, m)
		return err
	}
	switch {
	case o != nil && o.class == pkcs11.CKO_SECRET_KEY:
		_, err = c.secretKey(c.s.base, o)
	case f.onDevice:
		_, err = c.clusterKey(c.s.base, o)
	}
	return err
}

// opUpdate is the handler of C_SignUpdate, C_VerifyUpdate and C_DigestUpdate ("uay"): a part of the input.
func opUpdate(k opKind) handler {
	return func(c *conn, req *p11rpc.Request, _ *p11rpc.Reply) error {
		h, part := req.Ulong(), req.ByteArray()
		if err := req.Finish(); err != nil {
			return err
		}
		s, err := c.sess.get(h)
		if err != nil {
			return err
		}
		return c.update(k, s, part, false)
	}
}

// opUpdateOut is the handler of C_EncryptUpdate and C_DecryptUpdate ("uayfy"), whose output (none: an RSA
// operation's comes with the Final call) is always an empty array rather than a length, even for a size
// query, so that a caller's zero-length buffer is not answered CKR_BUFFER_TOO_SMALL.
func opUpdateOut(k opKind) handler {
	return func(c *conn, req *p11rpc.Request, w *p11rpc.Reply) error {
		h, part := req.Ulong(), req.ByteArray()
		_, null := req.ByteBuffer()
		if err := req.Finish(); err != nil {
			return err
		}
		s, err := c.sess.get(h)
		if err != nil {
			return err
		}
		if err := c.update(k, s, part, null); err != nil {
			return err
		}
		w.ByteArray([]byte{})
		return nil
	}
}

// update adds part to k's active operation; an error ends it.
func (c *conn) update(k opKind, s *session, part []byte, query bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	op, p, err := c.active(s, k, false)
	if err != nil {
		return err
	}
	if err := op.update(p, part, query, families[k].tooLong); err != nil {
		s.ops.Active[k] = nil
		return err
	}
	return nil
}

// opOutput is the handler of C_Sign, C_Encrypt, C_Decrypt, C_Digest ("uayfy": session, input, output
// buffer) and, final, of their Final calls ("ufy").
func opOutput(k opKind, final bool) handler {
	return func(c *conn, req *p11rpc.Request, w *p11rpc.Reply) error {
		a := outputArgs{}
		h := req.Ulong()
		if !final {
			a.data = req.ByteArray()
		}
		a.n, a.null = req.ByteBuffer()
		if err := req.Finish(); err != nil {
			return err
		}
		s, err := c.sess.get(h)
		if err != nil {
			return err
		}
		return c.output(k, s, a, w, final)
	}
}

// output ends k's operation with its output, unless the caller only asks for the output's size or its
// buffer is too small for it: then the reply is the length alone (CKR_BUFFER_TOO_SMALL for a real buffer)
// and the operation stays active. An output computed for a buffer too small for it is kept for the next
// try with the same input. Any error ends the operation.
func (c *conn) output(k opKind, s *session, a outputArgs, w *p11rpc.Reply, final bool) error {
	f := &families[k]
	s.mu.Lock()
	defer s.mu.Unlock()
	op, p, err := c.active(s, k, !final)
	if err != nil {
		return err
	}
	src, err := op.source(p, a.data, final, f.tooLong)
	if err != nil {
		s.ops.Active[k] = nil
		return err
	}
	out, kept := op.Out, op.HasOut && bytes.Equal(op.OutFor, src)
	if !kept {
		if (f.exact || a.null) && a.sized(w, p.lenFor(src)) {
			return nil
		}
		in, err := p.message(src, final)
		if err == nil {
			out, err = f.output(c, s, p, in)
		}
		if err != nil {
			s.ops.Active[k] = nil
			return err
		}
	}
	if a.sized(w, len(out)) {
		if !kept {
			op.Out, op.OutFor, op.HasOut = out, bytes.Clone(src), true
		}
		return nil
	}
	s.ops.Active[k] = nil
	w.ByteArray(out)
	return nil
}

// active returns k's active operation and its plan: CKR_OPERATION_NOT_INITIALIZED when there is none,
// and CKR_OPERATION_ACTIVE, ending it, for a single-part call after Update calls. Called with s.mu held.
func (c *conn) active(s *session, k opKind, single bool) (*activeOp, *opPlan, error) {
	f := &families[k]
	op := s.ops.Active[k]
	switch {
	case op == nil:
		return nil, nil, rvErr(pkcs11.CKR_OPERATION_NOT_INITIALIZED, "no "+f.name)
	case single && op.Multi:
		s.ops.Active[k] = nil
		return nil, nil, rvErr(pkcs11.CKR_OPERATION_ACTIVE, f.call+" after "+f.call+"Update")
	}
	p, err := c.planOf(f, op)
	if err != nil {
		s.ops.Active[k] = nil
		return nil, nil, err
	}
	return op, p, nil
}

// planOf derives the plan of an active operation again, as its C_*Init did.
func (c *conn) planOf(f *family, op *activeOp) (*opPlan, error) {
	m, err := mechNamed(op.Mech.Type, f.flag)
	if err != nil {
		return nil, err
	}
	var o *object
	if f.class != 0 {
		if o = c.s.objs.get(op.Key); o == nil {
			return nil, rvErr(pkcs11.CKR_KEY_HANDLE_INVALID, "the operation's key is gone")
		}
	}
	return f.plan(m, &op.Mech, o)
}
