package deploy

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apiserverv1 "k8s.io/apiserver/pkg/apis/apiserver/v1"
	"sigs.k8s.io/yaml"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarconfig"
)

// TestKubernetesKMS: the KMS v2 example fits together — the API server's EncryptionConfiguration (decoded
// strictly with k8s.io/apiserver's own types) names the socket the sidecar's config serves the door on,
// the static pod mounts that socket's directory from the host and reads that config, and the config is
// valid with a kms: key in a configured partition.
func TestKubernetesKMS(t *testing.T) {
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join("kubernetes", "kms", name))
		require.NoError(t, err)
		return b
	}
	var ec apiserverv1.EncryptionConfiguration
	require.NoError(t, yaml.UnmarshalStrict(read("encryption-config.yaml"), &ec))
	require.Equal(t, "EncryptionConfiguration", ec.Kind)
	require.Len(t, ec.Resources, 1)
	require.Contains(t, ec.Resources[0].Resources, "secrets")
	kms := ec.Resources[0].Providers[0].KMS
	require.NotNil(t, kms, "the KMS provider comes first: it encrypts new writes")
	require.Equal(t, "v2", kms.APIVersion)
	require.NotNil(t, ec.Resources[0].Providers[len(ec.Resources[0].Providers)-1].Identity, "identity last: data written before stays readable")

	cfg, err := sidecarconfig.Parse(read("config.yaml"))
	require.NoError(t, err)
	checked := *cfg // the vendor module is not on this machine: validate against a stand-in file
	checked.Devices = slices.Clone(cfg.Devices)
	module := filepath.Join(t.TempDir(), "libvendor.so")
	require.NoError(t, os.WriteFile(module, nil, 0o644))
	for i := range checked.Devices {
		checked.Devices[i].Module = module
	}
	checked.Partitions = slices.Clone(cfg.Partitions)
	for i := range checked.Partitions {
		checked.Partitions[i].PINFile = filepath.Join(t.TempDir(), "pin")
		require.NoError(t, os.WriteFile(checked.Partitions[i].PINFile, []byte("1234"), 0o600))
	}
	require.NoError(t, checked.Validate())
	require.Equal(t, kms.Endpoint, cfg.Server.KMS, "the API server dials the door's socket")
	require.NotNil(t, kms.Timeout)
	require.Less(t, cfg.Policy.RequestDeadline(), kms.Timeout.Duration, "the door answers before the API server gives up")

	var pod corev1.Pod
	require.NoError(t, yaml.UnmarshalStrict(read("static-pod.yaml"), &pod))
	require.Equal(t, "kube-system", pod.Namespace)
	c := pod.Spec.Containers[0]
	argv := append(slices.Clone(c.Command), c.Args...)
	require.Equal(t, "serve", argv[1])
	cfgPath := flagValue(argv, "--config")
	for _, path := range []string{cfgPath, cfg.Server.KMSSocket(), strings.TrimPrefix(cfg.Server.Listen, "unix://")} {
		m, v := mountOf(&pod.Spec, &c, path)
		require.NotNil(t, v, "a volume holds %s", path)
		require.NotNil(t, v.HostPath, "%s is on the host (a static pod, next to the API server)", path)
		assert.True(t, strings.HasPrefix(path, v.HostPath.Path+"/") || v.HostPath.Path == m.MountPath, "%s", path)
	}
	for _, p := range cfg.Partitions {
		m, v := mountOf(&pod.Spec, &c, p.PINFile)
		require.NotNil(t, v, "the PIN file %s is mounted", p.PINFile)
		assert.True(t, m.ReadOnly)
	}
	sc := c.SecurityContext
	require.NotNil(t, sc)
	assert.True(t, *sc.ReadOnlyRootFilesystem)
	assert.False(t, *sc.AllowPrivilegeEscalation)
	assert.Equal(t, []corev1.Capability{"ALL"}, sc.Capabilities.Drop)
}
