// Package timeline draws what a failover looks like, from recorded calls, as SVG and PNG pictures (with
// gonum.org/v1/plot) that can be pasted into a design review.
//
// Render draws one run in two panels over a shared time axis: on top every call's latency as a point on a
// log scale, coloured by the device that served it (local devices in blues and greens, DR devices in reds
// and oranges, failed calls as black crosses); below, the calls per second each device served, stacked,
// with the failed calls on top. Every scripted step (Marker) is a labelled vertical line through both
// panels and every fault window (Band) a shaded stretch. RenderCDF compares latency distributions (for
// instance one slow device with and without hedging) as latency against percentile on a "nines" scale.
//
// The package knows nothing about devices or PKCS#11: callers convert what they recorded (the chaos
// suite's Recorder, the benchmark's operations), or collect it with this package's Recorder. It is used by
// the chaos suite, the benchmarks and the demo, never by the deployed proxy.
package timeline
