module github.com/ballast-os/ballast

go 1.26.8

require (
	github.com/klauspost/compress v1.20.4
	github.com/u-root/u-root v0.16.0
	golang.org/x/sys v0.50.0
	gopkg.in/yaml.v3 v3.0.1
)

require (
	github.com/coreos/ignition/v2 v2.24.0 // indirect
	github.com/dustin/go-humanize v1.0.1 // indirect
	github.com/google/renameio/v2 v2.0.2 // indirect
	github.com/insomniacslk/dhcp v0.0.0-20260901064844-234b97448fae // indirect
	github.com/pierrec/lz4/v4 v4.1.22 // indirect
	github.com/u-root/uio v0.0.0-20240224005618-d2acac8f3701 // indirect
	github.com/vishvananda/netlink v1.3.1 // indirect
	github.com/vishvananda/netns v0.0.5 // indirect
)
