package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// selectorUse is one series selector in a rule, a rule test or a dashboard: the metric it names and the
// labels it matches on.
type selectorUse struct {
	metric string
	labels []string // label names of its matchers, __name__ excepted
	where  string   // file and rule or panel, for messages
}

var promql = parser.NewParser(parser.Options{})

// grafanaMacro matches Grafana's interval variables, replaced by a duration before parsing.
var grafanaMacro = regexp.MustCompile(`\$__(rate_interval|interval|range)\b`)

// selectorsOf parses expr (PromQL, possibly with Grafana variables) and returns its series selectors.
func selectorsOf(expr, where string) ([]selectorUse, error) {
	e, err := promql.ParseExpr(grafanaMacro.ReplaceAllString(expr, "5m"))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	var out []selectorUse
	var bad error
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		u := selectorUse{metric: vs.Name, where: where}
		for _, m := range vs.LabelMatchers {
			if m.Name != labels.MetricName {
				u.labels = append(u.labels, m.Name)
			} else if u.metric == "" && m.Type == labels.MatchEqual {
				u.metric = m.Value
			}
		}
		if u.metric == "" {
			bad = fmt.Errorf("%s: selector %s names no metric", where, vs)
		}
		out = append(out, u)
		return nil
	})
	return out, bad
}

// ruleFile is the part of a Prometheus rule file the tests read (promtool checks the rest).
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Record string            `yaml:"record"`
			Alert  string            `yaml:"alert"`
			Expr   string            `yaml:"expr"`
			Labels map[string]string `yaml:"labels"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// ruleTests is the part of a promtool rule test file the tests read: the input series.
type ruleTests struct {
	Tests []struct {
		InputSeries []struct {
			Series string `yaml:"series"`
		} `yaml:"input_series"`
	} `yaml:"tests"`
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(b, v), path)
}

var (
	alertsPath     = filepath.Join("prometheus", "alerts.yml")
	alertTestsPath = filepath.Join("prometheus", "alerts_test.yml")
	dashboardPath  = filepath.Join("grafana", "dashboard.json")
)

// ruleSelectors returns the selectors of every rule in alerts.yml and the names its recording rules
// define.
func ruleSelectors(t *testing.T) (uses []selectorUse, recorded []string) {
	t.Helper()
	var rf ruleFile
	readYAML(t, alertsPath, &rf)
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			name := r.Alert
			if r.Record != "" {
				name = r.Record
				recorded = append(recorded, r.Record)
			}
			s, err := selectorsOf(r.Expr, alertsPath+": "+name)
			require.NoError(t, err)
			uses = append(uses, s...)
		}
	}
	return uses, recorded
}

// ruleTestSelectors returns the input series of alerts_test.yml as selectors.
func ruleTestSelectors(t *testing.T) []selectorUse {
	t.Helper()
	var rt ruleTests
	readYAML(t, alertTestsPath, &rt)
	var uses []selectorUse
	for i, tc := range rt.Tests {
		for _, in := range tc.InputSeries {
			lbls, err := promql.ParseMetric(in.Series)
			require.NoError(t, err, "%s: test %d: %s", alertTestsPath, i, in.Series)
			u := selectorUse{metric: lbls.Get(labels.MetricName), where: fmt.Sprintf("%s: test %d", alertTestsPath, i)}
			lbls.Range(func(l labels.Label) {
				if l.Name != labels.MetricName {
					u.labels = append(u.labels, l.Name)
				}
			})
			uses = append(uses, u)
		}
	}
	return uses
}

// TestSelectorsOf: metric names are found inside functions, aggregations, binary operations with
// vector matching and range selectors; Grafana's interval variables parse.
func TestSelectorsOf(t *testing.T) {
	got, err := selectorsOf(`sum by (device) (rate(a_total{x="1"}[$__rate_interval]) * on (device) group_left () b{tier!="0"})
		/ ignoring (y) histogram_quantile(0.9, c_bucket) > 0 and absent({__name__="d", job="j"})`, "test")
	require.NoError(t, err)
	var names []string
	for _, u := range got {
		names = append(names, u.metric)
	}
	require.Equal(t, []string{"a_total", "b", "c_bucket", "d"}, names)
	require.Equal(t, []string{"tier"}, got[1].labels)
	_, err = selectorsOf(`rate({job="x"}[5m])`, "test")
	require.ErrorContains(t, err, "names no metric")
	_, err = selectorsOf(`rate(a[5m]`, "test")
	require.Error(t, err)
	require.True(t, slices.Contains(got[3].labels, "job"))
}
