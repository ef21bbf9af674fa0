//! qemud: the daemon binary. Parses flags over the embedded default
//! settings, starts the actors, listens on the configured sockets and shuts
//! down cleanly on SIGTERM/SIGINT (running VMs are left running and are
//! re-attached by the next start).

mod listeners;
mod lock;
mod metrics;
mod tls;

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

use qemud_actors::domain::index::DomainIndex;
use qemud_actors::domain::registry::Registry;
use qemud_actors::domain::store::Store;
use qemud_actors::events::EventBus;
use qemud_actors::host::HostInfo;
use qemud_actors::network::registry::{NetworkRegistry, Ready, StopAll};
use qemud_actors::Services;
use qemud_config::settings::{Mode, Settings};

#[derive(Parser, Debug)]
#[command(
    name = "qemud",
    version,
    about = "QEMU host daemon speaking libvirt's remote protocol"
)]
struct Args {
    /// TOML settings file; without it the embedded defaults apply.
    #[arg(long, short = 'f', env = "QEMUD_CONFIG")]
    config: Option<PathBuf>,
    /// Read-write UNIX socket path.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Read-only UNIX socket path.
    #[arg(long)]
    socket_ro: Option<PathBuf>,
    /// Directory for persistent definitions and logs.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Directory for sockets and running-VM records.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Listen for plain TCP on this address (needs auth_tcp = "none").
    #[arg(long)]
    listen_tcp: Option<String>,
    /// Listen for TLS on this address (x509 client certificates required).
    #[arg(long)]
    listen_tls: Option<String>,
    /// Write the daemon's pid here.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// QEMU binary to use.
    #[arg(long)]
    qemu: Option<String>,
    /// Log as "text" (coloured only on a terminal) or "json" (one object
    /// per line, for journald and containers); overrides `log_format`.
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
}

fn apply(args: &Args, s: &mut Settings) {
    // The run dir moves the default socket paths along with it.
    if let Some(d) = &args.run_dir {
        s.set_run_dir(d.clone());
    }
    if let Some(d) = &args.state_dir {
        s.state_dir = d.clone();
    }
    if let Some(p) = &args.socket {
        s.unix_sock_path = p.clone();
    }
    if let Some(p) = &args.socket_ro {
        s.unix_sock_ro_path = p.clone();
    }
    if let Some(a) = &args.listen_tcp {
        s.listen_tcp = true;
        s.tcp_addr = a.clone();
    }
    if let Some(a) = &args.listen_tls {
        s.listen_tls = true;
        s.tls_addr = a.clone();
    }
    if let Some(q) = &args.qemu {
        s.qemu_binary = Some(q.clone());
    }
    if let Some(f) = &args.log_format {
        s.log_format = f.clone();
    }
}

/// Logs to stderr as text or JSON. Colour codes only reach a terminal:
/// in a file, a pipe or the journal they are noise.
fn init_logging(format: &str) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

fn main() {
    if let Some(code) = qemud_clidoc::generate_if_asked(<Args as clap::CommandFactory>::command) {
        std::process::exit(code);
    }
    let args = Args::parse();
    let loaded = Settings::load(args.config.as_deref());
    let format = args
        .log_format
        .clone()
        .or_else(|| loaded.as_ref().ok().map(|s| s.log_format.clone()))
        .unwrap_or_else(|| "text".into());
    init_logging(&format);
    let mut settings = match loaded {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            std::process::exit(1);
        }
    };
    apply(&args, &mut settings);
    // Flags can change what the file said; check the result once more.
    if let Err(e) = settings.validate() {
        error!("invalid settings: {e}");
        std::process::exit(1);
    }
    // Before anything else touches the directories: a second daemon on
    // them must leave the first one's QEMUs, records and sockets alone.
    let _locks = match lock::DirLocks::acquire(&settings) {
        Ok(l) => l,
        Err(e) => {
            error!("{e}");
            std::process::exit(1);
        }
    };
    let settings = Arc::new(settings);

    let system = actix_rt::System::new();
    let code = system.block_on(run(settings, args.pid_file.clone()));
    std::process::exit(code);
}

async fn run(settings: Arc<Settings>, pid_file: Option<PathBuf>) -> i32 {
    let host = Arc::new(HostInfo::probe(settings.qemu_binary.as_deref()));
    info!(
        emulator = %host.emulator.display(),
        qemu_version = host.qemu_version,
        kvm = host.kvm,
        "host probed"
    );
    let index = Arc::new(DomainIndex::new());
    let events = actix::Actor::start(EventBus::default());
    let store = Store::new(settings.state_dir.clone(), settings.run_dir.clone());
    let registry = actix::Actor::start(Registry::new(
        settings.clone(),
        host.clone(),
        store,
        index.clone(),
        events.clone(),
    ));
    let secrets = actix::Actor::start(qemud_actors::secret::driver::SecretDriver::load(
        settings.state_dir.join("secrets"),
        events.clone(),
    ));
    let nodedevs = qemud_actors::nodedev::NodeDevices::start(events.clone());
    let storage = actix::Actor::start(qemud_actors::storage::driver::StorageDriver::new(
        &settings.state_dir,
        &settings.run_dir,
        events.clone(),
    ));
    let networks = actix::Actor::start(NetworkRegistry::new(
        settings.state_dir.clone(),
        settings.run_dir.clone(),
        qemud_actors::network::index::global(),
        events.clone(),
        Some(index.clone()),
    ));
    // Networks a killed daemon left active are taken back before clients
    // can look at them.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(60), networks.send(Ready)).await;
    let uri = match settings.mode {
        Mode::System => "qemu:///system",
        Mode::Session => "qemu:///session",
    };
    let svc = Arc::new(Services {
        settings: settings.clone(),
        host,
        index,
        registry,
        events,
        secrets,
        nodedevs,
        storage,
        networks: networks.clone(),
        uri: uri.to_owned(),
    });

    let listeners = match listeners::start(svc.clone()).await {
        Ok(l) => l,
        Err(e) => {
            error!("{e}");
            return 1;
        }
    };
    if let Some(addr) = &settings.metrics_addr {
        if let Err(e) = metrics::start(svc.clone(), addr).await {
            error!("{e}");
            return 1;
        }
    }
    if let Some(p) = &pid_file {
        if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
            error!("cannot write pid file {}: {e}", p.display());
            return 1;
        }
    }
    info!("qemud ready");
    // Under systemd (Type=notify) this tells it the sockets are listening.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    wait_for_shutdown().await;
    info!("shutting down; running domains keep running");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    listeners.close();
    // Networks do not outlive the daemon: bridges, rules and dnsmasq go.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), networks.send(StopAll)).await;
    if let Some(p) = &pid_file {
        let _ = std::fs::remove_file(p);
    }
    0
}

async fn wait_for_shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
