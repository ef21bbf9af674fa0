//! The Prometheus / OpenMetrics endpoint (`metrics_addr`, off by default):
//! `GET /metrics` answers host and per-domain gauges and counters taken
//! from the same collector as virConnectGetAllDomainStats, so a scrape
//! costs each VM a few read-only monitor queries under the stats deadline
//! and never waits on a stuck one. Names follow the widely used libvirt
//! exporters (`libvirt_domain_info_*`, `libvirt_domain_block_stats_*`,
//! `libvirt_domain_interface_stats_*`, ...) so dashboards carry over.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use qemud_actors::domain::stats::{collect, collect_deadline, group, DomainStats};
use qemud_actors::Services;
use qemud_protocol::remote::TypedParamValue;

/// Longest request head read from a scraper.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a scraper gets to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// At most this many scrapes are answered at once.
const MAX_SCRAPES: usize = 16;

/// Binds the endpoint and serves it until the daemon exits.
pub async fn start(svc: Arc<Services>, addr: &str) -> Result<(), String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?;
    info!(addr, "metrics endpoint listening");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    actix_rt::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!("metrics accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                debug!(%peer, "too many scrapes at once; dropping one");
                continue;
            };
            let svc = svc.clone();
            actix_rt::spawn(async move {
                if let Err(e) = serve(stream, &svc).await {
                    debug!(%peer, "metrics request failed: {e}");
                }
                drop(permit);
            });
        }
    });
    Ok(())
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        if buf.len() >= MAX_REQUEST {
            return Err(std::io::Error::other("request head too long"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

async fn serve(mut stream: TcpStream, svc: &Services) -> std::io::Result<()> {
    let head = tokio::time::timeout(REQUEST_DEADLINE, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::other("request timed out"))??;
    let mut lines = head.lines();
    let request = lines.next().unwrap_or("");
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let openmetrics = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("accept:") && l.contains("application/openmetrics-text")
    });
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") | ("HEAD", "/metrics") => {
            let body = render(svc, openmetrics).await;
            let ct = if openmetrics {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                "text/plain; version=0.0.4; charset=utf-8"
            };
            ("200 OK", ct, body)
        }
        ("GET", _) | ("HEAD", _) => ("404 Not Found", "text/plain", "not found\n".into()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".into(),
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
    openmetrics: bool,
}

impl Family<'_> {
    /// Starts a family; counters' samples carry the `_total` suffix.
    fn begin(&mut self, name: &str, kind: &str, help: &str) {
        let family = if self.openmetrics && kind == "counter" {
            name.strip_suffix("_total").unwrap_or(name)
        } else {
            name
        };
        let _ = writeln!(self.out, "# HELP {family} {help}");
        let _ = writeln!(self.out, "# TYPE {family} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let _ = write!(self.out, "{name}");
        if !labels.is_empty() {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            let _ = write!(self.out, "{{{}}}", l.join(","));
        }
        let _ = writeln!(self.out, " {}", number(value));
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn get(d: &DomainStats, name: &str) -> Option<f64> {
    d.params
        .0
        .iter()
        .find(|p| p.field.0 == name)
        .and_then(|p| match &p.value {
            TypedParamValue::I(v) => Some(*v as f64),
            TypedParamValue::Ui(v) => Some(*v as f64),
            TypedParamValue::L(v) => Some(*v as f64),
            TypedParamValue::Ul(v) => Some(*v as f64),
            TypedParamValue::D(v) => Some(*v),
            TypedParamValue::B(v) => Some(*v as f64),
            TypedParamValue::S(_) => None,
        })
}

fn get_str<'a>(d: &'a DomainStats, name: &str) -> Option<&'a str> {
    d.params
        .0
        .iter()
        .find(|p| p.field.0 == name)
        .and_then(|p| match &p.value {
            TypedParamValue::S(s) => Some(s.0.as_str()),
            _ => None,
        })
}

const NS: f64 = 1e-9;
const KIB: f64 = 1024.0;

/// Per-domain families: (metric, kind, help, stats field, scale).
const DOMAIN_METRICS: &[(&str, &str, &str, &str, f64)] = &[
    (
        "libvirt_domain_info_vstate",
        "gauge",
        "Domain state (virDomainState).",
        "state.state",
        1.0,
    ),
    (
        "libvirt_domain_info_cpu_time_seconds_total",
        "counter",
        "CPU time used by the domain's QEMU.",
        "cpu.time",
        NS,
    ),
    (
        "libvirt_domain_info_user_time_seconds_total",
        "counter",
        "User CPU time of the domain's QEMU.",
        "cpu.user",
        NS,
    ),
    (
        "libvirt_domain_info_system_time_seconds_total",
        "counter",
        "System CPU time of the domain's QEMU.",
        "cpu.system",
        NS,
    ),
    (
        "libvirt_domain_info_maximum_memory_bytes",
        "gauge",
        "Maximum memory of the domain.",
        "balloon.maximum",
        KIB,
    ),
    (
        "libvirt_domain_info_memory_usage_bytes",
        "gauge",
        "Memory the domain has now (balloon).",
        "balloon.current",
        KIB,
    ),
    (
        "libvirt_domain_memory_stats_rss_bytes",
        "gauge",
        "Resident set size of the domain's QEMU.",
        "balloon.rss",
        KIB,
    ),
    (
        "libvirt_domain_memory_stats_unused_bytes",
        "gauge",
        "Memory the guest leaves unused.",
        "balloon.unused",
        KIB,
    ),
    (
        "libvirt_domain_memory_stats_available_bytes",
        "gauge",
        "Memory the guest sees.",
        "balloon.available",
        KIB,
    ),
    (
        "libvirt_domain_memory_stats_usable_bytes",
        "gauge",
        "Memory the guest can use without swapping.",
        "balloon.usable",
        KIB,
    ),
    (
        "libvirt_domain_info_virtual_cpus",
        "gauge",
        "Number of online virtual CPUs.",
        "vcpu.current",
        1.0,
    ),
    (
        "libvirt_domain_info_maximum_virtual_cpus",
        "gauge",
        "Maximum number of virtual CPUs.",
        "vcpu.maximum",
        1.0,
    ),
];

/// Block families: (metric suffix, kind, help, field suffix, scale).
const BLOCK_METRICS: &[(&str, &str, &str, &str, f64)] = &[
    (
        "read_requests_total",
        "counter",
        "Read requests.",
        "rd.reqs",
        1.0,
    ),
    (
        "read_bytes_total",
        "counter",
        "Bytes read.",
        "rd.bytes",
        1.0,
    ),
    (
        "read_time_seconds_total",
        "counter",
        "Time spent reading.",
        "rd.times",
        NS,
    ),
    (
        "write_requests_total",
        "counter",
        "Write requests.",
        "wr.reqs",
        1.0,
    ),
    (
        "write_bytes_total",
        "counter",
        "Bytes written.",
        "wr.bytes",
        1.0,
    ),
    (
        "write_time_seconds_total",
        "counter",
        "Time spent writing.",
        "wr.times",
        NS,
    ),
    (
        "flush_requests_total",
        "counter",
        "Flush requests.",
        "fl.reqs",
        1.0,
    ),
    (
        "flush_time_seconds_total",
        "counter",
        "Time spent flushing.",
        "fl.times",
        NS,
    ),
    (
        "allocation",
        "gauge",
        "Highest written offset (allocation) in bytes.",
        "allocation",
        1.0,
    ),
    (
        "capacity_bytes",
        "gauge",
        "Virtual size of the disk.",
        "capacity",
        1.0,
    ),
    (
        "physicalsize_bytes",
        "gauge",
        "Size of the image on the host.",
        "physical",
        1.0,
    ),
];

const NET_METRICS: &[(&str, &str, &str)] = &[
    ("receive_bytes_total", "Bytes received.", "rx.bytes"),
    ("receive_packets_total", "Packets received.", "rx.pkts"),
    ("receive_errors_total", "Receive errors.", "rx.errs"),
    (
        "receive_drops_total",
        "Received packets dropped.",
        "rx.drop",
    ),
    ("transmit_bytes_total", "Bytes transmitted.", "tx.bytes"),
    ("transmit_packets_total", "Packets transmitted.", "tx.pkts"),
    ("transmit_errors_total", "Transmit errors.", "tx.errs"),
    (
        "transmit_drops_total",
        "Transmitted packets dropped.",
        "tx.drop",
    ),
];

/// The host's CPU time by mode and available memory, from /proc.
fn host_usage(f: &mut Family) {
    if let Ok(stat) = std::fs::read_to_string("/proc/stat") {
        if let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) {
            let ticks: Vec<f64> = cpu
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            // SAFETY: sysconf has no memory-safety preconditions.
            let hz = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) }.max(1) as f64;
            let name = "qemud_host_cpu_seconds_total";
            f.begin(name, "counter", "CPU time of the host by mode.");
            for (i, mode) in [
                "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
            ]
            .iter()
            .enumerate()
            {
                if let Some(t) = ticks.get(i) {
                    f.sample(name, &[("mode", mode)], t / hz);
                }
            }
        }
    }
    if let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") {
        let kib = |key: &str| {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        };
        if let Some(v) = kib("MemAvailable:") {
            f.begin(
                "qemud_host_memory_available_bytes",
                "gauge",
                "Memory available on the host.",
            );
            f.sample("qemud_host_memory_available_bytes", &[], v * KIB);
        }
    }
}

