//! `qemuctl soak`: mixed load on a daemon for a set time — calls,
//! define/undefine, start/destroy of a firmware-only VM, event subscribers,
//! clients that never read, connect churn — and the daemon's resources
//! (RSS, open fds, threads, QEMU children) before and after, to show leaks.
//! Every loop stops at the deadline; every call has the client's deadline.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use qemud_client::transport::default_socket;
use qemud_client::{Client, ClientError};
use qemud_protocol::remote::procs;
use qemud_protocol::uri::{ConnectUri, Transport};

#[derive(Args, Clone, Debug)]
pub struct SoakArgs {
    /// How long the mixed load runs.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// The daemon's pid; found from the UNIX socket's peer when omitted.
    #[arg(long)]
    pub daemon_pid: Option<i32>,
    /// Connections making calls in a loop.
    #[arg(long, default_value_t = 4)]
    pub callers: usize,
    /// Loops starting and destroying a firmware-only VM; 0 skips VMs.
    #[arg(long, default_value_t = 1)]
    pub vms: usize,
    /// Event subscribers (reading every event).
    #[arg(long, default_value_t = 4)]
    pub subscribers: usize,
    /// Clients that pipeline calls and never read (UNIX sockets only),
    /// each held for a few seconds, then replaced.
    #[arg(long, default_value_t = 4)]
    pub lazy: usize,
    /// Domain type of the soak VMs: kvm or qemu (default: kvm when /dev/kvm is usable).
    #[arg(long)]
    pub domain_type: Option<String>,
}

/// The daemon's resources at one moment.
#[derive(Serialize, Debug, Clone, Default)]
pub struct Resources {
    pub rss_kib: u64,
    pub fds: usize,
    pub threads: u64,
    /// QEMU processes whose parent is the daemon.
    pub qemus: usize,
}

#[derive(Serialize, Debug, Default)]
pub struct Counts {
    pub calls: u64,
    pub defines: u64,
    pub vm_cycles: u64,
    pub events: u64,
    pub lazy_clients: u64,
    pub connects: u64,
    pub errors: u64,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub seconds: u64,
    pub daemon_pid: Option<i32>,
    pub start: Option<Resources>,
    pub end: Option<Resources>,
    pub peak_rss_kib: u64,
    pub counts: Counts,
    pub destroy_p50_ms: f64,
    pub destroy_p99_ms: f64,
    pub destroy_max_ms: f64,
    /// The first few errors, for a human to read.
    pub first_errors: Vec<String>,
}

fn status_field(pid: i32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Reads the daemon's resources from /proc (the daemon must be local).
pub fn resources(pid: i32) -> Option<Resources> {
    let rss_kib = status_field(pid, "VmRSS:")?;
    let threads = status_field(pid, "Threads:").unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let mut qemus = 0;
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Ok(stat) = std::fs::read_to_string(p.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ..."; comm may hold spaces.
            let Some((head, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let comm = head.split_once('(').map(|(_, c)| c).unwrap_or("");
            let ppid = rest.split_whitespace().nth(1).and_then(|v| v.parse().ok());
            let state = rest.split_whitespace().next().unwrap_or("");
            if ppid == Some(pid) && comm.starts_with("qemu") && state != "Z" {
                qemus += 1;
            }
        }
    }
    Some(Resources {
        rss_kib,
        fds,
        threads,
        qemus,
    })
}

/// The local socket a URI reaches, if it is a UNIX one.
fn unix_socket(uri: &str) -> Option<PathBuf> {
    let parsed = ConnectUri::parse(uri).ok()?;
    if parsed.transport != Transport::Unix {
        return None;
    }
    Some(
        parsed
            .param("socket")
            .map(PathBuf::from)
            .unwrap_or_else(|| default_socket(&parsed, false)),
    )
}

/// The pid of the process listening on a UNIX socket: the socket's inode
/// from /proc/net/unix, then the process holding it among its fds.
fn listener_pid(socket: &std::path::Path) -> Option<i32> {
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    let wanted = socket.to_string_lossy();
    // "Num RefCount Protocol Flags Type St Inode Path"; listening: St 01.
    let inode = table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 8 && f[7] == wanted && f[3] == "00010000").then(|| f[6].to_owned())
    })?;
    let link = format!("socket:[{inode}]");
    for p in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == link) {
                return Some(pid);
            }
        }
    }
    None
}

fn domain_xml(name: &str, ty: &str) -> String {
    format!(
        "<domain type='{ty}'><name>{name}</name><memory unit='MiB'>32</memory>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os>\
         <devices><memballoon model='none'/></devices></domain>"
    )
}

