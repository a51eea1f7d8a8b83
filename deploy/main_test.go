package deploy

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if bin := os.Getenv(mdweExecEnv); bin != "" {
		// This process is only the wrapper that runs the sidecar under MemoryDenyWriteExecute.
		os.Exit(execWithMDWE(bin, os.Args[1:]))
	}
	if os.Getenv(tryWXEnv) != "" {
		os.Exit(tryWritableExecutable())
	}
	code := m.Run()
	removeBuiltBinary()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