/// The whole exposition.
pub async fn render(svc: &Services, openmetrics: bool) -> String {
    let started = Instant::now();
    let groups = group::STATE
        | group::CPU_TOTAL
        | group::BALLOON
        | group::VCPU
        | group::INTERFACE
        | group::BLOCK;
    let views = svc.index.all();
    let stats = collect(svc, views, groups, collect_deadline(svc)).await;
    let mut out = String::new();
    let mut f = Family {
        out: &mut out,
        openmetrics,
    };
    f.begin("libvirt_up", "gauge", "Whether the daemon answered.");
    f.sample("libvirt_up", &[], if stats.is_ok() { 1.0 } else { 0.0 });
    let stats = stats.unwrap_or_default();
    f.begin("libvirt_domains", "gauge", "Number of domains by activity.");
    let active = stats.iter().filter(|d| d.view.is_active()).count();
    f.sample("libvirt_domains", &[("state", "active")], active as f64);
    f.sample(
        "libvirt_domains",
        &[("state", "inactive")],
        (stats.len() - active) as f64,
    );
    f.begin("qemud_host_cpus", "gauge", "Logical CPUs of the host.");
    f.sample("qemud_host_cpus", &[], svc.host.cpus as f64);
    f.begin("qemud_host_memory_bytes", "gauge", "Memory of the host.");
    f.sample(
        "qemud_host_memory_bytes",
        &[],
        svc.host.memory_kib as f64 * KIB,
    );

    host_usage(&mut f);

    let labels = |d: &DomainStats| (d.view.name.clone(), d.view.uuid.to_string());
    for (metric, kind, help, field, scale) in DOMAIN_METRICS {
        let present: Vec<&DomainStats> = stats.iter().filter(|d| get(d, field).is_some()).collect();
        if present.is_empty() {
            continue;
        }
        f.begin(metric, kind, help);
        for d in present {
            let (name, uuid) = labels(d);
            let v = get(d, field).unwrap_or(0.0) * scale;
            f.sample(metric, &[("domain", &name), ("uuid", &uuid)], v);
        }
    }

    // vCPUs.
    for (metric, kind, help, suffix, scale) in [
        (
            "libvirt_domain_vcpu_time_seconds_total",
            "counter",
            "CPU time used by one vCPU.",
            "time",
            NS,
        ),
        (
            "libvirt_domain_vcpu_delay_seconds_total",
            "counter",
            "Time one vCPU waited to run.",
            "delay",
            NS,
        ),
        (
            "libvirt_domain_vcpu_state",
            "gauge",
            "State of one vCPU (virVcpuState).",
            "state",
            1.0,
        ),
    ] {
        let mut begun = false;
        for d in &stats {
            let (name, uuid) = labels(d);
            let max = get(d, "vcpu.maximum").unwrap_or(0.0) as u32;
            for i in 0..max {
                let Some(v) = get(d, &format!("vcpu.{i}.{suffix}")) else {
                    continue;
                };
                if !begun {
                    f.begin(metric, kind, help);
                    begun = true;
                }
                let vcpu = i.to_string();
                f.sample(
                    metric,
                    &[("domain", &name), ("uuid", &uuid), ("vcpu", &vcpu)],
                    v * scale,
                );
            }
        }
    }

    // Disks.
    for (suffix, kind, help, field, scale) in BLOCK_METRICS {
        let metric = format!("libvirt_domain_block_stats_{suffix}");
        let mut begun = false;
        for d in &stats {
            let (name, uuid) = labels(d);
            let count = get(d, "block.count").unwrap_or(0.0) as usize;
            for i in 0..count {
                let Some(v) = get(d, &format!("block.{i}.{field}")) else {
                    continue;
                };
                if !begun {
                    f.begin(&metric, kind, help);
                    begun = true;
                }
                let dev = get_str(d, &format!("block.{i}.name"))
                    .unwrap_or("")
                    .to_string();
                let src = get_str(d, &format!("block.{i}.path"))
                    .unwrap_or("")
                    .to_string();
                f.sample(
                    &metric,
                    &[
                        ("domain", &name),
                        ("uuid", &uuid),
                        ("target_device", &dev),
                        ("source_file", &src),
                    ],
                    v * scale,
                );
            }
        }
    }

    // Host interfaces of NICs (user-mode NICs have none).
    for (suffix, help, field) in NET_METRICS {
        let metric = format!("libvirt_domain_interface_stats_{suffix}");
        let mut begun = false;
        for d in &stats {
            let (name, uuid) = labels(d);
            let count = get(d, "net.count").unwrap_or(0.0) as usize;
            for i in 0..count {
                let Some(v) = get(d, &format!("net.{i}.{field}")) else {
                    continue;
                };
                if !begun {
                    f.begin(&metric, "counter", help);
                    begun = true;
                }
                let dev = get_str(d, &format!("net.{i}.name"))
                    .unwrap_or("")
                    .to_string();
                f.sample(
                    &metric,
                    &[("domain", &name), ("uuid", &uuid), ("target_device", &dev)],
                    v,
                );
            }
        }
    }

    f.begin(
        "qemud_scrape_duration_seconds",
        "gauge",
        "Time taken to collect these metrics.",
    );
    f.sample(
        "qemud_scrape_duration_seconds",
        &[],
        started.elapsed().as_secs_f64(),
    );
    if openmetrics {
        out.push_str("# EOF\n");
    }
    out
}
