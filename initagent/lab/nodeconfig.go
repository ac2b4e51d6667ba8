package lab

import (
	"os"

	"gopkg.in/yaml.v3"
)

// nodeConfig is nodectl's nodeconfig format (see cmd/nodectl): the lab
// writes one listing every node, with paths relative to the lab directory.
type nodeConfig struct {
	Current string            `yaml:"current"`
	Nodes   []nodeConfigEntry `yaml:"nodes"`
}

type nodeConfigEntry struct {
	Name        string `yaml:"name"`
	Endpoint    string `yaml:"endpoint"`
	CA          string `yaml:"ca"`
	Certificate string `yaml:"certificate"`
	Key         string `yaml:"key"`
}

func (c nodeConfig) write(path string) error {
	data, err := yaml.Marshal(c)
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}