/// A CALL frame: length, REMOTE program, version 1, procedure, CALL,
/// serial, OK, body.
fn call_frame(procedure: i32, serial: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(28 + body.len());
    v.extend_from_slice(&((28 + body.len()) as u32).to_be_bytes());
    for w in [0x2000_8086u32, 1, procedure as u32, 0, serial, 0] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v.extend_from_slice(body);
    v
}

struct Shared {
    stop: AtomicBool,
    calls: AtomicU64,
    defines: AtomicU64,
    vm_cycles: AtomicU64,
    events: AtomicU64,
    lazy: AtomicU64,
    connects: AtomicU64,
    errors: AtomicU64,
    first_errors: std::sync::Mutex<Vec<String>>,
    destroys: std::sync::Mutex<Vec<Duration>>,
}

impl Shared {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut v) = self.first_errors.lock() {
            if v.len() < 10 {
                v.push(format!("{what}: {e}"));
            }
        }
    }
}

async fn callers(uri: String, sh: Arc<Shared>) {
    let c = match Client::connect(&uri).await {
        Ok(c) => c,
        Err(e) => return sh.error("connect", e),
    };
    let mut i = 0u64;
    while sh.running() {
        i += 1;
        let r = match i % 3 {
            0 => c.list_all_domains(0).await.map(drop),
            1 => c.capabilities().await.map(drop),
            _ => c
                .call_raw(procs::CONNECT_GET_LIB_VERSION, Vec::new())
                .await
                .map(drop),
        };
        match r {
            Ok(()) => {
                sh.calls.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => sh.error("call", e),
        }
    }
    let _ = c.close().await;
}

async fn definer(uri: String, prefix: String, ty: String, sh: Arc<Shared>) {
    let c = match Client::connect(&uri).await {
        Ok(c) => c,
        Err(e) => return sh.error("connect", e),
    };
    let mut i = 0u64;
    while sh.running() {
        i += 1;
        let name = format!("{prefix}def-{}", i % 16);
        match c.define_xml(&domain_xml(&name, &ty)).await {
            Ok(d) => {
                sh.defines.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = c.undefine(&d).await {
                    sh.error("undefine", e);
                }
            }
            Err(e) => sh.error("define", e),
        }
    }
    let _ = c.close().await;
}

async fn vm_loop(uri: String, name: String, ty: String, sh: Arc<Shared>) {
    let c = match Client::connect(&uri).await {
        Ok(c) => c,
        Err(e) => return sh.error("connect", e),
    };
    let d = match c.define_xml(&domain_xml(&name, &ty)).await {
        Ok(d) => d,
        Err(e) => return sh.error("define vm", e),
    };
    while sh.running() {
        if let Err(e) = c.start(&d).await {
            sh.error("start", e);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let t = Instant::now();
        match c.destroy(&d).await {
            Ok(()) => {
                if let Ok(mut v) = sh.destroys.lock() {
                    v.push(t.elapsed());
                }
                sh.vm_cycles.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => sh.error("destroy", e),
        }
    }
    let _ = c.destroy(&d).await;
    if let Err(e) = c.undefine(&d).await {
        sh.error("undefine vm", e);
    }
    let _ = c.close().await;
}

async fn subscriber(uri: String, sh: Arc<Shared>) {
    let c = match Client::connect(&uri).await {
        Ok(c) => c,
        Err(e) => return sh.error("connect", e),
    };
    let Some(mut rx) = c.take_events() else {
        return;
    };
    if let Err(e) = c.register_lifecycle(None).await {
        return sh.error("register", e);
    }
    while sh.running() {
        match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            Ok(Some(_)) => {
                sh.events.fetch_add(1, Ordering::Relaxed);
            }
            Ok(None) => return sh.error("subscriber", "connection closed"),
            Err(_) => {}
        }
    }
    let _ = c.close().await;
}

/// Opens a raw connection, pipelines getCapabilities calls and never
/// reads; holds it a few seconds, then drops it and starts again.
async fn lazy_reader(socket: PathBuf, sh: Arc<Shared>) {
    let mut calls = call_frame(procs::CONNECT_OPEN, 1, &[0; 8]);
    for serial in 2..2000u32 {
        calls.extend(call_frame(procs::CONNECT_GET_CAPABILITIES, serial, &[]));
    }
    while sh.running() {
        match tokio::net::UnixStream::connect(&socket).await {
            Ok(mut s) => {
                sh.lazy.fetch_add(1, Ordering::Relaxed);
                // The daemon stops reading at some point: bound the write.
                let _ = tokio::time::timeout(Duration::from_secs(3), s.write_all(&calls)).await;
                let until = Instant::now() + Duration::from_secs(3);
                while sh.running() && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            Err(e) => {
                sh.error("lazy connect", e);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn churn(uri: String, sh: Arc<Shared>) {
    while sh.running() {
        match Client::connect(&uri).await {
            Ok(c) => {
                sh.connects.fetch_add(1, Ordering::Relaxed);
                let _ = c.close().await;
            }
            Err(e) => sh.error("connect churn", e),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

pub async fn measure(uri: &str, a: &SoakArgs) -> Result<Report, ClientError> {
    let ty = a.domain_type.clone().unwrap_or_else(|| {
        let kvm = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if kvm { "kvm" } else { "qemu" }.to_owned()
    });
    let socket = unix_socket(uri);
    let pid = a
        .daemon_pid
        .or_else(|| socket.as_deref().and_then(listener_pid));
    // The first connection checks the daemon answers at all.
    Client::connect(uri).await?.close().await?;
    // ...and is given a moment to close that connection before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = pid.and_then(resources);
    let prefix = format!("qemuctl-soak-{}-", std::process::id());
    let sh = Arc::new(Shared {
        stop: AtomicBool::new(false),
        calls: AtomicU64::new(0),
        defines: AtomicU64::new(0),
        vm_cycles: AtomicU64::new(0),
        events: AtomicU64::new(0),
        lazy: AtomicU64::new(0),
        connects: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_errors: std::sync::Mutex::new(Vec::new()),
        destroys: std::sync::Mutex::new(Vec::new()),
    });
    let mut tasks = Vec::new();
    for _ in 0..a.callers {
        tasks.push(tokio::spawn(callers(uri.to_owned(), sh.clone())));
    }
    tasks.push(tokio::spawn(definer(
        uri.to_owned(),
        prefix.clone(),
        ty.clone(),
        sh.clone(),
    )));
    for i in 0..a.vms {
        tasks.push(tokio::spawn(vm_loop(
            uri.to_owned(),
            format!("{prefix}vm-{i}"),
            ty.clone(),
            sh.clone(),
        )));
    }
    for _ in 0..a.subscribers {
        tasks.push(tokio::spawn(subscriber(uri.to_owned(), sh.clone())));
    }
    if let Some(socket) = &socket {
        for _ in 0..a.lazy {
            tasks.push(tokio::spawn(lazy_reader(socket.clone(), sh.clone())));
        }
    }
    tasks.push(tokio::spawn(churn(uri.to_owned(), sh.clone())));

    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let mut peak = start.as_ref().map(|r| r.rss_kib).unwrap_or(0);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(r) = pid.and_then(resources) {
            peak = peak.max(r.rss_kib);
        }
    }
    sh.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        // Each loop ends within one call's deadline of the stop.
        let _ = t.await;
    }
    // Let the daemon close what departed clients left (queued replies get
    // a moment to leave, freed memory is trimmed after a burst).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let end = pid.and_then(resources);
    let mut destroys = sh.destroys.lock().map(|v| v.clone()).unwrap_or_default();
    destroys.sort();
    let first_errors = sh
        .first_errors
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    Ok(Report {
        seconds: a.seconds,
        daemon_pid: pid,
        start,
        end,
        peak_rss_kib: peak,
        counts: Counts {
            calls: sh.calls.load(Ordering::Relaxed),
            defines: sh.defines.load(Ordering::Relaxed),
            vm_cycles: sh.vm_cycles.load(Ordering::Relaxed),
            events: sh.events.load(Ordering::Relaxed),
            lazy_clients: sh.lazy.load(Ordering::Relaxed),
            connects: sh.connects.load(Ordering::Relaxed),
            errors: sh.errors.load(Ordering::Relaxed),
        },
        destroy_p50_ms: percentile(&destroys, 0.5),
        destroy_p99_ms: percentile(&destroys, 0.99),
        destroy_max_ms: destroys
            .last()
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(0.0),
        first_errors,
    })
}

pub async fn run(uri: &str, a: &SoakArgs, json: bool) -> Result<(), ClientError> {
    let r = measure(uri, a).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
        return Ok(());
    }
    let show = |what: &str, res: &Option<Resources>| match res {
        Some(r) => println!(
            "{what:<6} rss {:>8} KiB  fds {:>5}  threads {:>4}  qemus {:>3}",
            r.rss_kib, r.fds, r.threads, r.qemus
        ),
        None => println!("{what:<6} (daemon not local or pid unknown)"),
    };
    println!("soak of {} s against {uri}", r.seconds);
    show("start", &r.start);
    show("end", &r.end);
    println!("peak rss {} KiB", r.peak_rss_kib);
    let c = &r.counts;
    println!(
        "calls {}  defines {}  vm cycles {}  events {}  lazy clients {}  connects {}  errors {}",
        c.calls, c.defines, c.vm_cycles, c.events, c.lazy_clients, c.connects, c.errors
    );
    println!(
        "destroy p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        r.destroy_p50_ms, r.destroy_p99_ms, r.destroy_max_ms
    );
    for e in &r.first_errors {
        println!("error: {e}");
    }
    Ok(())
}
