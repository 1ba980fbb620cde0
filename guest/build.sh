#!/usr/bin/env bash
# Builds a guest image from Debian packages: no internet beyond the Debian mirror, no
# loop mounts. Profiles: "tiny" (default: busybox + dropbear from the host's packages,
# seconds to build) and "debian" (debootstrap: systemd, cloud-init, OpenSSH, apt, python3,
# git, curl; minutes to build, needs root for the chroot).
#
#   guest/build.sh [--profile tiny|debian] [--out DIR] [--force]
#
# Output directory (default: $VM_BASE_DIR/images/<profile>, VM_BASE_DIR defaulting as in
# the service): disk.qcow2, vmlinux (PVH, uncompressed), vmlinuz (bzImage), initrd.gz,
# manifest.json. The disk is partitioned: p1 FAT16 with syslinux (BIOS boot path),
# p2 ext4 root. The same disk boots by direct kernel boot (-kernel vmlinux) or from
# its own bootloader under SeaBIOS.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -z "${VM_BASE_DIR:-}" ]; then
  if [ "$(id -u)" = 0 ]; then VM_BASE_DIR=/var/lib/vm-service; else VM_BASE_DIR="$HOME/.local/share/vm-service"; fi
fi
out=""
profile=tiny
force=0
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done

die() { echo "guest/build.sh: $*" >&2; exit 1; }
case "$profile" in tiny|debian) ;; *) die "unknown profile '$profile' (tiny or debian)" ;; esac
out="${out:-$VM_BASE_DIR/images/$profile}"
need_file() { [ -e "$1" ] || die "missing $1 (package $2): run  apt-get install -y $2"; }
need_cmd() { command -v "$1" >/dev/null 2>&1 || die "missing command '$1' (package $2): run  apt-get install -y $2"; }

need_cmd busybox busybox-static
busybox --list | grep -x acpid >/dev/null || die "busybox is not busybox-static: run  apt-get install -y busybox-static"
if [ "$profile" = tiny ]; then
  need_cmd dropbear dropbear-bin
  need_cmd dropbearkey dropbear-bin
  need_file /usr/lib/openssh/sftp-server openssh-sftp-server
  need_file /sbin/resize2fs e2fsprogs
  need_file /usr/bin/resizepart util-linux
  need_cmd lz4 lz4
  need_cmd dpkg-deb dpkg
else
  [ "$(id -u)" = 0 ] || die "the debian profile needs root (debootstrap and a chroot)"
  need_cmd debootstrap debootstrap
fi
need_cmd mkfs.ext4 e2fsprogs
need_cmd qemu-img qemu-utils
need_cmd cpio cpio
need_cmd mkfs.vfat dosfstools
need_cmd mcopy mtools
need_cmd syslinux syslinux
need_file /usr/lib/syslinux/mbr/mbr.bin syslinux-common
need_cmd sfdisk fdisk
need_cmd python3 python3
need_cmd zip zip
need_cmd ldd libc-bin
# Refuse to replace a base image that existing overlays (or snapshot/fork layers) back
# onto, unless forced.
if [ -f "$out/disk.qcow2" ] && [ "$force" != 1 ]; then
  users="$(find "$VM_BASE_DIR/vms" "$VM_BASE_DIR/layers" -name "*.qcow2" 2>/dev/null | while read -r ov; do
    qemu-img info --output=json "$ov" 2>/dev/null | grep "\"$out/disk.qcow2\"" >/dev/null && echo "$ov"; done || true)"
  if [ -n "$users" ]; then
    die "$out/disk.qcow2 backs existing VM overlays ($(echo "$users" | wc -l)); use --force to rebuild anyway"
  fi
fi

start=$(date +%s.%N)
work="$(mktemp -d "${TMPDIR:-/tmp}/vm-guest-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
if [ "$profile" = debian ]; then
  bash "$here/debian/rootfs.sh" "$root"
  # The kernel is the one the image's own linux-image-amd64 installed.
  kernel="$(ls -1 "$root"/boot/vmlinuz-* | sort -V | tail -n 1)"
  kver="${kernel##*/vmlinuz-}"
  moddir="$root/lib/modules/$kver"
