//! QEMU driver: one module per concern. Every QEMU flag the service uses is in args.rs.
pub mod accel;
pub mod args;
pub mod image;
pub mod isolation;
pub mod overlay;
pub mod ports;
pub mod process;
pub mod qmp;
pub mod seed;
pub mod template_ram;
pub mod tsc;

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("{0}")]
    Image(String),
    #[error("{tool} failed: {detail}")]
    Tool { tool: String, detail: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("no free port to forward SSH to")]
    NoPort,
    #[error("QMP: {0}")]
    Qmp(String),
    #[error("no UEFI firmware for aarch64 found; install qemu-efi-aarch64 or set VM_UEFI_ARM64")]
    NoUefi,
}

pub fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> QemuError {
    let what = what.into();
    move |source| QemuError::Io { what, source }
}
