package config

import (
	"errors"
	"strings"
	"testing"
)

// Defect 14: what the node refuses at first boot is refused by Parse (so by
// imgbuild --config, nodectl apply and netbootd), with the field path, its
// line and what to do.
func TestIgnitionRefusedAtValidation(t *testing.T) {
	for _, tc := range []struct{ name, ign, path, want string }{
		{"systemd unit", `systemd: {units: [{name: a.service, enabled: true}]}`,
			"ignition.systemd.units[0]", "ballast runs no systemd"},
		{"disk", `storage: {disks: [{device: /dev/sda, wipeTable: true}]}`,
			"ignition.storage.disks[0]", "the disk layout is imgbuild's"},
		{"filesystem", `storage: {filesystems: [{device: /dev/sdb1, format: ext4, path: /var/data}]}`,
			"ignition.storage.filesystems[0]", "not applied by ballast"},
		{"raid", `storage: {raid: [{name: md0, level: raid1, devices: [/dev/sdb, /dev/sdc]}]}`,
			"ignition.storage.raid[0]", "not applied by ballast"},
		{"luks", `storage: {luks: [{name: data, device: /dev/sdb}]}`,
			"ignition.storage.luks[0]", "not applied by ballast"},
		{"kernel arguments", `kernelArguments: {shouldExist: [quiet]}`,
			"ignition.kernelArguments.shouldExist", "set kernel arguments in the recipe (imgbuild)"},
		{"read-only image", `storage: {files: [{path: /etc/ok, contents: {source: "data:,x"}}, {path: /usr/bin/x, contents: {source: "data:,x"}}]}`,
			"ignition.storage.files[1].path", "/usr/bin/x is on the read-only system image: write under /etc, /var, /root, /home, /opt, /srv"},
		{"directory outside", `storage: {directories: [{path: /boot/x}]}`,
			"ignition.storage.directories[0].path", "/boot/x is on the read-only system image"},
		{"link outside", `storage: {links: [{path: /lib/x, target: /etc/x}]}`,
			"ignition.storage.links[0].path", "/lib/x is on the read-only system image"},
		{"kubernetes pki", `storage: {files: [{path: /etc/kubernetes/pki/ca.key, contents: {source: "data:,x"}}]}`,
			"ignition.storage.files[0].path", "/etc/kubernetes/pki/ca.key is managed by ballast: it is made by kubeadm: give the cluster CA in cluster.ca"},
		{"kubernetes dir", `storage: {directories: [{path: /etc/kubernetes}]}`,
			"ignition.storage.directories[0].path", "/etc/kubernetes is managed by ballast: it is the runtime's link to /var/lib/ballast/kubernetes"},
		{"resolv.conf", `storage: {files: [{path: /etc/resolv.conf, overwrite: true, contents: {source: "data:,x"}}]}`,
			"ignition.storage.files[0].path", "/etc/resolv.conf is managed by ballast: it is written by the agent"},
		{"hosts", `storage: {files: [{path: /etc/hosts, contents: {source: "data:,x"}}]}`,
			"ignition.storage.files[0].path", "/etc/hosts is managed by ballast"},
		{"passwd file", `storage: {files: [{path: /etc/passwd, contents: {source: "data:,x"}}]}`,
			"ignition.storage.files[0].path", "declare users in passwd.users"},
		{"machine-id", `storage: {files: [{path: /etc/machine-id, contents: {source: "data:,x"}}]}`,
			"ignition.storage.files[0].path", "/etc/machine-id is managed by ballast"},
		{"ballast state", `storage: {files: [{path: /var/lib/ballast/txn/history.json, contents: {source: "data:,x"}}]}`,
			"ignition.storage.files[0].path", "is managed by ballast: it holds the agent's state"},
		{"hard link across STATE", `storage: {links: [{path: /etc/x, target: /var/lib/x, hard: true}]}`,
			"ignition.storage.links[0].target", "a hard link cannot join STATE (/var) and the rest of the root"},
		{"tftp source", `storage: {files: [{path: /etc/x, contents: {source: "tftp://10.0.0.1/x"}}]}`,
			"ignition.storage.files[0].contents.source", `scheme "tftp" is not fetched by ballast: use data:, http: or https:`},
		{"s3 merge", `ignition: {version: 3.4.0, config: {merge: [{source: "s3://bucket/x.ign"}]}}`,
			"ignition.ignition.config.merge[0].source", `scheme "s3" is not fetched by ballast`},
		{"gs replace", `ignition: {version: 3.4.0, config: {replace: {source: "gs://bucket/x.ign"}}}`,
			"ignition.ignition.config.replace.source", `scheme "gs" is not fetched by ballast`},
		{"remove user", `passwd: {users: [{name: old, shouldExist: false}]}`,
			"ignition.passwd.users[0].shouldExist", "removing users is not supported"},
		{"Ignition's own checks, field path as elsewhere", `storage: {files: [{path: /etc/x, user: {id: 1, name: a}}]}`,
			"ignition.storage.files[0].user", "cannot set both id and name"},
		{"home outside", `passwd: {users: [{name: ops, homeDir: /usr/ops}]}`,
			"ignition.passwd.users[0].homeDir", "/usr/ops is on the read-only system image"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ign := tc.ign
			if !strings.HasPrefix(ign, "ignition:") {
				ign = "ignition: {version: 3.4.0}\n  " + ign
			}
			doc := "apiVersion: " + APIVersion + "\nkind: MachineConfig\nignition:\n  " + ign + "\n"
			_, _, err := Parse([]byte(doc))
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Parse = %v (%T), want field errors", err, err)
			}
			for _, e := range errs {
				if e.Path == tc.path && strings.Contains(e.Msg, tc.want) {
					if e.Line == 0 {
						t.Errorf("%v has no line", e)
					}
					return
				}
			}
			t.Fatalf("errors:\n%v\nwant %s: ...%s...", err, tc.path, tc.want)
		})
	}
}

// What the node applies passes: merge/replace over http(s) and data: (with
// or without a hash, as Ignition), the CA list, the proxy, files under
// /etc/kubernetes (written to STATE) and static pods of one's own.
func TestIgnitionAcceptedAtValidation(t *testing.T) {
	doc := `{"ignition": {"version": "3.4.0",
		"config": {"merge": [{"source": "https://pxe.example/a.ign", "verification": {"hash": "sha256-0000000000000000000000000000000000000000000000000000000000000000"}},
			{"source": "http://pxe.example/b.ign"}]},
		"security": {"tls": {"certificateAuthorities": [{"source": "data:,-----BEGIN"}]}},
		"proxy": {"httpProxy": "http://proxy.example:3128", "noProxy": [".internal"]},
		"timeouts": {"httpResponseHeaders": 20}},
	"storage": {"files": [
		{"path": "/etc/kubernetes/audit-policy.yaml", "contents": {"source": "data:,x"}},
		{"path": "/etc/kubernetes/manifests/haproxy.yaml", "contents": {"source": "https://pxe.example/haproxy.yaml"}},
		{"path": "/var/lib/app/x", "contents": {"source": "data:,x"}}]},
	"passwd": {"users": [{"name": "ops", "sshAuthorizedKeys": ["ssh-ed25519 AAAA"]}]}}`
	if _, _, err := Parse([]byte(doc)); err != nil {
		t.Fatal(err)
	}
}
