//! The QEMU command line, every flag in one place.
use super::image::Boot;
use super::QemuError;
use std::path::{Path, PathBuf};

/// seccomp filter: no obsolete syscalls, no setuid, no fork/exec, no scheduler/affinity changes.
pub const SANDBOX_OPTS: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Hvf,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Hvf => "hvf",
            Accel::Tcg => "tcg",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub fn host() -> Arch {
        if std::env::consts::ARCH == "aarch64" {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }
}

#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub qemu_bin: String,
    pub arch: Arch,
    pub accel: Accel,
    pub vcpus: u32,
    pub mem_mib: u32,
    pub overlay: PathBuf,
    pub seed: PathBuf,
    pub console_log: PathBuf,
    pub qmp_socket: PathBuf,
    /// A second QMP monitor, held open by the service to hear QEMU's events.
    pub events_socket: PathBuf,
    /// The guest agent's two virtio-serial ports, as unix sockets QEMU listens on: commands
    /// in and their stdout (`vmsvc.agent`), their stderr (`vmsvc.agent.err`). Only for
    /// images whose guest runs the agent.
    pub agent_sockets: Option<(PathBuf, PathBuf)>,
    /// The port the guest serves its identity refresh on (`vmsvc.refresh`), as a unix socket.
    pub refresh_socket: Option<PathBuf>,
    pub pidfile: PathBuf,
    pub ssh_port: u16,
    pub boot: Boot,
    pub machine: Option<String>,
    pub cpu: Option<String>,
    /// TCG translation cache in MiB; 0 keeps QEMU's default.
    pub tcg_tb_size: u32,
    /// aarch64 firmware (see [`find_uefi_arm64`]).
    pub uefi: Option<PathBuf>,
    /// QEMU user net `restrict=on`: the guest gets no egress at all.
    pub no_egress: bool,
    /// `-sandbox on` (seccomp), when the QEMU build supports it.
    pub sandbox: bool,
    /// Start paused, waiting for a saved state over QMP (`migrate-incoming`).
    pub incoming: bool,
    /// The host TSC rate (kHz), given to a microvm guest under TCG (see [`super::tsc`]).
    pub tsc_khz: Option<u64>,
    /// Guest RAM backed by a file (a snapshot's template RAM) instead of anonymous memory.
    pub ram: Option<RamFile>,
}

/// Guest RAM in a file: the snapshot template writes it (`share`); restored copies map it
/// copy-on-write, so ten copies share the pages none of them changed and a restore reads
/// no RAM up front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamFile {
    pub path: PathBuf,
    pub share: bool,
}

impl LaunchSpec {
    /// The image asks for `-machine microvm`.
    fn asks_microvm(&self) -> bool {
        self.machine.as_deref().is_some_and(|m| m.split(',').next() == Some("microvm"))
    }

    /// `-machine microvm`: x86 direct kernel boot only (it has no firmware that boots a
    /// disk's own bootloader); such a launch falls back to q35.
    fn microvm(&self) -> bool {
        self.arch == Arch::X86_64 && matches!(self.boot, Boot::Kernel { .. }) && self.asks_microvm()
    }

    /// The name QEMU gives the machine's RAM when it makes it itself. A RAM file object
    /// takes the same name, so the state of a VM on template RAM loads into plain RAM
    /// (a resume, a fork) and the other way round.
    fn ram_id(&self) -> &'static str {
        match self.arch {
            Arch::Aarch64 => "mach-virt.ram",
            Arch::X86_64 if self.microvm() => "microvm.ram",
            Arch::X86_64 => "pc.ram",
        }
    }
}

fn s(v: &str) -> String {
    v.to_string()
}

fn p(v: &Path) -> String {
    v.to_string_lossy().into_owned()
}

/// QEMU option values are comma-separated; a literal comma is doubled.
fn optval(v: &Path) -> String {
    p(v).replace(',', ",,")
}

