#!/usr/bin/env bash
# Makes the Debian guest's root filesystem in ROOT from the Debian archive only:
# debootstrap (minbase + what a cloud guest has), then this directory's files/ and a few
# systemctl enable/mask calls in a chroot (nothing is mounted).
#   guest/debian/rootfs.sh ROOT
# VM_DEBIAN_MIRROR (default http://deb.debian.org/debian), VM_DEBIAN_SUITE (bookworm),
# VM_DEBIAN_CACHE (/var/cache/vm-service/debootstrap: .debs kept for the next build).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$1"
mirror="${VM_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite="${VM_DEBIAN_SUITE:-bookworm}"
cache="${VM_DEBIAN_CACHE:-/var/cache/vm-service/debootstrap}"
# python3-cffi-backend: cloud-init's python3-cryptography needs a virtual package that
# debootstrap does not resolve; kmod: minbase has no modprobe, so udev could not load modules;
# libnss-myhostname: the hostname (the VM id, new in every clone) resolves without /etc/hosts (sudo asks).
pkgs="systemd-sysv,udev,kmod,dbus,libnss-myhostname,openssh-server,openssh-sftp-server,cloud-init,python3-cffi-backend,cloud-guest-utils,fdisk,
e2fsprogs,iproute2,netbase,ca-certificates,procps,sudo,less,bash,coreutils,findutils,grep,tar,zip,unzip,python3,git,curl,
linux-image-amd64"
mkdir -p "$cache"
debootstrap --cache-dir="$cache" --variant=minbase --include="$(echo "$pkgs" | tr -d '\n ')" "$suite" "$root" "$mirror"

cp -a "$here/files/." "$root/"
cat > "$root/etc/apt/sources.list" <<SRC
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
SRC
chroot "$root" systemctl enable systemd-networkd.service vm-id.service vm-ready.service >/dev/null
# Timers and scrubbers a short-lived VM does not need (each costs seconds of boot under TCG).
chroot "$root" systemctl mask e2scrub_reap.service e2scrub_all.timer apt-daily.timer apt-daily-upgrade.timer \
  dpkg-db-backup.timer fstrim.timer man-db.timer >/dev/null
# Per-VM identity is made at first boot: host keys by cloud-init, machine-id by systemd.
rm -f "$root"/etc/ssh/ssh_host_*
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
# The service boots the image with its own initramfs (and the Debian kernel): Debian's is
# not needed. Drivers a VM never has, docs and apt's caches go too.
rm -f "$root"/boot/initrd.img-*
for d in "$root"/lib/modules/*/kernel/drivers; do
  rm -rf "$d"/{gpu,media,net/wireless,infiniband,staging,sound,bluetooth,iio,isdn,hid,input/touchscreen,input/joystick,usb/gadget}
done
rm -rf "$root"/lib/modules/*/kernel/sound
# The guest's own depmod (kmod is in the image; a bare host may not have it).
for k in "$root"/lib/modules/*; do chroot "$root" depmod "$(basename "$k")"; done
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'C*' ! -name 'en*' -exec rm -rf {} + 2>/dev/null || true
