package pkcs11ha_test

import (
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestPublicAPIHidesRouter: the library's documented API (go doc -all) names no type of the router or the
// health checks, whose packages are the library's insides (docs/ARCHITECTURE.md, "Device backend": the
// routing class travels unexported). A FailoverClass method on a public error, or a field of type
// failover.Config, would put them back.
func TestPublicAPIHidesRouter(t *testing.T) {
	out, err := exec.Command("go", "doc", "-all", ".").CombinedOutput()
	require.NoError(t, err, "%s", out)
	doc := string(out)
	require.Contains(t, doc, "func Open(", "go doc printed the package")
	// A package-qualified identifier, not a config key such as policy.health.timeout.
	qualified := regexp.MustCompile(`(^|[^.\w])(failover|health)\.[A-Z]\w*`)
	for _, line := range strings.Split(doc, "\n") {
		assert.False(t, qualified.MatchString(line), "the public API names the router's insides: %q", line)
	}
}
