package timeline

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRecorder(t *testing.T) {
	r := NewRecorder("recorded", map[string]bool{"a": true})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 250 {
				var err error
				if i%50 == 0 {
					err = errors.New("boom")
				}
				r.Add(time.Now(), time.Duration(w+1)*time.Millisecond, []string{"a", "b"}[i%2], err)
			}
		}()
	}
	r.Mark("step 1")
	r.BandStart("out")
	r.BandStart("out") // still open: keeps its start
	r.BandEnd("never opened")
	r.BandStart("still open")
	wg.Wait()
	r.BandEnd("out")
	run := r.Run()

	require.Len(t, run.Samples, 1000)
	failed := 0
	for _, s := range run.Samples {
		if s.Err {
			failed++
		}
	}
	assert.Equal(t, 4*5, failed)
	assert.Equal(t, "recorded", run.Title)
	require.Len(t, run.Markers, 1)
	assert.Equal(t, "step 1", run.Markers[0].Label)
	require.Len(t, run.Bands, 2, "the closed band and the one still open")
	assert.Equal(t, "out", run.Bands[0].Label)
	assert.Equal(t, "still open", run.Bands[1].Label)
	for _, b := range run.Bands {
		assert.False(t, b.To.Before(b.From), "band %q", b.Label)
		assert.False(t, b.From.Before(run.Origin), "band %q starts after the origin", b.Label)
	}

	// The copy is the recorder's no longer.
	run.Samples[0].Device = "changed"
	assert.NotEqual(t, "changed", r.Run().Samples[0].Device)

	svgPath, pngPath, err := Render(run, outDir(t), "recorder")
	require.NoError(t, err)
	assert.Contains(t, svgTexts(t, svgPath), "step 1")
	checkPNG(t, pngPath)
}
