package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// manifests are the objects of one file, by kind.
type manifests struct {
	configMaps  map[string]*corev1.ConfigMap
	deployments []*appsv1.Deployment
}

// decodeManifests decodes every document of a multi-document YAML strictly (unknown or duplicate fields
// are errors) into the Kubernetes API type of its kind.
func decodeManifests(data []byte) (manifests, error) {
	m := manifests{configMaps: map[string]*corev1.ConfigMap{}}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return m, nil
		}
		if err != nil {
			return m, err
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return m, err
		}
		switch tm.APIVersion + " " + tm.Kind {
		case "v1 ConfigMap":
			var cm corev1.ConfigMap
			if err := yaml.UnmarshalStrict(doc, &cm); err != nil {
				return m, err
			}
			m.configMaps[cm.Name] = &cm
		case "apps/v1 Deployment":
			var d appsv1.Deployment
			if err := yaml.UnmarshalStrict(doc, &d); err != nil {
				return m, err
			}
			m.deployments = append(m.deployments, &d)
		default:
			return m, errors.New("unexpected object " + tm.APIVersion + " " + tm.Kind)
		}
	}
}

// TestDecodeManifestsIsStrict: a misspelt field is an error, not a field silently dropped.
func TestDecodeManifestsIsStrict(t *testing.T) {
	tests := []struct {
		name, doc, err string
	}{
		{"valid", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\n", ""},
		{"unknown field", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndatas: {a: b}\n", `unknown field "datas"`},
		{"unknown nested field", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  template:\n    spec:\n      containers: [{name: a, securityContxt: {}}]\n",
			`unknown field "securityContxt"`},
		{"duplicate field", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\ndata: {c: d}\n", "already set"},
		{"unexpected kind", "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n", "unexpected object v1 Pod"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeManifests([]byte("---\n" + tt.doc))
			if tt.err == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.err)
		})
	}
}

// TestKubernetesManifests decodes every manifest under kubernetes/ strictly and checks the sidecar
// pattern's invariants in each Deployment.
func TestKubernetesManifests(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("kubernetes", "*.yaml"))
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(files), 2, "the HTTP API and the PKCS#11 front end variants")
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			require.NoError(t, err)
			m, err := decodeManifests(data)
			require.NoError(t, err)
			require.NotEmpty(t, m.deployments)
			for _, d := range m.deployments {
				t.Run(d.Name, func(t *testing.T) { checkSidecarPod(t, &d.Spec.Template.Spec, m.configMaps) })
			}
		})
	}
}

// checkSidecarPod checks one pod template with the hsm-ha-proxy sidecar.
func checkSidecarPod(t *testing.T, pod *corev1.PodSpec, configMaps map[string]*corev1.ConfigMap) {
	i := slices.IndexFunc(pod.InitContainers, func(c corev1.Container) bool { return c.Name == "hsm-ha-proxy" })
	require.GreaterOrEqual(t, i, 0, "an init container hsm-ha-proxy (the name prometheus/prometheus.yml selects)")
	side := &pod.InitContainers[i]
	require.NotNil(t, side.RestartPolicy)
	require.Equal(t, corev1.ContainerRestartPolicyAlways, *side.RestartPolicy, "a native sidecar: started before the app, stopped after it")
	require.NotEmpty(t, pod.Containers, "an application container")
	argv := append(slices.Clone(side.Command), side.Args...)
	require.GreaterOrEqual(t, len(argv), 2)
	bin := argv[0]
	require.True(t, filepath.IsAbs(bin), "the binary by absolute path: %q", bin)
	require.Equal(t, "serve", argv[1])

	cfgPath := flagValue(argv, "--config")
	cmName, key := configMapFile(t, pod, side, cfgPath)
	cm := configMaps[cmName]
	require.NotNil(t, cm, "ConfigMap %s in the same file", cmName)
	require.Contains(t, cm.Data, key)
	sc := parseSidecarConfig(t, []byte(cm.Data[key]))

	checkMetricsPort(t, side, flagValue(argv, "--metrics-addr"))
	checkSocketVolume(t, pod, side, sc)
	checkProbes(t, side, bin, strings.TrimPrefix(sc.listen, "unix://"))
	checkSecurity(t, pod, sc)
	checkPINSecret(t, pod, side, sc)
	for _, c := range allContainers(pod) {
		r := c.Resources
		assert.False(t, r.Requests.Cpu().IsZero(), "%s: a CPU request", c.Name)
		assert.False(t, r.Requests.Memory().IsZero(), "%s: a memory request", c.Name)
		assert.False(t, r.Limits.Memory().IsZero(), "%s: a memory limit", c.Name)
	}
	require.NotNil(t, pod.TerminationGracePeriodSeconds)
	assert.Greater(t, time.Duration(*pod.TerminationGracePeriodSeconds)*time.Second, sc.shutdownGrace,
		"in-flight requests get server.shutdown_grace before the kubelet kills the sidecar")
}

