//! One actor per active network: it owns the network's bridge, its nftables
//! table and its dnsmasq, supervises dnsmasq (restarting it with back-off
//! when it dies) and tears everything down when told to stop.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::process::{Child, Command};
use tracing::{info, warn};

use qemud_config::network::NetworkDef;

use super::dnsmasq::{self, Files};
use super::firewall;
use super::sys::{self, ip};
use crate::domain::store::write_atomic;
use crate::error::{Error, Result};

/// The first delay before restarting a dnsmasq that died; it doubles up to
/// [`MAX_BACKOFF`] while dnsmasq keeps dying young.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A dnsmasq that ran this long is healthy: the back-off starts over.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// The dnsmasq program (`QEMUD_DNSMASQ` overrides, for tests of a missing one).
fn dnsmasq_program() -> String {
    std::env::var("QEMUD_DNSMASQ").unwrap_or_else(|_| "dnsmasq".into())
}

fn write(path: &std::path::Path, text: &str) -> Result<()> {
    write_atomic(path, text.as_bytes())
        .map_err(|e| Error::System(format!("cannot write {}: {e}", path.display())))
}

/// Writes dnsmasq's files for `def`.
pub fn write_dnsmasq_files(def: &NetworkDef, files: &Files) -> Result<()> {
    write(&files.hosts, &dnsmasq::hosts_file(def))?;
    write(&files.addn_hosts, &dnsmasq::addn_hosts(def))?;
    write(&files.conf, &dnsmasq::config(def, files))
}

/// Creates the bridge with its addresses and the firewall table. On any
/// failure, whatever was created is removed again.
pub async fn bring_up(def: &NetworkDef, files: &Files) -> Result<()> {
    if def.is_bridge_mode() {
        let br = def.bridge.as_deref().unwrap_or_default();
        if !sys::link_exists(br) {
            return Err(Error::Other {
                code: qemud_protocol::ErrorCode::SystemError,
                domain: qemud_protocol::ErrorDomain::Network,
                message: format!("Cannot get interface MTU on '{br}': No such device"),
            });
        }
        return Ok(());
    }
    // Checked before anything is created: a link of that name is someone
    // else's and must survive the failure.
    let br = def
        .bridge
        .as_deref()
        .ok_or_else(|| Error::Internal(format!("network '{}' has no bridge", def.name)))?;
    if sys::link_exists(br) {
        return Err(Error::Internal(format!(
            "bridge name '{br}' already in use."
        )));
    }
    check_dnsmasq(def)?;
    let res = create(def, br, files).await;
    if res.is_err() {
        tear_down(def, files).await;
    }
    res
}

fn check_dnsmasq(def: &NetworkDef) -> Result<()> {
    if dnsmasq::needed(def) {
        // Before touching the host: a missing dnsmasq leaves nothing behind.
        let prog = dnsmasq_program();
        let found = prog.contains('/') && std::path::Path::new(&prog).exists()
            || std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(&prog).is_file()))
            || ["/usr/sbin", "/sbin"]
                .iter()
                .any(|d| std::path::Path::new(d).join(&prog).is_file());
        if !found {
            return Err(Error::System(format!(
                "Cannot check dnsmasq binary {prog}: No such file or directory"
            )));
        }
    }
    Ok(())
}

