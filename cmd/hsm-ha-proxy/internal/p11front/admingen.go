package p11front

import (
	"bytes"
	"crypto/elliptic"
	"encoding/asn1"
	"fmt"
	"slices"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/cmd/hsm-ha-proxy/internal/p11rpc"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// keygenMechanisms are the key-pair generation mechanisms, listed to admin clients only. Both are carried
// by every p11-kit client (p11rpc.Carried), 0.24 included.
var keygenMechanisms = []mech{
	{typ: pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, name: "CKM_RSA_PKCS_KEY_PAIR_GEN", keyType: pkcs11.CKK_RSA,
		flags: pkcs11.CKF_HW | pkcs11.CKF_GENERATE_KEY_PAIR, minBits: 2048, maxBits: 4096},
	{typ: pkcs11.CKM_EC_KEY_PAIR_GEN, name: "CKM_EC_KEY_PAIR_GEN", keyType: pkcs11.CKK_EC,
		flags: pkcs11.CKF_HW | pkcs11.CKF_GENERATE_KEY_PAIR | fEC, minBits: 256, maxBits: 384},
}

// keygenMechsFor are the key-pair generation mechanisms of this connection: none unless the peer is an
// admin and the cluster manages keys.
func (c *conn) keygenMechsFor() []*mech {
	if _, ok := c.s.be.(KeyAdmin); !ok || !c.isAdmin() {
		return nil
	}
	out := make([]*mech, 0, len(keygenMechanisms))
	for i := range keygenMechanisms {
		if p11rpc.Carried(keygenMechanisms[i].typ, c.version) {
			out = append(out, &keygenMechanisms[i])
		}
	}
	return out
}

// keygenMech is the key-pair generation mechanism of type t for this connection, or nil.
func (c *conn) keygenMech(t uint64) *mech {
	for _, m := range c.keygenMechsFor() {
		if m.typ == t {
			return m
		}
	}
	return nil
}

// cGenerateKeyPair ("uMaAaA" -> "uu") makes a key pair on every device of the session's partition
// (pkcs11ha.Cluster.GenerateKey) and answers the handles of its public and private objects.
func (c *conn) cGenerateKeyPair(req *p11rpc.Request, w *p11rpc.Reply) error {
	h, mp, pubT, privT := req.Ulong(), req.Mechanism(), req.Attributes(), req.Attributes()
	if err := req.Finish(); err != nil {
		return err
	}
	s, ka, ctx, cancel, err := c.keyAdmin(h, "C_GenerateKeyPair")
	if err != nil {
		return err
	}
	defer cancel()
	spec, notGranted, err := keySpecOf(mp, pubT, privT)
	if err != nil {
		c.log.Info("PKCS#11 C_GenerateKeyPair refused: template", "client", c.clientName(), "partition", s.partition, "err", err)
		return err
	}
	if len(notGranted) > 0 {
		c.log.Info("PKCS#11 C_GenerateKeyPair: usages asked for are not granted (the cluster's keys sign, and RSA keys decrypt)",
			"partition", s.partition, "key", spec.Label, "not_granted", notGranted)
	}
	ki, err := ka.GenerateKey(ctx, s.partition, spec)
	if err != nil {
		return c.adminRV("C_GenerateKeyPair", s.partition, spec.Label, err)
	}
	c.s.objs.forget(s.partition, ki.Label) // a new key: handles an earlier key of this label had are not its
	c.s.objs.objectsOf(s.partition, []pkcs11ha.KeyInfo{ki})
	w.Ulong(c.s.objs.handleOf(s.partition, ki.Label, pkcs11.CKO_PUBLIC_KEY))
	w.Ulong(c.s.objs.handleOf(s.partition, ki.Label, pkcs11.CKO_PRIVATE_KEY))
	c.log.Info("PKCS#11 key pair generated", "client", c.clientName(), "partition", s.partition, "key", ki.Label,
		"algorithm", spec.Algorithm, "devices", ki.Devices)
	return nil
}

// genTemplate is what the two templates of C_GenerateKeyPair say, gathered.
type genTemplate struct {
	keyType    uint64
	label, id  []byte
	hasLabel   bool
	hasID      bool
	bits       uint64
	ecParams   []byte
	notGranted []string
}

// keySpecOf reads the mechanism and templates of C_GenerateKeyPair into the library's KeySpec. A key the
// cluster makes has fixed attributes (pkcs11ha's privateAttrs: token, private, sensitive, never extractable
// in clear, signing, RSA decrypting): a template asking for anything else is refused
// (CKR_TEMPLATE_INCONSISTENT), an unknown attribute is CKR_ATTRIBUTE_TYPE_INVALID, a size, exponent or
// curve the cluster does not make is CKR_ATTRIBUTE_VALUE_INVALID. CKA_DERIVE, CKA_WRAP and CKA_UNWRAP asked
// true are accepted but not granted (notGranted): pkcs11-tool asks CKA_DERIVE for every EC key.
func keySpecOf(mp *p11rpc.Mechanism, pubT, privT []p11rpc.Attribute) (pkcs11ha.KeySpec, []string, error) {
	g := &genTemplate{}
	switch {
	case mp == nil:
		return pkcs11ha.KeySpec{}, nil, rvErr(pkcs11.CKR_MECHANISM_INVALID, "no mechanism")
	case mp.Type == pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN:
		g.keyType = pkcs11.CKK_RSA
	case mp.Type == pkcs11.CKM_EC_KEY_PAIR_GEN:
		g.keyType = pkcs11.CKK_EC
	default:
		return pkcs11ha.KeySpec{}, nil, rvErr(pkcs11.CKR_MECHANISM_INVALID, fmt.Sprintf("mechanism %#x: the cluster makes RSA and EC key pairs", mp.Type))
	}
	if len(mp.Param) > 0 || mp.PSS != nil || mp.OAEP != nil {
		return pkcs11ha.KeySpec{}, nil, rvErr(pkcs11.CKR_MECHANISM_PARAM_INVALID, "key-pair generation takes no parameter")
	}
	for _, a := range pubT {
		if err := g.attr(a, pkcs11.CKO_PUBLIC_KEY); err != nil {
			return pkcs11ha.KeySpec{}, nil, err
		}
	}
	for _, a := range privT {
		if err := g.attr(a, pkcs11.CKO_PRIVATE_KEY); err != nil {
			return pkcs11ha.KeySpec{}, nil, err
		}
	}
	spec, err := g.spec()
	return spec, g.notGranted, err
}

// fixedBools are the CK_BBOOL attributes of the objects the cluster makes, by class: a template may ask
// for these values only. nil entries depend on the key type (keyTypeBools).
var fixedBools = map[uint64]map[uint64]bool{
	pkcs11.CKO_PUBLIC_KEY: {pkcs11.CKA_TOKEN: true, pkcs11.CKA_VERIFY: true, pkcs11.CKA_VERIFY_RECOVER: false,
		pkcs11.CKA_TRUSTED: false},
	pkcs11.CKO_PRIVATE_KEY: {pkcs11.CKA_TOKEN: true, pkcs11.CKA_PRIVATE: true, pkcs11.CKA_SENSITIVE: true,
		pkcs11.CKA_EXTRACTABLE: false, pkcs11.CKA_SIGN: true, pkcs11.CKA_SIGN_RECOVER: false, pkcs11.CKA_ALWAYS_AUTHENTICATE: false},
}

// notGrantable are the usages a template may ask for that the cluster's keys do not have: accepted, not
// granted (see keySpecOf).
var notGrantable = map[uint64]string{pkcs11.CKA_DERIVE: "CKA_DERIVE", pkcs11.CKA_WRAP: "CKA_WRAP", pkcs11.CKA_UNWRAP: "CKA_UNWRAP"}

// ignored are attributes a template may carry with any value: the public object's CKA_PRIVATE (the
// devices decide; the front end presents it public), object management flags, and how a key may be
// wrapped (key_replication decides).
var ignored = map[uint64]bool{pkcs11.CKA_MODIFIABLE: true, pkcs11.CKA_COPYABLE: true, pkcs11.CKA_DESTROYABLE: true,
	pkcs11.CKA_WRAP_WITH_TRUSTED: true}

// attr takes one attribute of the template of class.
func (g *genTemplate) attr(a p11rpc.Attribute, class uint64) error {
	bad := func(code rv, why string) error {
		return rvErr(code, fmt.Sprintf("%s template: attribute %#x: %s", className(class), a.Type, why))
	}
	if !a.Valid {
		return bad(pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, "no value")
	}
	switch kind := p11rpc.KindOf(a.Type); {
	case a.Type == pkcs11.CKA_PRIVATE && class == pkcs11.CKO_PUBLIC_KEY, ignored[a.Type]:
		return nil
	case kind == p11rpc.KindBool:
		return g.boolAttr(a, class, bad)
	case a.Type == pkcs11.CKA_CLASS || a.Type == pkcs11.CKA_KEY_TYPE:
		v, err := a.Ulong()
		want := class
		if a.Type == pkcs11.CKA_KEY_TYPE {
			want = g.keyType
		}
		if err != nil || v != want {
			return bad(pkcs11.CKR_TEMPLATE_INCONSISTENT, "does not match the mechanism")
		}
		return nil
	case a.Type == pkcs11.CKA_LABEL:
		return g.same(&g.label, &g.hasLabel, a.Value, bad)
	case a.Type == pkcs11.CKA_ID:
		return g.same(&g.id, &g.hasID, a.Value, bad)
	case a.Type == pkcs11.CKA_SUBJECT, a.Type == pkcs11.CKA_START_DATE, a.Type == pkcs11.CKA_END_DATE:
		if len(a.Value) > 0 {
			return bad(pkcs11.CKR_TEMPLATE_INCONSISTENT, "the cluster does not keep it on keys")
		}
		return nil
	}
	return g.keyParam(a, class, bad)
}

// boolAttr takes a CK_BBOOL attribute: the value the cluster's key has, or a usage it does not grant.
func (g *genTemplate) boolAttr(a p11rpc.Attribute, class uint64, bad func(rv, string) error) error {
	v, err := a.Bool()
	if err != nil {
		return bad(pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, "not a CK_BBOOL")
	}
	if name, ok := notGrantable[a.Type]; ok {
		if v && !slices.Contains(g.notGranted, name) {
			g.notGranted = append(g.notGranted, name)
		}
		return nil
	}
	want, ok := fixedBools[class][a.Type]
	if !ok {
		if a.Type == pkcs11.CKA_ENCRYPT || a.Type == pkcs11.CKA_DECRYPT {
			// An RSA key's public half encrypts and its private half decrypts; EC keys do neither.
			rightHalf := (a.Type == pkcs11.CKA_ENCRYPT) == (class == pkcs11.CKO_PUBLIC_KEY)
			want, ok = g.keyType == pkcs11.CKK_RSA && rightHalf, true
		}
	}
	switch {
	case !ok:
		return bad(pkcs11.CKR_ATTRIBUTE_TYPE_INVALID, "not an attribute of the cluster's keys")
	case v != want:
		return bad(pkcs11.CKR_TEMPLATE_INCONSISTENT, fmt.Sprintf("the cluster's keys have it %v", want))
	}
	return nil
}

// keyParam takes the size, exponent or curve of the public template.
func (g *genTemplate) keyParam(a p11rpc.Attribute, class uint64, bad func(rv, string) error) error {
	rsa := g.keyType == pkcs11.CKK_RSA
	switch {
	case class != pkcs11.CKO_PUBLIC_KEY:
	case a.Type == pkcs11.CKA_MODULUS_BITS && rsa:
		v, err := a.Ulong()
		if err != nil || (v != 2048 && v != 3072 && v != 4096) {
			return bad(pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, "RSA keys are 2048, 3072 or 4096 bits")
		}
		g.bits = v
		return nil
	case a.Type == pkcs11.CKA_PUBLIC_EXPONENT && rsa:
		if !bytes.Equal(bytes.TrimLeft(a.Value, "\x00"), []byte{1, 0, 1}) {
			return bad(pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, "the public exponent is 65537")
		}
		return nil
	case a.Type == pkcs11.CKA_EC_PARAMS && !rsa:
		g.ecParams = a.Value
		if curveOfParams(a.Value) == "" {
			return bad(pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, "the curves are P-256 and P-384 (named curve OIDs)")
		}
		return nil
	}
	return bad(pkcs11.CKR_ATTRIBUTE_TYPE_INVALID, "not an attribute of this template")
}

// same records a label or ID, which both templates must agree on when both carry it.
func (g *genTemplate) same(dst *[]byte, has *bool, v []byte, bad func(rv, string) error) error {
	if *has && !bytes.Equal(*dst, v) {
		return bad(pkcs11.CKR_TEMPLATE_INCONSISTENT, "the two templates give different values")
	}
	*dst, *has = bytes.Clone(v), true
	return nil
}

// spec is the KeySpec of the gathered templates.
func (g *genTemplate) spec() (pkcs11ha.KeySpec, error) {
	spec := pkcs11ha.KeySpec{Label: string(g.label), ID: g.id}
	if len(g.label) == 0 {
		return spec, rvErr(pkcs11.CKR_TEMPLATE_INCOMPLETE, "CKA_LABEL is required: the cluster names keys by label")
	}
	if g.keyType == pkcs11.CKK_RSA {
		if g.bits == 0 {
			return spec, rvErr(pkcs11.CKR_TEMPLATE_INCOMPLETE, "CKA_MODULUS_BITS is required")
		}
		spec.Algorithm = fmt.Sprintf("rsa-%d", g.bits)
		return spec, nil
	}
	if spec.Algorithm = curveOfParams(g.ecParams); spec.Algorithm == "" {
		return spec, rvErr(pkcs11.CKR_TEMPLATE_INCOMPLETE, "CKA_EC_PARAMS is required")
	}
	return spec, nil
}

// curveOfParams is the KeySpec algorithm of a CKA_EC_PARAMS value (a named curve's OID), or "".
func curveOfParams(params []byte) string {
	for c, alg := range map[elliptic.Curve]string{elliptic.P256(): pkcs11ha.KeyAlgECP256, elliptic.P384(): pkcs11ha.KeyAlgECP384} {
		if der, _ := asn1.Marshal(curveOIDs[c]); len(params) > 0 && bytes.Equal(der, params) {
			return alg
		}
	}
	return ""
}

// className names an object class in messages.
func className(class uint64) string {
	switch class {
	case pkcs11.CKO_PUBLIC_KEY:
		return "public key"
	case pkcs11.CKO_PRIVATE_KEY:
		return "private key"
	case pkcs11.CKO_CERTIFICATE:
		return "certificate"
	}
	return fmt.Sprintf("class %#x", class)
}
