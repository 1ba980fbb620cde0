use clap::{Parser, Subcommand};
use vm_service::config::{LogFormat, Settings};

#[derive(Parser)]
#[command(name = "vm-service", version, about = "Runs ephemeral QEMU VMs behind a REST + WebSocket API")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the API (settings come from flags, the environment or a .env file).
    Serve(Box<Settings>),
    /// Write VM records (JSON array or JSON lines, the original's layout) into the
    /// configured catalog; run while the service is stopped.
    Import {
        #[command(flatten)]
        settings: Box<Settings>,
        /// The records file.
        file: std::path::PathBuf,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Check whether this host can run VMs with these settings (QEMU, qemu-img, KVM, the
    /// guest image, isolation, disk, ports, Redis): one line per check with what to do;
    /// exit status 1 when something blocks.
    Doctor {
        #[command(flatten)]
        settings: Box<Settings>,
        /// Also boot the guest image to SSH (a VM of its own, beside any running service).
        #[arg(long)]
        boot: bool,
    },
    /// A client of a running service: create (with progress), ls, show, exec, cp, shell,
    /// console, start/stop/reboot/pause/resume, rm, ttl, fork, bg, ps, ports, preview, images.
    /// The URL and token come from --url/--token, VM_SERVICE_URL/VM_SERVICE_TOKEN or
    /// ~/.config/vm-service/cli.env.
    /// Exit status: the command's for exec, 2 when the service cannot be reached or refuses
    /// the token, 1 for other errors.
    Vm(Box<vm_service::cli::VmArgs>),
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| "info,russh=warn".into());
    // Colours only on a terminal: log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Vm(args) => {
            let code = vm_service::cli::run(*args).await;
            // At once: a read of stdin (shell) must not hold the exit.
            std::process::exit(code.into());
        }
        Cmd::Openapi => {
            use utoipa::OpenApi;
            println!("{}", vm_service::api::ApiDoc::openapi().to_pretty_json().unwrap_or_default());
            std::process::ExitCode::SUCCESS
        }
        Cmd::Import { settings, file } => {
            init_logs(settings.log_format);
            match vm_service::serve::import(*settings, &file).await {
                Ok(n) => {
                    println!("vm-service: imported {n} records");
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vm-service: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Cmd::Doctor { settings, boot } => {
            let checks = vm_service::doctor::run(*settings, boot, |c| println!("{c}")).await;
            let blocked = checks.iter().filter(|c| c.status == vm_service::doctor::Status::Fail).count();
            let warned = checks.iter().filter(|c| c.status == vm_service::doctor::Status::Warn).count();
            if blocked > 0 {
                println!("\n{blocked} check(s) block running VMs ({warned} warning(s))");
                std::process::ExitCode::FAILURE
            } else {
                println!("\nready to run VMs ({warned} warning(s))");
                std::process::ExitCode::SUCCESS
            }
        }
        Cmd::Serve(s) => {
            init_logs(s.log_format);
            match vm_service::serve::run(*s).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("vm-service: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
