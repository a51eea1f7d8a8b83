package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// dashboard is the part of a Grafana dashboard JSON model the tests read.
type dashboard struct {
	Title         string `json:"title"`
	UID           string `json:"uid"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"` // a string, or {"query": ...} for query variables
			Datasource *datasourceRef  `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		ID         int                      `json:"id"`
		Type       string                   `json:"type"`
		Title      string                   `json:"title"`
		Datasource *datasourceRef           `json:"datasource"`
		GridPos    struct{ H, W, X, Y int } `json:"gridPos"`
		Targets    []struct {
			RefID      string         `json:"refId"`
			Expr       string         `json:"expr"`
			Datasource *datasourceRef `json:"datasource"`
		} `json:"targets"`
	} `json:"panels"`
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	require.NoError(t, err)
	var d dashboard
	require.NoError(t, json.Unmarshal(b, &d), dashboardPath)
	return d
}

// labelValues matches a query variable's label_values(SELECTOR, LABEL).
var labelValues = regexp.MustCompile(`^label_values\((.+),\s*([a-zA-Z_]\w*)\)$`)

// dashboardSelectors returns the selectors of every panel target and query variable.
func dashboardSelectors(t *testing.T, d dashboard) []selectorUse {
	t.Helper()
	var uses []selectorUse
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			s, err := selectorsOf(tg.Expr, fmt.Sprintf("%s: panel %q target %s", dashboardPath, p.Title, tg.RefID))
			require.NoError(t, err)
			uses = append(uses, s...)
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if json.Unmarshal(v.Query, &q) != nil {
			require.NoError(t, json.Unmarshal(v.Query, &q.Query), "variable %s: query", v.Name)
		}
		m := labelValues.FindStringSubmatch(q.Query)
		require.NotNil(t, m, "variable %s: want label_values(SELECTOR, LABEL), got %q", v.Name, q.Query)
		s, err := selectorsOf(m[1], fmt.Sprintf("%s: variable %s", dashboardPath, v.Name))
		require.NoError(t, err)
		for i := range s {
			s[i].labels = append(s[i].labels, m[2])
		}
		uses = append(uses, s...)
	}
	return uses
}

// TestDashboard: the dashboard is a Grafana JSON model whose panels each have a unique id, a place on
// the grid and PromQL that parses, all on the dashboard's data source variable, and it shows what an
// operator needs (the panels docs/operations.md promises).
func TestDashboard(t *testing.T) {
	d := readDashboard(t)
	assert.NotEmpty(t, d.UID)
	assert.GreaterOrEqual(t, d.SchemaVersion, 36, "a schema with data source references by uid")
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		if v.Type == "query" {
			assert.Equal(t, &datasourceRef{Type: "prometheus", UID: "${datasource}"}, v.Datasource, "variable %s", v.Name)
		}
	}
	assert.Equal(t, map[string]string{"datasource": "datasource", "job": "query", "instance": "query"}, vars)

	ids := map[int]bool{}
	titles := map[string]bool{}
	for _, p := range d.Panels {
		assert.False(t, ids[p.ID], "panel id %d is used twice", p.ID)
		ids[p.ID] = true
		titles[p.Title] = true
		assert.True(t, p.GridPos.W > 0 && p.GridPos.H > 0 && p.GridPos.X+p.GridPos.W <= 24, "panel %q: gridPos %+v", p.Title, p.GridPos)
		assert.Equal(t, &datasourceRef{Type: "prometheus", UID: "${datasource}"}, p.Datasource, "panel %q", p.Title)
		require.NotEmpty(t, p.Targets, "panel %q has no query", p.Title)
		for _, tg := range p.Targets {
			assert.Equal(t, p.Datasource, tg.Datasource, "panel %q target %s", p.Title, tg.RefID)
			assert.Contains(t, tg.Expr, `instance=~"$instance"`, "panel %q target %s follows the instance variable", p.Title, tg.RefID)
		}
	}
	for _, want := range []string{"Device state", "Breaker state", "Operations by device and tier", "Operation latency",
		"DR share", "Abandoned calls", "Retired module instances", "Hedges, failovers, retries, DR spills"} {
		assert.True(t, titles[want], "a panel %q", want)
	}
	uses := dashboardSelectors(t, d) // every expression parses
	assert.NotEmpty(t, uses)
}