async fn create(def: &NetworkDef, br: &str, files: &Files) -> Result<()> {
    let delay_cs = (def.delay * 100).to_string();
    ip(&[
        "link",
        "add",
        "name",
        br,
        "type",
        "bridge",
        "stp_state",
        if def.stp { "1" } else { "0" },
        "forward_delay",
        &delay_cs,
    ])
    .await?;
    if let Some(mac) = &def.mac {
        ip(&["link", "set", "dev", br, "address", mac]).await?;
    }
    if let Some(mtu) = def.mtu {
        ip(&["link", "set", "dev", br, "mtu", &mtu.to_string()]).await?;
    }
    for a in &def.ips {
        if a.is_v4() {
            ip(&["addr", "add", &a.cidr(), "dev", br]).await?;
        } else {
            ip(&["-6", "addr", "add", &a.cidr(), "dev", br, "nodad"]).await?;
        }
    }
    ip(&["link", "set", "dev", br, "up"]).await?;
    if let Some(rules) = firewall::ruleset(def) {
        // A table left over from a crash would make `add` fail.
        let table = firewall::table_name(br);
        let _ = sys::run("nft", &["delete", "table", "inet", &table], None).await;
        sys::run("nft", &["-f", "-"], Some(&rules)).await?;
    }
    if matches!(
        def.forward_mode(),
        Some(qemud_config::network::ForwardMode::Nat | qemud_config::network::ForwardMode::Route)
    ) {
        if def.ips.iter().any(|i| i.is_v4()) {
            enable_forwarding("/proc/sys/net/ipv4/ip_forward");
        }
        if def.ips.iter().any(|i| !i.is_v4()) {
            enable_forwarding("/proc/sys/net/ipv6/conf/all/forwarding");
        }
    }
    if dnsmasq::needed(def) {
        write_dnsmasq_files(def, files)?;
    }
    Ok(())
}

fn enable_forwarding(path: &str) {
    if let Err(e) = std::fs::write(path, "1\n") {
        warn!("cannot enable forwarding ({path}): {e}");
    }
}

/// Takes a network a killed daemon left running back: the bridge (with
/// the guests' taps on it) stays if it is there, the firewall table and
/// dnsmasq's files are made anew; a missing bridge is created.
pub async fn reattach(def: &NetworkDef, files: &Files) -> Result<()> {
    let br = def.bridge.as_deref().unwrap_or_default();
    if def.is_bridge_mode() || !sys::link_exists(br) {
        return bring_up(def, files).await;
    }
    if let Some(rules) = firewall::ruleset(def) {
        let table = firewall::table_name(br);
        let _ = sys::run("nft", &["delete", "table", "inet", &table], None).await;
        sys::run("nft", &["-f", "-"], Some(&rules)).await?;
    }
    if dnsmasq::needed(def) {
        write_dnsmasq_files(def, files)?;
    }
    Ok(())
}

/// Removes the bridge, the firewall table and dnsmasq's generated files
/// (the lease file goes too: the next start begins afresh, like libvirt).
pub async fn tear_down(def: &NetworkDef, files: &Files) {
    if def.is_bridge_mode() {
        return;
    }
    if let Some(br) = def.bridge.as_deref() {
        let table = firewall::table_name(br);
        let _ = sys::run("nft", &["delete", "table", "inet", &table], None).await;
        sys::delete_link(br).await;
    }
    for p in [&files.conf, &files.hosts, &files.addn_hosts, &files.leases] {
        let _ = std::fs::remove_file(p);
    }
}

