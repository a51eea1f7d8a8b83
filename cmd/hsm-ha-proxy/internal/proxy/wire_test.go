package proxy

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
)

// fill sets every field reachable from v to a distinct non-zero value (two elements per slice and map).
func fill(t *testing.T, v reflect.Value, n *int) {
	*n++
	switch v.Kind() {
	case reflect.String:
		v.SetString(fmt.Sprintf("s%d", *n))
	case reflect.Int, reflect.Int64:
		v.SetInt(int64(*n))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			v.Set(reflect.ValueOf(time.Unix(int64(*n), 0).UTC()))
			return
		}
		for i := range v.NumField() {
			fill(t, v.Field(i), n)
		}
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 2, 2))
		for i := range 2 {
			fill(t, v.Index(i), n)
		}
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(t, v.Elem(), n)
	case reflect.Map:
		v.Set(reflect.MakeMap(v.Type()))
		for range 2 {
			k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
			fill(t, k, n)
			fill(t, e, n)
			v.SetMapIndex(k, e)
		}
	default:
		t.Fatalf("fill: no rule for %s (%s): extend the test", v.Type(), v.Kind())
	}
}

// TestDeviceStatusOnTheWire: the status the sidecar serves is the library's DeviceStatus field for field.
// Every field of pkcs11ha.DeviceStatus is set, so a field added to one type and not mapped, or mapped to
// the wrong name, changes the JSON.
func TestDeviceStatusOnTheWire(t *testing.T) {
	var lib [2]pkcs11ha.DeviceStatus
	n := 0
	for i := range lib {
		fill(t, reflect.ValueOf(&lib[i]).Elem(), &n)
	}
	want, err := json.Marshal(lib[:])
	require.NoError(t, err)
	got, err := json.Marshal(toDeviceStatuses(lib[:]))
	require.NoError(t, err)
	assert.JSONEq(t, string(want), string(got))

	var back []sidecarapi.DeviceStatus
	require.NoError(t, json.Unmarshal(got, &back))
	assert.Equal(t, toDeviceStatuses(lib[:]), back, "the client decodes what the sidecar encodes")

	empty, err := json.Marshal(toDeviceStatuses([]pkcs11ha.DeviceStatus{{Name: "d"}}))
	require.NoError(t, err)
	assert.Contains(t, string(empty), `"partitions":null`, "as the library's own JSON")
}

// TestRequestBodiesDecode: what the Go client sends (sidecarapi's request types) is what the sidecar's
// strict decoders accept.
func TestRequestBodiesDecode(t *testing.T) {
	b64 := func(n int) string { return base64.StdEncoding.EncodeToString(make([]byte, n)) }
	for _, req := range []sidecarapi.SignRequest{
		{Digest: b64(32), Algorithm: sidecarapi.AlgECDSASHA256},
		{Digest: b64(64), Algorithm: sidecarapi.AlgRSAPSSSHA512},
		{Message: b64(5), Algorithm: sidecarapi.AlgEd25519},
	} {
		body, err := json.Marshal(req)
		require.NoError(t, err)
		got, aerr := decodeSignRequest(body)
		require.Nil(t, aerr, "%s", body)
		assert.Equal(t, req.Algorithm, got.alg.name)
	}
	body, err := json.Marshal(sidecarapi.DecryptRequest{Ciphertext: b64(256), Algorithm: sidecarapi.AlgRSAOAEPSHA256})
	require.NoError(t, err)
	got, aerr := decodeDecryptRequest(body)
	require.Nil(t, aerr, "%s", body)
	assert.Len(t, got.ciphertext, 256)
}
