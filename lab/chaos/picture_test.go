package chaos

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/pkcs11-ha/pkcs11-ha/lab/timeline"
)

// timelineDir is where the scenarios' pictures go: chaos-timelines/ next to the results table.
func timelineDir(resultsPath string) string {
	return filepath.Join(filepath.Dir(resultsPath), "chaos-timelines")
}

// writeTimeline draws the scenario's run (see Recorder.Timeline) into dir/<scenario>.svg and .png. It
// runs as a cleanup once the load has stopped, so that a scenario that failed half-way is drawn too.
func (e *env) writeTimeline(dir string) {
	if e.rec == nil || dir == "" {
		return
	}
	local := map[string]bool{}
	for _, d := range e.cfg.Devices {
		local[d.Name] = !e.isDR(d.Name)
	}
	title := fmt.Sprintf("chaos scenario %s (%s policy)", e.sc.name, e.sc.policy.name)
	if e.t.Failed() {
		title += ": FAILED"
	}
	base := strings.ReplaceAll(e.sc.name, "/", "-")
	svgPath, pngPath, err := timeline.Render(e.rec.Timeline(title, local), dir, base)
	if err != nil {
		e.t.Errorf("timeline picture: %v", err)
		return
	}
	e.t.Logf("timeline picture: %s, %s", svgPath, pngPath)
}