func allContainers(pod *corev1.PodSpec) []*corev1.Container {
	var out []*corev1.Container
	for i := range pod.InitContainers {
		out = append(out, &pod.InitContainers[i])
	}
	for i := range pod.Containers {
		out = append(out, &pod.Containers[i])
	}
	return out
}

// flagValue returns the argument after name in argv ("" when absent).
func flagValue(argv []string, name string) string {
	if i := slices.Index(argv, name); i >= 0 && i+1 < len(argv) {
		return argv[i+1]
	}
	return ""
}

// mountOf returns c's mount of the deepest directory holding path, and the pod volume it mounts.
func mountOf(pod *corev1.PodSpec, c *corev1.Container, path string) (*corev1.VolumeMount, *corev1.Volume) {
	var best *corev1.VolumeMount
	for i, m := range c.VolumeMounts {
		if strings.HasPrefix(path, strings.TrimSuffix(m.MountPath, "/")+"/") && (best == nil || len(m.MountPath) > len(best.MountPath)) {
			best = &c.VolumeMounts[i]
		}
	}
	if best == nil {
		return nil, nil
	}
	for i := range pod.Volumes {
		if pod.Volumes[i].Name == best.Name {
			return best, &pod.Volumes[i]
		}
	}
	return best, nil
}

// configMapFile returns the ConfigMap and key that the sidecar's --config path is.
func configMapFile(t *testing.T, pod *corev1.PodSpec, side *corev1.Container, cfgPath string) (string, string) {
	require.NotEmpty(t, cfgPath, "serve --config PATH")
	m, v := mountOf(pod, side, cfgPath)
	require.NotNil(t, v, "a volume holds %s", cfgPath)
	require.NotNil(t, v.ConfigMap, "the config comes from a ConfigMap")
	assert.True(t, m.ReadOnly, "the config is mounted read-only")
	rel := strings.TrimPrefix(cfgPath, strings.TrimSuffix(m.MountPath, "/")+"/")
	for _, it := range v.ConfigMap.Items {
		if it.Path == rel {
			return v.ConfigMap.Name, it.Key
		}
	}
	return v.ConfigMap.Name, rel
}

// checkMetricsPort: --metrics-addr listens on the container port named "metrics" (the port
// prometheus/prometheus.yml scrapes).
func checkMetricsPort(t *testing.T, side *corev1.Container, addr string) {
	require.NotEmpty(t, addr, "serve --metrics-addr: Prometheus cannot scrape the unix socket")
	_, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	i := slices.IndexFunc(side.Ports, func(p corev1.ContainerPort) bool { return p.Name == "metrics" })
	require.GreaterOrEqual(t, i, 0, "a container port named metrics")
	assert.Equal(t, port, strconv.Itoa(int(side.Ports[i].ContainerPort)))
}

