package dns

import (
	"os"
	"testing"

	"github.com/ballast-os/ballast/initagent/internal/nstest"
)

// TestMain runs every test in a throwaway network namespace, where the
// servers listen on 127.0.0.x:53 without touching the host.
func TestMain(m *testing.M) { os.Exit(nstest.Main(m)) }