/// Kills a dnsmasq still serving these files (one a killed daemon left,
/// should its parent-death signal not have reached it): two would fight
/// over the same addresses.
pub fn kill_stale_dnsmasq(files: &Files) {
    let wanted = format!("--conf-file={}", files.conf.display());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|b| *b == 0).any(|a| a == wanted.as_bytes()) {
            warn!(pid, "killing a dnsmasq left from a previous run");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

pub fn spawn_dnsmasq(files: &Files) -> Result<Child> {
    let prog = dnsmasq_program();
    let mut cmd = Command::new(&prog);
    cmd.arg(format!("--conf-file={}", files.conf.display()))
        .arg("--keep-in-foreground")
        .arg("--log-facility=-")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    // A dnsmasq outlives a killed daemon (guests keep their DHCP and DNS
    // meanwhile); the next daemon replaces it (kill_stale_dnsmasq).
    cmd.spawn()
        .map_err(|e| Error::System(format!("Cannot check dnsmasq binary {prog}: {e}")))
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// The live definition changed (net-update --live): rewrite dnsmasq's host
/// file and make it re-read it.
#[derive(Message)]
#[rtype(result = "Result<()>")]
pub struct Reload(pub NetworkDef);

/// Asks for dnsmasq's current pid (for tests and qemuctl).
#[derive(Message)]
#[rtype(result = "Option<i32>")]
pub struct DnsmasqPid;

pub struct ActiveNetwork {
    def: NetworkDef,
    files: Files,
    pid: Option<i32>,
    /// Counts dnsmasq launches, so a stale exit notice is ignored.
    generation: u64,
    started_at: Instant,
    backoff: Duration,
    stopping: bool,
}

impl ActiveNetwork {
    /// Takes over a network whose host side is up, with its first dnsmasq.
    pub fn start(def: NetworkDef, files: Files, first: Option<Child>) -> Addr<ActiveNetwork> {
        ActiveNetwork::create(move |ctx| {
            let mut a = ActiveNetwork {
                def,
                files,
                pid: None,
                generation: 0,
                started_at: Instant::now(),
                backoff: FIRST_BACKOFF,
                stopping: false,
            };
            if let Some(child) = first {
                a.watch(child, ctx);
            }
            a
        })
    }

    fn watch(&mut self, mut child: Child, ctx: &mut Context<Self>) {
        self.generation += 1;
        let generation = self.generation;
        self.pid = child.id().map(|p| p as i32);
        self.started_at = Instant::now();
        info!(network = %self.def.name, pid = ?self.pid, "dnsmasq started");
        let wait = async move { child.wait().await };
        ctx.spawn(wait.into_actor(self).map(move |status, act, ctx| {
            act.exited(generation, status, ctx);
        }));
    }

    fn exited(
        &mut self,
        generation: u64,
        status: std::io::Result<std::process::ExitStatus>,
        ctx: &mut Context<Self>,
    ) {
        if generation != self.generation || self.stopping {
            return;
        }
        self.pid = None;
        if self.started_at.elapsed() >= HEALTHY_RUN {
            self.backoff = FIRST_BACKOFF;
        }
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        warn!(
            network = %self.def.name,
            status = ?status.ok(),
            "dnsmasq exited; restarting in {} ms",
            delay.as_millis()
        );
        ctx.run_later(delay, |act, ctx| act.respawn(ctx));
    }

    fn respawn(&mut self, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        let res =
            write_dnsmasq_files(&self.def, &self.files).and_then(|_| spawn_dnsmasq(&self.files));
        match res {
            Ok(child) => self.watch(child, ctx),
            Err(e) => {
                let delay = self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                warn!(network = %self.def.name, "cannot restart dnsmasq: {e}; retrying in {} ms", delay.as_millis());
                ctx.run_later(delay, |act, ctx| act.respawn(ctx));
            }
        }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    }
}

impl Actor for ActiveNetwork {
    type Context = Context<Self>;
}

impl Handler<Stop> for ActiveNetwork {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, _: Stop, _: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let pid = self.pid.take();
        let def = self.def.clone();
        let files = self.files.clone();
        Box::pin(
            async move {
                // dnsmasq must be gone before its bridge: give it a moment,
                // then insist.
                if let Some(pid) = pid {
                    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
                    let until = Instant::now() + Duration::from_secs(3);
                    while proc_dir.exists() && Instant::now() < until {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                tear_down(&def, &files).await;
            }
            .into_actor(self)
            .map(|_, _, ctx| ctx.stop()),
        )
    }
}

impl Handler<Reload> for ActiveNetwork {
    type Result = Result<()>;
    fn handle(&mut self, msg: Reload, _: &mut Self::Context) -> Result<()> {
        self.def = msg.0;
        if dnsmasq::needed(&self.def) {
            write_dnsmasq_files(&self.def, &self.files)?;
            self.signal(nix::sys::signal::Signal::SIGHUP);
        }
        Ok(())
    }
}

impl Handler<DnsmasqPid> for ActiveNetwork {
    type Result = Option<i32>;
    fn handle(&mut self, _: DnsmasqPid, _: &mut Self::Context) -> Option<i32> {
        self.pid
    }
}
