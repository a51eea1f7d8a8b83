package pkcs11ha

import (
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/internal/devicebackend"
)

// StuckCalls is the process-wide account of calls stuck in retired module instances.
type StuckCalls struct {
	Calls int64 `json:"calls"` // stuck calls, each holding an OS thread
	Limit int   `json:"limit"` // policy.max_stuck_calls of this cluster
	// OSThreads is the number of OS threads of the process (Linux: /proc/self/status; elsewhere the
	// threads the Go runtime has created), for comparison.
	OSThreads int `json:"os_threads"`
}

// StuckCalls reports the calls stuck in retired module instances over the whole process, with this
// cluster's cap; DeviceStatus.StuckCalls has them per device.
func (cl *Cluster) StuckCalls() StuckCalls {
	return StuckCalls{Calls: devicebackend.StuckTotal(), Limit: cl.s.own.MaxStuckCalls, OSThreads: osThreads()}
}

// osThreads reads Threads: from /proc/self/status, or falls back to the runtime's thread-creation count.
func osThreads() int {
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "Threads:"); ok {
				if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
					return n
				}
			}
		}
	}
	return pprof.Lookup("threadcreate").Count()
}

// stuckCollector exports the stuck-call account: pkcs11ha_stuck_calls{device}, pkcs11ha_stuck_calls_limit
// and pkcs11ha_os_threads, read at scrape time.
type stuckCollector struct {
	cl                      atomic.Pointer[Cluster] // set once the devices exist
	perDevice, limit, thrds *prometheus.Desc
}

func newStuckCollector() *stuckCollector {
	return &stuckCollector{
		perDevice: prometheus.NewDesc("pkcs11ha_stuck_calls", "Calls stuck in module instances retired by this device's re-inits (each holds an OS thread); they no longer count against the device.", []string{"device"}, nil),
		limit:     prometheus.NewDesc("pkcs11ha_stuck_calls_limit", "policy.max_stuck_calls: past it, no more instances are retired and their devices stay down.", nil, nil),
		thrds:     prometheus.NewDesc("pkcs11ha_os_threads", "OS threads of this process.", nil, nil),
	}
}

func (c *stuckCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.perDevice
	ch <- c.limit
	ch <- c.thrds
}

func (c *stuckCollector) Collect(ch chan<- prometheus.Metric) {
	cl := c.cl.Load()
	if cl == nil {
		return
	}
	for _, d := range cl.devices {
		ch <- prometheus.MustNewConstMetric(c.perDevice, prometheus.GaugeValue, float64(d.be.Counts().Stuck), d.name)
	}
	ch <- prometheus.MustNewConstMetric(c.limit, prometheus.GaugeValue, float64(cl.s.own.MaxStuckCalls))
	ch <- prometheus.MustNewConstMetric(c.thrds, prometheus.GaugeValue, float64(osThreads()))
}