pub fn build(spec: &LaunchSpec) -> Result<Vec<String>, QemuError> {
    let mut a = vec![spec.qemu_bin.clone()];
    let microvm = spec.microvm();
    let tcg = if spec.tcg_tb_size > 0 { format!("tcg,tb-size={}", spec.tcg_tb_size) } else { s("tcg") };
    let ram_backend = |m: String| match &spec.ram {
        Some(_) => format!("{m},memory-backend={}", spec.ram_id()),
        None => m,
    };
    match spec.arch {
        Arch::X86_64 => {
            let machine = ram_backend(match spec.machine.clone() {
                Some(m) if microvm || !spec.asks_microvm() => m,
                _ => s("q35"),
            });
            match spec.accel {
                Accel::Kvm => a.extend([s("-accel"), s("kvm"), s("-machine"), machine, s("-cpu"), s("host")]),
                _ => a.extend([s("-accel"), tcg, s("-machine"), machine, s("-cpu"), spec.cpu.clone().unwrap_or_else(|| s("max"))]),
            }
        }
        Arch::Aarch64 => {
            match spec.accel {
                Accel::Kvm => a.extend([s("-accel"), s("kvm"), s("-cpu"), s("host"), s("-machine"), ram_backend(s("virt,gic-version=3,its=off"))]),
                Accel::Hvf => a.extend([s("-accel"), s("hvf"), s("-cpu"), s("max"), s("-machine"), ram_backend(s("virt"))]),
                Accel::Tcg => a.extend([s("-accel"), tcg, s("-cpu"), s("max"), s("-machine"), ram_backend(s("virt"))]),
            }
            let fw = spec.uefi.as_ref().ok_or(QemuError::NoUefi)?;
            if spec.boot == Boot::Disk {
                a.extend([s("-bios"), p(fw)]);
            }
        }
    }
    a.extend([
        s("-smp"),
        spec.vcpus.to_string(),
        s("-m"),
        spec.mem_mib.to_string(),
        s("-nodefaults"),
        s("-no-user-config"),
        s("-display"),
        s("none"),
        // O_APPEND (append=on): the service may truncate the log to rotate it, and QEMU
        // then writes on at its new end.
        s("-chardev"),
        format!("file,id=con0,path={},append=on", optval(&spec.console_log)),
        s("-serial"),
        s("chardev:con0"),
        s("-qmp"),
        format!("unix:{},server=on,wait=off", optval(&spec.qmp_socket)),
        s("-qmp"),
        format!("unix:{},server=on,wait=off", optval(&spec.events_socket)),
        s("-pidfile"),
        p(&spec.pidfile),
    ]);
    if let Some(ram) = &spec.ram {
        // share=off maps the file copy-on-write (QEMU 7.2 still opens it read-write).
        a.extend([
            s("-object"),
            format!(
                "memory-backend-file,id={},size={}M,mem-path={},share={}",
                spec.ram_id(),
                spec.mem_mib,
                optval(&ram.path),
                if ram.share { "on" } else { "off" }
            ),
        ]);
    }
    if spec.sandbox {
        a.extend([s("-sandbox"), s(SANDBOX_OPTS)]);
    }
    if let Boot::Kernel { kernel, initrd, cmdline } = &spec.boot {
        a.extend([s("-kernel"), p(kernel)]);
        if let Some(i) = initrd {
            a.extend([s("-initrd"), p(i)]);
        }
        let mut cmdline = cmdline.clone();
        if let (true, false, Some(khz)) = (microvm, spec.accel == Accel::Kvm, spec.tsc_khz) {
            // Without a reference to calibrate against, 1 boot in 6 hung for good; without
            // tsc=reliable the watchdog sometimes dropped the TSC a few seconds in.
            cmdline.push_str(&format!(" tsc_early_khz={khz} tsc=reliable"));
        }
        a.extend([s("-append"), cmdline]);
    }
    let (blk, net, balloon, serial) = match spec.arch {
        Arch::X86_64 if !microvm => ("virtio-blk-pci", "virtio-net-pci", "virtio-balloon-pci", "virtio-serial-pci"),
        _ => ("virtio-blk-device", "virtio-net-device", "virtio-balloon-device", "virtio-serial-device"),
    };
    if microvm {
        a.extend([s("-global"), s("virtio-mmio.force-legacy=false")]);
    }
    // The root disk must be the first virtio disk (/dev/vda); the seed is the second.
    a.extend([
        s("-drive"),
        format!("file={},if=none,id=d0,format=qcow2,discard=unmap", optval(&spec.overlay)),
        s("-device"),
        format!("{blk},drive=d0"),
        s("-drive"),
        format!("file={},if=none,id=d1,format=raw,readonly=on", optval(&spec.seed)),
        s("-device"),
        format!("{blk},drive=d1"),
    ]);
    let mut netdev = format!("user,id=n0,hostfwd=tcp:127.0.0.1:{}-:22", spec.ssh_port);
    if spec.no_egress {
        netdev.push_str(",restrict=on");
    }
    a.extend([s("-netdev"), netdev, s("-device"), format!("{net},netdev=n0")]);
    // Free page reporting: pages the guest frees are dropped from QEMU's memory (an idle
    // VM's RSS shrinks; a snapshot neither saves nor loads them). Never inflated.
    a.extend([s("-device"), format!("{balloon},free-page-reporting=on")]);
    // The guest agent (a command runner the guest keeps on these ports): no network, no
    // SSH handshake, and it lives on in a saved guest, so a restored copy answers at once.
    let mut ports = Vec::new();
    if let Some((agent_out, agent_err)) = &spec.agent_sockets {
        ports.extend([("ag0", agent_out, "vmsvc.agent"), ("ag1", agent_err, "vmsvc.agent.err")]);
    }
    if let Some(refresh) = &spec.refresh_socket {
        ports.push(("ag2", refresh, "vmsvc.refresh"));
    }
    if !ports.is_empty() {
        a.extend([s("-device"), s(serial)]);
        for (id, path, name) in ports {
            a.extend([
                s("-chardev"),
                format!("socket,id={id},path={},server=on,wait=off", optval(path)),
                s("-device"),
                format!("virtserialport,chardev={id},name={name}"),
            ]);
        }
    }
    if spec.boot == Boot::Disk && spec.arch == Arch::X86_64 {
        a.extend([s("-device"), s("virtio-rng-pci")]);
    }
    if spec.arch == Arch::X86_64 && !microvm {
        // microvm's ACPI tables have no place for it (the guest's vm-refresh reseeds there).
        // A generation id that changes when a saved guest is restored: the guest kernel then
        // reseeds its RNG, so clones of one snapshot do not share random numbers.
        a.extend([s("-device"), s("vmgenid,guid=auto")]);
    }
    if spec.incoming {
        a.extend([s("-incoming"), s("defer")]);
    }
    Ok(a)
}

