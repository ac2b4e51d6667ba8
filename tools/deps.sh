#!/bin/sh
# Installs the Debian packages ballast builds and tests with, only those missing.
# Usage: tools/deps.sh [build|test]   (default: test, which includes build)
set -eu
# gcc, libc6-dev, libseccomp-dev and pkg-config build the static runc (with seccomp) of the Kubernetes payload.
build="apt dpkg kmod ca-certificates squashfs-tools e2fsprogs systemd-boot-efi isolinux syslinux-common grub-pc-bin grub-common gcc libc6-dev libseccomp-dev pkg-config"
test="qemu-system-x86 busybox-static iproute2 iputils-ping dnsmasq-base dnsutils curl nftables dosfstools mtools genisoimage e2fsprogs mount util-linux keepalived haproxy nginx-light ipxe ovmf dnsperf xorriso file cpio"
want="$build"
[ "${1:-test}" = test ] && want="$build $test"
missing=""
for p in $want; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "missing Debian packages:$missing" >&2
	echo "run as root: apt-get install -y$missing" >&2
	exit 1
fi
echo "installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing
