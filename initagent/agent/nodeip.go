package agent

import (
	"fmt"
	"path/filepath"
	"sync"

	"github.com/ballast-os/ballast/initagent/config"
	"github.com/ballast-os/ballast/initagent/nodeip"
)

// nodeIPState holds the latest nodeIP decision for the API.
type nodeIPState struct {
	mu sync.Mutex
	d  *nodeip.Decision
}

func (s *nodeIPState) get() *nodeip.Decision {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.d
}

// decideNodeIP chooses the node's addresses from the kernel's state and the
// config, keeps the previous choice while it holds (sticky), logs a change
// with its reason, and stores the decision for the next boot.
func (a *Agent) decideNodeIP(cfg *config.MachineConfig) (*nodeip.Decision, error) {
	hints := nodeip.Hints{}
	if cfg != nil {
		var err error
		if hints, err = nodeip.HintsFromConfig(cfg); err != nil {
			return nil, err
		}
	}
	k, err := nodeip.Snapshot(nil)
	if err != nil {
		return nil, fmt.Errorf("nodeip: %w", err)
	}
	store := nodeip.Store{Path: filepath.Join(a.Root, "var/lib/ballast/nodeip.json")}
	prev, err := store.Load()
	if err != nil {
		a.Log.Warn("nodeip: previous decision unreadable, deciding afresh", "err", err)
	}
	d := nodeip.Decide(nodeip.Input{Kernel: k, Hints: hints, Previous: prev})
	for _, w := range d.Warnings {
		a.Log.Warn("nodeip", "warning", w)
	}
	if d.Changed {
		a.Log.Info("nodeip decided", "kubelet", d.KubeletArg(), "reason", d.Reason)
	}
	if err := store.Save(d); err != nil {
		a.Log.Error("nodeip: store decision", "err", err)
	}
	a.nodeIP.mu.Lock()
	a.nodeIP.d = &d
	a.nodeIP.mu.Unlock()
	return &d, nil
}
