package health

// Test-only access to internals, for the external test package (which may import fakeclock).

func SetTestHook(m *Monitor, f func(event string)) { m.testHook = f }

func ProbeRunning(m *Monitor) bool { return m.probing.Load() }