// checkSocketVolume: the sockets are in an emptyDir that every application container mounts at the same
// path, and each application is told where its socket is.
func checkSocketVolume(t *testing.T, pod *corev1.PodSpec, side *corev1.Container, sc sidecarConfig) {
	require.True(t, strings.HasPrefix(sc.listen, "unix://"), "server.listen is a unix socket: %q", sc.listen)
	sockets := []string{strings.TrimPrefix(sc.listen, "unix://")}
	if sc.pkcs11 != "" {
		require.True(t, strings.HasPrefix(sc.pkcs11, "unix://"), "server.pkcs11 is a unix socket: %q", sc.pkcs11)
		sockets = append(sockets, strings.TrimPrefix(sc.pkcs11, "unix://"))
	}
	m, v := mountOf(pod, side, sockets[0])
	require.NotNil(t, v, "a volume holds the socket %s", sockets[0])
	require.NotNil(t, v.EmptyDir, "the socket volume is an emptyDir: only this pod sees it")
	assert.False(t, m.ReadOnly)
	for _, s := range sockets[1:] {
		_, v2 := mountOf(pod, side, s)
		require.NotNil(t, v2)
		assert.Equal(t, v.Name, v2.Name, "both sockets in the shared volume")
	}
	for i := range pod.Containers {
		app := &pod.Containers[i]
		am, av := mountOf(pod, app, sockets[0])
		require.NotNil(t, av, "%s mounts the socket volume", app.Name)
		assert.Equal(t, v.Name, av.Name, app.Name)
		assert.Equal(t, m.MountPath, am.MountPath, "%s sees the socket at the sidecar's path", app.Name)
		var told []string
		for _, e := range app.Env {
			switch {
			case e.Name == "HSM_HA_PROXY_SOCKET" && e.Value == sockets[0]:
				told = append(told, "api")
			case sc.pkcs11 != "" && e.Name == "P11_KIT_SERVER_ADDRESS":
				require.Equal(t, "unix:path="+sockets[1], e.Value, "%s: p11-kit-client.so's address is the PKCS#11 socket", app.Name)
				told = append(told, "pkcs11")
			}
		}
		assert.NotEmpty(t, told, "%s is told where its socket is (HSM_HA_PROXY_SOCKET or P11_KIT_SERVER_ADDRESS)", app.Name)
	}
}

// checkProbes: readiness and liveness (and startup, if any) exec `status --socket SOCK --ready|--live`
// with a --timeout shorter than the probe's.
func checkProbes(t *testing.T, side *corev1.Container, bin, sock string) {
	for _, pr := range []struct {
		name  string
		probe *corev1.Probe
		flag  string
		must  bool
	}{
		{"readinessProbe", side.ReadinessProbe, "--ready", true},
		{"livenessProbe", side.LivenessProbe, "--live", true},
		{"startupProbe", side.StartupProbe, "--live", false},
	} {
		if pr.probe == nil {
			assert.False(t, pr.must, "a %s", pr.name)
			continue
		}
		require.NotNil(t, pr.probe.Exec, "%s: exec (a kubelet cannot send HTTP over a unix socket)", pr.name)
		cmd := pr.probe.Exec.Command
		require.GreaterOrEqual(t, len(cmd), 2, pr.name)
		assert.Equal(t, []string{bin, "status"}, cmd[:2], pr.name)
		assert.Equal(t, sock, flagValue(cmd, "--socket"), pr.name)
		assert.Contains(t, cmd, pr.flag, pr.name)
		timeout, err := time.ParseDuration(flagValue(cmd, "--timeout"))
		require.NoError(t, err, "%s: status --timeout (the default 5s is longer than a probe's)", pr.name)
		assert.Less(t, timeout, time.Duration(pr.probe.TimeoutSeconds)*time.Second, "%s: answers within timeoutSeconds", pr.name)
	}
}