else
  # The kernel is taken by package, whatever kernels the host runs: Debian's cloud flavour by
  # default (ext4 built in, a smaller initramfs, boots ~0.6 s faster under TCG), the generic
  # one with VM_GUEST_KERNEL=generic. An installed package is used in place, else its .deb is
  # downloaded from the Debian archive into $VM_BASE_DIR/cache and unpacked.
  case "${VM_GUEST_KERNEL:-cloud}" in
    cloud) kmeta=linux-image-cloud-amd64 ;;
    generic) kmeta=linux-image-amd64 ;;
    *) die "VM_GUEST_KERNEL must be cloud or generic (got '${VM_GUEST_KERNEL}')" ;;
  esac
  kpkg_of() { apt-cache depends "$kmeta" 2>/dev/null | grep -o 'linux-image-[0-9][^ ]*' | head -n 1 || true; }
  kpkg="$(kpkg_of)"
  if [ -z "$kpkg" ] && [ "$(id -u)" = 0 ]; then apt-get update -q >/dev/null || true; kpkg="$(kpkg_of)"; fi
  [ -n "$kpkg" ] || die "the package archive does not know $kmeta (run  apt-get update)"
  kver="${kpkg#linux-image-}"
  if dpkg-query -W -f='${Status}' "$kpkg" 2>/dev/null | grep "ok installed" >/dev/null; then
    kroot=""
  else
    cache="$VM_BASE_DIR/cache/kernels"; mkdir -p "$cache"
    deb="$(ls "$cache/${kpkg}_"*.deb 2>/dev/null | head -n 1 || true)"
    if [ -z "$deb" ]; then
      (cd "$cache" && apt-get download -q "$kpkg" >/dev/null 2>&1) || die "could not download $kpkg from the Debian archive"
      deb="$(ls "$cache/${kpkg}_"*.deb | head -n 1)"
    fi
    kroot="$work/kernel"; dpkg-deb -x "$deb" "$kroot"
  fi
  kernel="$kroot/boot/vmlinuz-$kver"
  [ -e "$kernel" ] || die "no $kernel (package $kpkg)"
  moddir="$kroot/lib/modules/$kver"
  [ -d "$moddir" ] || die "no modules at $moddir (package $kpkg)"
fi
modfile() { find "$moddir/kernel" -name "$1.ko" -o -name "$1.ko.xz" | head -n 1; }
# Built into the kernel (the cloud flavour has ext4 and its helpers built in): nothing to load.
builtin() { grep -E "/($1|${1//-/_}).ko$" "$moddir/modules.builtin" >/dev/null 2>&1; }

if [ "$profile" = tiny ]; then # the tiny root filesystem, up to the matching fi
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,usr/lib/openssh,lib,lib64,etc/dropbear,etc/init.d,etc/acpi/PWRF,root,app,proc,sys,dev,run,tmp,var/log,home,mnt/seed}
chmod 1777 "$root/tmp"; chmod 700 "$root/root"

# busybox and its applets (GNU tools copied below take precedence over the links)
cp /bin/busybox "$root/bin/busybox"
for app in $(busybox --list-full); do
  [ -e "$root/$app" ] || ln -s /bin/busybox "$root/$app"
done

copy_with_libs() { # copy a binary to the same path inside the rootfs, with its shared libraries
  local bin="$1" dest="${2:-$1}"
  rm -f "$root$dest"; mkdir -p "$(dirname "$root$dest")"; cp -L "$bin" "$root$dest"
  { ldd "$bin" 2>/dev/null || true; } | { grep -oE '/[^ ]+' || true; } | while read -r lib; do
    [ -e "$root$lib" ] || { mkdir -p "$(dirname "$root$lib")"; cp -L "$lib" "$root$lib"; }
  done
}
copy_with_libs "$(command -v dropbear)" /usr/sbin/dropbear
copy_with_libs "$(command -v dropbearkey)" /usr/bin/dropbearkey
copy_with_libs /usr/lib/openssh/sftp-server /usr/lib/openssh/sftp-server
# the identity refresh of a restored copy (one static program: tools/vm-refresh.c says why)
need_cmd cc gcc
cc -Os -Wall -static -o "$work/vm-refresh" "$here/tools/vm-refresh.c" || die "could not compile tools/vm-refresh.c"
copy_with_libs "$work/vm-refresh" /sbin/vm-refresh
# growing the root partition and filesystem to the VM's disk (sbin/vm-grow)
copy_with_libs /sbin/resize2fs /sbin/resize2fs
copy_with_libs /usr/bin/resizepart /usr/bin/resizepart
# Debian's dropbear execs /usr/lib/sftp-server; upstream uses /usr/libexec/sftp-server.
mkdir -p "$root/usr/libexec"
ln -sf /usr/lib/openssh/sftp-server "$root/usr/lib/sftp-server"
ln -sf /usr/lib/openssh/sftp-server "$root/usr/libexec/sftp-server"
for tool in bash dash grep tar find xargs zip; do
  p="$(command -v "$tool")"
  copy_with_libs "$p" "/bin/$tool"
  ln -sf "/bin/$tool" "$root/usr/bin/$tool"
