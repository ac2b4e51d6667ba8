package boot

import (
	"fmt"
	"os"
	"path/filepath"
)

// PromoteSecondaries makes the kernel keep the other IPv4 addresses of a
// subnet when the first one is removed (net.ipv4.conf.all.promote_secondaries):
// by default deleting the primary address deletes every secondary of its
// subnet too, so dropping a DHCP lease would take a static address added
// next to it with it. "all" is ORed with each interface's own setting.
func PromoteSecondaries(root string) error {
	for _, conf := range []string{"all", "default"} {
		p := filepath.Join(root, "proc/sys/net/ipv4/conf", conf, "promote_secondaries")
		if err := os.WriteFile(p, []byte("1\n"), 0o644); err != nil {
			return fmt.Errorf("promote_secondaries: %w", err)
		}
	}
	return nil
}
