// Package deploy holds no code. Its tests check the deployment files next to it against the real
// things they describe:
//
//   - kubernetes/: every manifest decoded strictly with the Kubernetes API types, and the invariants of
//     the sidecar pattern (shared socket volume, exec probes, hardening, resources, the PIN Secret in the
//     sidecar only, a config the sidecar accepts);
//   - systemd/: `systemd-analyze verify` and its offline security review, the sysusers.d and tmpfiles.d
//     snippets applied to a scratch root;
//   - prometheus/: `promtool check rules`, `promtool test rules` and `promtool check config`;
//   - grafana/ and prometheus/ together: every metric and label the dashboard and the rules name exists
//     on a freshly started hsm-ha-proxy (built with `go build`, over the test harness's devices),
//     for every configured device, before any request.
//
// The PromQL is read with the Prometheus parser (github.com/prometheus/prometheus/promql/parser), so a
// metric name is found wherever it appears in an expression.
package deploy
