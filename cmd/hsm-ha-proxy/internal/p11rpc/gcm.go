package p11rpc

// CKMAESGCM is CKM_AES_GCM, whose parameter p11-kit 0.25+ carries as CK_GCM_PARAMS' fields (shape "aqaq").
const CKMAESGCM = 0x1087

// GCMParams is CK_GCM_PARAMS: the IV, its length in bits as the client stated it (ulIvBits), the
// additional authenticated data and the tag's length in bits. IV and AAD alias the mechanism's Param.
type GCMParams struct {
	IV      []byte
	IVBits  uint64
	AAD     []byte
	TagBits uint64
}

// GCM decodes the parameter of a CKM_AES_GCM mechanism (Param holds its encoded fields, see Mechanism):
// nil and no error when m is no AES-GCM mechanism or carries no parameter, a *ProtocolError when the
// fields are malformed.
func (m *Mechanism) GCM() (*GCMParams, error) {
	if m == nil || m.Type != CKMAESGCM || m.Param == nil {
		return nil, nil
	}
	d := &decoder{b: m.Param}
	iv, err := d.bytes("CK_GCM_PARAMS pIv")
	if err != nil {
		return nil, err
	}
	ivBits, err := d.u64("CK_GCM_PARAMS ulIvBits")
	if err != nil {
		return nil, err
	}
	aad, err := d.bytes("CK_GCM_PARAMS pAAD")
	if err != nil {
		return nil, err
	}
	tagBits, err := d.u64("CK_GCM_PARAMS ulTagBits")
	if err != nil {
		return nil, err
	}
	if d.remaining() != 0 {
		return nil, d.fail("CK_GCM_PARAMS: %d trailing bytes", d.remaining())
	}
	return &GCMParams{IV: iv, IVBits: ivBits, AAD: aad, TagBits: tagBits}, nil
}