// checkSecurity: non-root everywhere with the uid the config grants, no privilege escalation, no
// capabilities, read-only root filesystems, the runtime's seccomp profile, and no way for the app to
// reach into the sidecar (no shared process namespace, no host namespaces, no API token).
func checkSecurity(t *testing.T, pod *corev1.PodSpec, sc sidecarConfig) {
	psc := pod.SecurityContext
	require.NotNil(t, psc)
	assert.False(t, pod.ShareProcessNamespace != nil && *pod.ShareProcessNamespace, "shareProcessNamespace: the app shares the sidecar's uid")
	assert.False(t, pod.HostNetwork || pod.HostPID || pod.HostIPC)
	require.NotNil(t, pod.AutomountServiceAccountToken)
	assert.False(t, *pod.AutomountServiceAccountToken)
	uid := func(c *corev1.Container) int64 {
		if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
			return *c.SecurityContext.RunAsUser
		}
		require.NotNil(t, psc.RunAsUser, "%s: a uid", c.Name)
		return *psc.RunAsUser
	}
	sideUID := int64(-1)
	for _, c := range allContainers(pod) {
		csc := c.SecurityContext
		require.NotNil(t, csc, c.Name)
		nonRoot := csc.RunAsNonRoot
		if nonRoot == nil {
			nonRoot = psc.RunAsNonRoot
		}
		assert.True(t, nonRoot != nil && *nonRoot, "%s: runAsNonRoot", c.Name)
		assert.NotZero(t, uid(c), c.Name)
		assert.True(t, csc.AllowPrivilegeEscalation != nil && !*csc.AllowPrivilegeEscalation, "%s: allowPrivilegeEscalation false", c.Name)
		assert.True(t, csc.ReadOnlyRootFilesystem != nil && *csc.ReadOnlyRootFilesystem, "%s: readOnlyRootFilesystem", c.Name)
		assert.False(t, csc.Privileged != nil && *csc.Privileged, c.Name)
		require.NotNil(t, csc.Capabilities, c.Name)
		assert.Equal(t, []corev1.Capability{"ALL"}, csc.Capabilities.Drop, "%s: drops every capability", c.Name)
		assert.Empty(t, csc.Capabilities.Add, c.Name)
		sp := csc.SeccompProfile
		if sp == nil {
			sp = psc.SeccompProfile
		}
		assert.True(t, sp != nil && sp.Type == corev1.SeccompProfileTypeRuntimeDefault, "%s: seccomp RuntimeDefault", c.Name)
		if c.Name == "hsm-ha-proxy" {
			sideUID = uid(c)
		}
	}
	for i := range pod.Containers {
		app := &pod.Containers[i]
		u := uid(app)
		assert.Equal(t, sideUID, u, "%s runs as the sidecar's uid: the socket is 0600", app.Name)
		assert.NotEmpty(t, sc.clients[int(u)], "%s's uid %d is granted partitions in clients:", app.Name, u)
	}
}

// checkPINSecret: every partition's PIN is a pin_file in a Secret volume mounted read-only into the
// sidecar only, with no access for others.
func checkPINSecret(t *testing.T, pod *corev1.PodSpec, side *corev1.Container, sc sidecarConfig) {
	assert.Empty(t, sc.otherPINs, "partitions with an inline or environment PIN: a PIN in a ConfigMap or the pod spec is a leak")
	for part, file := range sc.pinFiles {
		m, v := mountOf(pod, side, file)
		require.NotNil(t, v, "partition %s: a volume holds %s", part, file)
		require.NotNil(t, v.Secret, "partition %s: the PIN comes from a Secret", part)
		assert.True(t, m.ReadOnly, "partition %s: the PIN Secret is mounted read-only", part)
		require.NotNil(t, v.Secret.DefaultMode, "partition %s: the Secret's file mode is set", part)
		assert.Zero(t, *v.Secret.DefaultMode&0o137, "partition %s: mode %#o (at most 0440)", part, *v.Secret.DefaultMode)
		for i := range pod.Containers {
			for _, am := range pod.Containers[i].VolumeMounts {
				assert.NotEqual(t, v.Name, am.Name, "the PIN Secret is not mounted into %s", pod.Containers[i].Name)
			}
		}
	}
}