done
ln -sf dash "$root/bin/sh"
# libnss for user lookups by name (dropbear, bash prompt)
for lib in /lib/x86_64-linux-gnu/libnss_files.so.2; do [ -e "$lib" ] && cp -L "$lib" "$root$lib"; done

# static configuration, init scripts and the seed reader
cp -a "$here/rootfs/." "$root/"
install -m 755 "$here/agent/vm-agent" "$here/agent/vm-runner" "$root/sbin/"
chmod 755 "$root/etc/init.d/rcS" "$root/etc/udhcpc.script" "$root/etc/acpi/PWRF/00000080" "$root/sbin/vm-seed" "$root/sbin/sshd-loop" "$root/sbin/vm-grow"
chmod 600 "$root/etc/shadow"

# modules the running system loads after switch_root (power button for ACPI shutdown; the
# balloon's free page reporting, which hands memory the guest freed back to the host; the
# virtio-serial ports of the agent)
mods="$root/lib/modules/extra"; mkdir -p "$mods"
copy_mod() {
  local f; f="$(modfile "$1")"; [ -n "$f" ] || die "kernel module $1 not found under $moddir"
  case "$f" in *.xz) xz -dc "$f" > "$2/$1.ko" ;; *) cp "$f" "$2/$1.ko" ;; esac
}
for m in button evdev virtio_balloon virtio_console; do copy_mod "$m" "$mods"; done
python3 "$here/unsign-modules.py" "$mods"/*.ko
fi # tiny root filesystem

# initramfs: busybox + the modules needed to reach the ext4 root on virtio
ird="$work/initramfs"; mkdir -p "$ird"/{bin,dev,proc,sys,newroot,lib/modules}
cp /bin/busybox "$ird/bin/busybox"
for app in sh mount umount insmod switch_root sleep cat mkdir ls echo; do ln -s busybox "$ird/bin/$app"; done
initmods="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_mmio virtio-rng virtio_blk
  crc16 crc32c_generic mbcache jbd2 ext4 failover net_failover virtio_net fat vfat nls_cp437 nls_iso8859-1 nls_ascii cdrom isofs"
initmods="$(for m in $initmods; do builtin "$m" || echo "$m"; done)"
for m in $initmods; do
  f="$(modfile "$m")"; [ -n "$f" ] || f="$(modfile "${m//-/_}")"
  [ -n "$f" ] || die "kernel module $m not found under $moddir"
  case "$f" in *.xz) xz -dc "$f" > "$ird/lib/modules/$m.ko" ;; *) cp "$f" "$ird/lib/modules/$m.ko" ;; esac
done
python3 "$here/unsign-modules.py" "$ird"/lib/modules/*.ko
echo "$initmods" | tr -s ' \n' '\n' | sed '/^$/d' > "$ird/lib/modules/order"
cp "$here/initramfs/init" "$ird/init"; chmod 755 "$ird/init"
(cd "$ird" && find . | cpio -o -H newc --quiet | gzip -9) > "$work/initrd.gz"

# kernels: the bzImage for the BIOS path, its uncompressed ELF for PVH direct boot
python3 "$here/extract-vmlinux.py" "$kernel" "$work/vmlinux"

# disk: MBR, p1 FAT16 (syslinux + kernel + initrd), p2 ext4 root — written without mounting
size_mib=2048
if [ "$profile" = debian ]; then # what the tree holds + 30 % + 512 MiB, in 256 MiB steps (grown at first boot anyway)
  used_mib=$(du -sm "$root" | cut -f1)
  size_mib=$(( (64 + used_mib * 13 / 10 + 512 + 255) / 256 * 256 ))
fi
boot_mib=64; p1_start=2048; p1_sectors=$((boot_mib * 2048)); p2_start=$((p1_start + p1_sectors))
raw="$work/disk.raw"
truncate -s "${size_mib}M" "$raw"
printf 'label: dos\n%s,%s,c,*\n%s,,83\n' "$p1_start" "$p1_sectors" "$p2_start" | sfdisk -q "$raw" >/dev/null
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none
p1_off=$((p1_start * 512)); p2_off=$((p2_start * 512))
mkfs.vfat -F 16 -n TINYBOOT --offset "$p1_start" "$raw" $((p1_sectors / 2)) >/dev/null
syslinux --offset "$p1_off" --install "$raw"
# Kernel parameters, both boot paths. Measured under TCG (paired, n = 12, BENCHMARKS.md):
# rcupdate.rcu_expedited=1 and cryptomgr.notests take ≈ 0.23 s off a cold boot. Every
# synchronize_rcu() after the kernel's own init (module loads in the initramfs and rcS, the
# network, remounts) otherwise waits for a normal grace period, long under TCG; the crypto
# manager's self-tests of every algorithm registered at boot took ≈ 0.25 s of the kernel's
# 0.7 s init (initcall_debug) and guard against a miscompiled kernel, not a guest's inputs.
cmdline="root=/dev/vda2 console=ttyS0 rcupdate.rcu_expedited=1 cryptomgr.notests"
cat > "$work/syslinux.cfg" <<EOF
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL /vmlinuz
  INITRD /initrd.gz
  APPEND $cmdline
EOF
cp "$kernel" "$work/vmlinuz"
mcopy -o -i "$raw@@$p1_off" "$work/syslinux.cfg" "$work/vmlinuz" "$work/initrd.gz" ::/
p2_bytes=$(( (size_mib * 1024 * 1024) - p2_off ))
# Inode tables zeroed here (lazy_itable_init=0: zeros cost the qcow2 nothing), and the guest
# mounts with noinit_itable (initramfs/init): otherwise every VM's kernel spends its first
# minute zeroing them in the background (ext4lazyinit; ~3 MB/s of guest writes under TCG),
# and so does every copy restored from a snapshot whose disk was grown.
mkfs.ext4 -q -F -L "${profile}root" -b 4096 -I 256 -E "root_owner=0:0,offset=$p2_off,lazy_itable_init=0" -d "$root" "$raw" $((p2_bytes / 4096)) >/dev/null

# A first build is made in a hidden directory renamed into place at the end, so a build that
# fails half-way is never offered as an image; a rebuild replaces file by file, manifest last.
final="$out"
if [ ! -e "$final" ]; then out="$(dirname "$final")/.$(basename "$final").partial"; rm -rf "$out"; fi
mkdir -p "$out"
tmpq="$out/.disk.qcow2.tmp"
qemu-img convert -f raw -O qcow2 "$raw" "$tmpq"
cp "$work/vmlinux" "$out/vmlinux.tmp"; mv "$out/vmlinux.tmp" "$out/vmlinux"
cp "$work/vmlinuz" "$out/vmlinuz.tmp"; mv "$out/vmlinuz.tmp" "$out/vmlinuz"
cp "$work/initrd.gz" "$out/initrd.gz.tmp"; mv "$out/initrd.gz.tmp" "$out/initrd.gz"
mv "$tmpq" "$out/disk.qcow2"
chmod 644 "$out"/*
# microvm (no PCI, no firmware tables to walk; virtio over MMIO) boots the tiny guest ~1.3 s
# faster under TCG than pc; the Debian image keeps pc (it also boots its own bootloader).
machine=pc; [ "$profile" = tiny ] && machine="${VM_GUEST_MACHINE:-microvm}"
cat > "$out/manifest.json.tmp" <<EOF
{
  "name": "$profile",
  "arch": "x86_64",
  "disk": "disk.qcow2",
  "kernel": "vmlinux",
  "initrd": "initrd.gz",
  "cmdline": "$cmdline",
  "ssh_user": "root",
  "machine": "$machine",
  "cpu": "qemu64,+rdrand",
$(if [ "$profile" = tiny ]; then
    printf '  "ready_marker": "tiny-guest: rcS done",\n  "refresh": "/sbin/vm-refresh",\n  "seed_host_key": true,\n  "agent": true,\n  "refresh_port": true,'
  else
    printf '  "ready_marker": "debian-guest: ready",\n  "refresh": "/usr/local/sbin/vm-refresh",\n  "host_key_format": "openssh",'
  fi)
  "kernel_version": "$kver",
  "source_hash": "$(bash "$(dirname "${BASH_SOURCE[0]}")/source-hash.sh" "$profile")",
  "built_at": $(date +%s)
}
EOF
mv "$out/manifest.json.tmp" "$out/manifest.json"
[ "$out" = "$final" ] || { mv "$out" "$final"; out="$final"; }
end=$(date +%s.%N)
printf 'guest image built in %.1f s: %s (disk %s, initrd %s, vmlinux %s)\n' "$(echo "$end - $start" | bc 2>/dev/null || python3 -c "print($end-$start)")" \
  "$out" "$(du -h "$out/disk.qcow2" | cut -f1)" "$(du -h "$out/initrd.gz" | cut -f1)" "$(du -h "$out/vmlinux" | cut -f1)"
