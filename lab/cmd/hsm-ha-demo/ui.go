package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/sidecarapi"
	softhsmtest "github.com/pkcs11-ha/pkcs11-ha/softhsm-test"
)

// screen serialises the demo's output. On a terminal the status table stays at the bottom and is redrawn
// in place; event lines are printed above it. Elsewhere everything is plain lines, without escapes.
type screen struct {
	mu    sync.Mutex
	w     io.Writer
	tty   bool
	width int      // terminal columns (0: unknown)
	table []string // the table currently drawn at the bottom (tty only)
	drawn int      // how many lines of it are on the screen
}

func newScreen(w io.Writer, tty bool) *screen {
	s := &screen{w: w, tty: tty}
	if tty {
		s.width = termWidth(w)
	}
	return s
}

// event prints text (one or more lines) above the table.
func (s *screen) event(text string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b bytes.Buffer
	s.eraseLocked(&b)
	b.WriteString(text)
	b.WriteByte('\n')
	s.drawLocked(&b)
	_, _ = s.w.Write(b.Bytes())
}

// setTable replaces the table: redrawn in place on a terminal, printed as plain lines elsewhere.
func (s *screen) setTable(lines []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b bytes.Buffer
	if !s.tty {
		for _, l := range lines {
			b.WriteString(l)
			b.WriteByte('\n')
		}
		_, _ = s.w.Write(b.Bytes())
		return
	}
	s.eraseLocked(&b)
	s.table = lines
	s.drawLocked(&b)
	_, _ = s.w.Write(b.Bytes())
}

// freeze leaves the table where it is: later events are printed below it.
func (s *screen) freeze() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.table, s.drawn = nil, 0
}

func (s *screen) eraseLocked(b *bytes.Buffer) {
	if s.tty && s.drawn > 0 {
		fmt.Fprintf(b, "\x1b[%dF\x1b[J", s.drawn) // to the start of the table's first line; clear to the end
		s.drawn = 0
	}
}

func (s *screen) drawLocked(b *bytes.Buffer) {
	if !s.tty {
		return
	}
	for _, l := range s.table {
		if s.width > 1 && len(l) >= s.width {
			l = l[:s.width-1] // a wrapped line would break the redraw
		}
		b.WriteString(l)
		b.WriteByte('\n')
	}
	s.drawn = len(s.table)
}

// tableLoop polls /v1/status every second and shows the device table until ctx ends.
func (d *demo) tableLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		sctx, cancel := context.WithTimeout(ctx, 900*time.Millisecond)
		st, err := d.client.Status(sctx)
		cancel()
		if ctx.Err() != nil {
			d.scr.freeze()
			return
		}
		d.scr.setTable(d.renderTable(st, err))
		select {
		case <-ctx.Done():
			d.scr.freeze()
			return
		case <-t.C:
		}
	}
}

// renderTable formats the device table: the sidecar's view (state, breaker, EWMA) next to the load's own
// count of signatures per device and second.
func (d *demo) renderTable(st *sidecarapi.Status, stErr error) []string {
	rates, total := d.load.rates()
	okN, failed, _ := d.load.totals()
	elapsed := time.Since(d.t0)

	var b bytes.Buffer
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tREGION\tTIER\tSTATE\tBREAKER\tEWMA\tOPS/S\tIN-FLIGHT\tABANDONED\tNOTE")
	var devices []sidecarapi.DeviceStatus
	if st != nil {
		devices = st.Devices
	}
	for _, name := range d.load.devices {
		i := slices.IndexFunc(devices, func(ds sidecarapi.DeviceStatus) bool { return ds.Name == name })
		dev := d.topo.Device(name)
		if i < 0 {
			fmt.Fprintf(tw, "%s\t?\t?\t?\t?\t?\t%.0f\t?\t?\t%s\n", name, rates[name], deviceNote(dev, ""))
			continue
		}
		ds := devices[i]
		tier := fmt.Sprintf("%d local", ds.Tier)
		if ds.Tier != 0 {
			tier = fmt.Sprintf("%d DR", ds.Tier)
		}
		note := ""
		if ds.State != "up" {
			note = ds.Reason
			if note == "" {
				note = ds.LastError
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%.0f\t%d\t%d\t%s\n", ds.Name, ds.Region, tier, ds.State, ds.Breaker,
			sidecarapi.FormatLatency(ds.EWMA), rates[name], ds.InFlight, ds.Abandoned, deviceNote(dev, note))
	}
	_ = tw.Flush()
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	summary := fmt.Sprintf("[%5.1fs] load %.0f signatures/s | %d ok | %d failed", elapsed.Seconds(), total, okN-failed, failed)
	switch {
	case stErr != nil:
		summary += " | status: " + sidecarapi.OneLine(stErr.Error(), 60)
	case st != nil && !st.Ready:
		summary += " | sidecar not ready"
	}
	if d.scr.tty {
		if d.opts.duration > 0 {
			summary += fmt.Sprintf(" | stops after %v", d.opts.duration)
		}
		summary += " | Ctrl-C to stop"
		return append([]string{""}, append(lines, summary)...)
	}
	// Plain lines: the summary first, then the table, indented.
	out := []string{summary}
	for _, l := range lines {
		out = append(out, "  "+l)
	}
	return out
}

// deviceNote says what the script did to a device (the harness knows; the sidecar only sees effects),
// then the sidecar's reason.
func deviceNote(dev *softhsmtest.Device, reason string) string {
	var what string
	switch {
	case dev == nil:
	case dev.Paused():
		what = "[paused: SIGSTOP]"
	case !dev.Running():
		what = "[killed]"
	}
	reason = sidecarapi.OneLine(reason, 70)
	switch {
	case what == "":
		return reason
	case reason == "":
		return what
	}
	return what + " " + reason
}