/// aarch64 UEFI firmware: the override, then the usual distribution and Homebrew paths.
pub fn find_uefi_arm64(override_path: Option<&Path>) -> Result<PathBuf, QemuError> {
    if let Some(o) = override_path {
        return if o.is_file() { Ok(o.to_path_buf()) } else { Err(QemuError::NoUefi) };
    }
    const CANDIDATES: &[&str] = &[
        "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd",
        "/usr/share/edk2/aarch64/QEMU_EFI.fd",
        "/usr/share/AAVMF/AAVMF_CODE.fd",
        "/usr/share/qemu/edk2-aarch64-code.fd",
        "/opt/homebrew/share/qemu/edk2-aarch64-code.fd",
        "/usr/local/share/qemu/edk2-aarch64-code.fd",
        "/opt/local/share/qemu/edk2-aarch64-code.fd",
    ];
    CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file()).ok_or(QemuError::NoUefi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(arch: Arch, accel: Accel, boot: Boot) -> LaunchSpec {
        LaunchSpec {
            qemu_bin: "/usr/bin/qemu-system-x86_64".into(),
            arch,
            accel,
            vcpus: 2,
            mem_mib: 512,
            overlay: "/w/disk.qcow2".into(),
            seed: "/w/seed.img".into(),
            console_log: "/w/console.log".into(),
            qmp_socket: "/w/qmp.sock".into(),
            events_socket: "/w/events.sock".into(),
            agent_sockets: Some(("/w/agent.sock".into(), "/w/agent-err.sock".into())),
            refresh_socket: Some("/w/refresh.sock".into()),
            pidfile: "/w/qemu.pid".into(),
            ssh_port: 40022,
            boot,
            machine: None,
            cpu: None,
            tcg_tb_size: 128,
            uefi: Some("/fw/QEMU_EFI.fd".into()),
            no_egress: false,
            sandbox: false,
            incoming: false,
            tsc_khz: Some(2_596_094),
            ram: None,
        }
    }

    fn kernel_boot() -> Boot {
        Boot::Kernel { kernel: "/img/vmlinux".into(), initrd: Some("/img/initrd.gz".into()), cmdline: "root=/dev/vda2 console=ttyS0".into() }
    }

    fn has_pair(a: &[String], flag: &str, val: &str) -> bool {
        a.windows(2).any(|w| w[0] == flag && w[1] == val)
    }

    #[test]
    fn x86_tcg_flags() {
        let a = build(&spec(Arch::X86_64, Accel::Tcg, Boot::Disk)).unwrap();
        assert_eq!(a[0], "/usr/bin/qemu-system-x86_64");
        assert!(has_pair(&a, "-accel", "tcg,tb-size=128"));
        assert!(has_pair(&a, "-machine", "q35"));
        assert!(has_pair(&a, "-cpu", "max"));
        assert!(has_pair(&a, "-smp", "2"));
        assert!(has_pair(&a, "-m", "512"));
        assert!(has_pair(&a, "-chardev", "file,id=con0,path=/w/console.log,append=on"));
        assert!(has_pair(&a, "-serial", "chardev:con0"));
        assert!(has_pair(&a, "-qmp", "unix:/w/qmp.sock,server=on,wait=off"));
        assert!(has_pair(&a, "-qmp", "unix:/w/events.sock,server=on,wait=off"));
        assert!(has_pair(&a, "-chardev", "socket,id=ag0,path=/w/agent.sock,server=on,wait=off"));
        assert!(has_pair(&a, "-device", "virtserialport,chardev=ag1,name=vmsvc.agent.err"));
        assert!(has_pair(&a, "-chardev", "socket,id=ag2,path=/w/refresh.sock,server=on,wait=off"));
        assert!(has_pair(&a, "-device", "virtserialport,chardev=ag2,name=vmsvc.refresh"));
        assert!(has_pair(&a, "-pidfile", "/w/qemu.pid"));
        assert!(has_pair(&a, "-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:40022-:22"));
        assert!(has_pair(&a, "-device", "virtio-net-pci,netdev=n0"));
        assert!(has_pair(&a, "-drive", "file=/w/disk.qcow2,if=none,id=d0,format=qcow2,discard=unmap"));
        assert!(has_pair(&a, "-drive", "file=/w/seed.img,if=none,id=d1,format=raw,readonly=on"));
        assert!(has_pair(&a, "-device", "virtio-rng-pci"));
        assert!(has_pair(&a, "-device", "vmgenid,guid=auto"));
        assert!(has_pair(&a, "-device", "virtio-balloon-pci,free-page-reporting=on"));
        assert!(!a.contains(&"-incoming".to_string()));
        assert!(!a.contains(&"-kernel".to_string()));
        assert!(!a.iter().any(|x| x.contains("kvm")));
        let d0 = a.iter().position(|x| x.contains("id=d0")).unwrap();
        let d1 = a.iter().position(|x| x.contains("id=d1")).unwrap();
        assert!(d0 < d1, "root disk must be the first virtio disk");
    }

    #[test]
    fn x86_kvm_flags() {
        let a = build(&spec(Arch::X86_64, Accel::Kvm, Boot::Disk)).unwrap();
        assert!(has_pair(&a, "-accel", "kvm"));
        assert!(has_pair(&a, "-cpu", "host"));
        assert!(!a.iter().any(|x| x.starts_with("tcg")));
    }

    #[test]
    fn manifest_machine_cpu_and_direct_kernel_boot() {
        let mut sp = spec(Arch::X86_64, Accel::Tcg, kernel_boot());
        sp.machine = Some("pc".into());
        sp.cpu = Some("qemu64,+rdrand".into());
        sp.tcg_tb_size = 0;
        let a = build(&sp).unwrap();
        assert!(has_pair(&a, "-accel", "tcg"));
        assert!(has_pair(&a, "-machine", "pc"));
        assert!(has_pair(&a, "-cpu", "qemu64,+rdrand"));
        assert!(has_pair(&a, "-kernel", "/img/vmlinux"));
        assert!(has_pair(&a, "-initrd", "/img/initrd.gz"));
        assert!(has_pair(&a, "-append", "root=/dev/vda2 console=ttyS0"));
        assert!(!a.contains(&"virtio-rng-pci".to_string()));
    }

    #[test]
    fn microvm_for_direct_kernel_boot() {
        let mut sp = spec(Arch::X86_64, Accel::Tcg, kernel_boot());
        sp.machine = Some("microvm".into());
        let a = build(&sp).unwrap();
        assert!(has_pair(&a, "-machine", "microvm"));
        assert!(has_pair(&a, "-device", "virtio-blk-device,drive=d0"));
        assert!(has_pair(&a, "-device", "virtio-blk-device,drive=d1"));
        assert!(has_pair(&a, "-device", "virtio-net-device,netdev=n0"));
        assert!(has_pair(&a, "-global", "virtio-mmio.force-legacy=false"));
        assert!(has_pair(&a, "-device", "virtio-balloon-device,free-page-reporting=on"));
        assert!(has_pair(&a, "-append", "root=/dev/vda2 console=ttyS0 tsc_early_khz=2596094 tsc=reliable"));
        assert!(!a.iter().any(|x| x.contains("-pci") || x.contains("vmgenid")), "{a:?}");
        // KVM guests calibrate against kvmclock: the command line stays as the image says.
        sp.accel = Accel::Kvm;
        assert!(has_pair(&build(&sp).unwrap(), "-append", "root=/dev/vda2 console=ttyS0"));
        // A disk that boots its own bootloader needs firmware microvm lacks: q35 then.
        let mut sp = spec(Arch::X86_64, Accel::Tcg, Boot::Disk);
        sp.machine = Some("microvm".into());
        let a = build(&sp).unwrap();
        assert!(has_pair(&a, "-machine", "q35"));
        assert!(has_pair(&a, "-device", "virtio-blk-pci,drive=d0"));
        assert!(!a.iter().any(|x| x.contains("virtio-mmio")));
    }

    #[test]
    fn no_egress_and_sandbox() {
        let mut sp = spec(Arch::X86_64, Accel::Tcg, Boot::Disk);
        sp.no_egress = true;
        sp.sandbox = true;
        let a = build(&sp).unwrap();
        assert!(has_pair(&a, "-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:40022-:22,restrict=on"));
        assert!(a.windows(2).any(|w| w[0] == "-sandbox" && w[1].starts_with("on,")));
    }

    #[test]
    fn a_restore_waits_for_its_state() {
        let mut sp = spec(Arch::X86_64, Accel::Tcg, Boot::Disk);
        sp.incoming = true;
        assert!(has_pair(&build(&sp).unwrap(), "-incoming", "defer"));
    }

    #[test]
    fn template_ram_takes_the_name_of_the_machines_own_ram() {
        let mut sp = spec(Arch::X86_64, Accel::Tcg, kernel_boot());
        sp.machine = Some("microvm".into());
        sp.ram = Some(RamFile { path: "/s/ram,1.bin".into(), share: true });
        let a = build(&sp).unwrap();
        assert!(has_pair(&a, "-machine", "microvm,memory-backend=microvm.ram"));
        assert!(has_pair(&a, "-object", "memory-backend-file,id=microvm.ram,size=512M,mem-path=/s/ram,,1.bin,share=on"));
        sp.machine = Some("pc".into());
        sp.ram = Some(RamFile { path: "/s/ram.bin".into(), share: false });
        let a = build(&sp).unwrap();
        assert!(has_pair(&a, "-machine", "pc,memory-backend=pc.ram"));
        assert!(has_pair(&a, "-object", "memory-backend-file,id=pc.ram,size=512M,mem-path=/s/ram.bin,share=off"));
        let mut sp = spec(Arch::Aarch64, Accel::Tcg, Boot::Disk);
        sp.ram = Some(RamFile { path: "/s/ram.bin".into(), share: false });
        assert!(has_pair(&build(&sp).unwrap(), "-machine", "virt,memory-backend=mach-virt.ram"));
        // Plain RAM: no object, the machine as it was.
        assert!(!build(&spec(Arch::X86_64, Accel::Tcg, Boot::Disk)).unwrap().iter().any(|x| x.contains("memory-backend")));
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        let mut sp = spec(Arch::X86_64, Accel::Tcg, Boot::Disk);
        sp.overlay = "/w,x/disk.qcow2".into();
        let a = build(&sp).unwrap();
        assert!(has_pair(&a, "-drive", "file=/w,,x/disk.qcow2,if=none,id=d0,format=qcow2,discard=unmap"));
    }

    #[test]
    fn aarch64_accelerators_and_firmware() {
        let mut sp = spec(Arch::Aarch64, Accel::Kvm, Boot::Disk);
        sp.qemu_bin = "qemu-system-aarch64".into();
        let a = build(&sp).unwrap();
        assert!(has_pair(&a, "-accel", "kvm"));
        assert!(has_pair(&a, "-machine", "virt,gic-version=3,its=off"));
        assert!(has_pair(&a, "-bios", "/fw/QEMU_EFI.fd"));
        assert!(has_pair(&a, "-device", "virtio-net-device,netdev=n0"));
        assert!(has_pair(&a, "-device", "virtio-blk-device,drive=d0"));
        let a = build(&spec(Arch::Aarch64, Accel::Hvf, Boot::Disk)).unwrap();
        assert!(has_pair(&a, "-accel", "hvf"));
        assert!(has_pair(&a, "-cpu", "max"));
        let a = build(&spec(Arch::Aarch64, Accel::Tcg, Boot::Disk)).unwrap();
        assert!(has_pair(&a, "-accel", "tcg,tb-size=128"));
        let mut sp = spec(Arch::Aarch64, Accel::Tcg, Boot::Disk);
        sp.uefi = None;
        assert!(matches!(build(&sp), Err(QemuError::NoUefi)));
    }

    #[test]
    fn uefi_override_wins_and_missing_override_fails() {
        let dir = std::env::temp_dir().join(format!("uefi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fw = dir.join("fw.fd");
        std::fs::write(&fw, b"x").unwrap();
        assert_eq!(find_uefi_arm64(Some(&fw)).unwrap(), fw);
        assert!(find_uefi_arm64(Some(&dir.join("missing.fd"))).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
