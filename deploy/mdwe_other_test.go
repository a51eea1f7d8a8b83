//go:build !linux

package deploy

import (
	"fmt"
	"os"
)

const mdweExecEnv = "DEPLOY_TEST_EXEC_WITH_MDWE"

const tryWXEnv = "DEPLOY_TEST_TRY_WX"

func tryWritableExecutable() int { return 1 }

func mdweSupported() bool { return false }

func execWithMDWE(string, []string) int {
	fmt.Fprintln(os.Stderr, "PR_SET_MDWE is Linux only")
	return 111
}
