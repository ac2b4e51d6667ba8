package image

// Manifest records every input and output of a build with its sha256. It
// holds no times or host paths, so it is reproducible too.
type Manifest struct {
	Recipe  ManifestRecipe `json:"recipe"`
	Kernel  ManifestKernel `json:"kernel"`
	Go      string         `json:"go"`
	Modules []string       `json:"modules"`
	Drivers []string       `json:"drivers,omitempty"` // loaded when a device needs them
	// Microcode is the early cpio at the start of initramfs.img.
	Microcode []ManifestMicrocode `json:"microcode,omitempty"`
	Inputs    []ManifestFileEntry `json:"inputs"`
	Outputs   []ManifestFileEntry `json:"outputs"`
}

type ManifestRecipe struct {
	Name   string `json:"name"`
	Source string `json:"source"` // "embedded:NAME.yaml" or the path given
	SHA256 string `json:"sha256"`
}

type ManifestKernel struct {
	Release string `json:"release"`
	Source  string `json:"source"` // "debian:<package>=<version>" or "local:<path>"
}

type ManifestFileEntry struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

type ManifestMicrocode struct {
	Vendor  string `json:"vendor"`
	Source  string `json:"source"` // "debian:<package>=<version>"
	Name    string `json:"name"`   // path in the early cpio
	Patches int    `json:"patches"`
	Size    int64  `json:"size"`
	SHA256  string `json:"sha256"`
}
