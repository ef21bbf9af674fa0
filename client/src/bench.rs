//! The load generator: measures any libvirt-compatible daemon by URI.
//! Every phase is bounded in count; nothing loops forever.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;

use qemud_protocol::remote::procs;

use crate::client::{Client, ClientError};

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// Calls per throughput phase.
    #[arg(long, default_value_t = 5000)]
    pub calls: usize,
    /// Concurrent connections in the multi-connection phase.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Calls in flight on one connection in the pipelined phase.
    #[arg(long, default_value_t = 32)]
    pub pipeline: usize,
    /// Connections opened in the connect phase.
    #[arg(long, default_value_t = 100)]
    pub connects: usize,
    /// Domains defined for the listing phase.
    #[arg(long, default_value_t = 100)]
    pub domains: usize,
    /// Define/start/destroy/undefine cycles with a real (tiny) VM; 0 skips.
    #[arg(long, default_value_t = 5)]
    pub lifecycles: usize,
    /// Event subscribers (one connection each).
    #[arg(long, default_value_t = 10)]
    pub subscribers: usize,
    /// Events generated in the event phase.
    #[arg(long, default_value_t = 20)]
    pub events: usize,
    /// Running firmware-only guests for the all-domain stats phase; 0 skips.
    #[arg(long, default_value_t = 0)]
    pub stats_guests: usize,
    /// Calls per measurement of the all-domain stats phase.
    #[arg(long, default_value_t = 20)]
    pub stats_calls: usize,
    /// Volumes created and deleted in the storage phase; 0 skips.
    #[arg(long, default_value_t = 20)]
    pub volumes: usize,
    /// The (active) storage pool of the storage phase; skipped when absent.
    #[arg(long, default_value = "default")]
    pub pool: String,
    /// Domain type of the bench domains: kvm or qemu (default: kvm when /dev/kvm is usable).
    #[arg(long)]
    pub domain_type: Option<String>,
    /// Start/destroy cycles of a NAT network (bridge, firewall, dnsmasq);
    /// 0 skips. It creates links on the daemon's host: run the daemon in
    /// a network namespace of its own.
    #[arg(long, default_value_t = 0)]
    pub networks: usize,
    /// Screenshots taken of a tiny VM with VNC (which needs a loopback
    /// address on the daemon's host); 0, the default, skips.
    #[arg(long, default_value_t = 0)]
    pub screenshots: usize,
    /// Kernel of a guest with a shell on its serial console, for the
    /// console throughput phase (skipped without it).
    #[arg(long)]
    pub console_kernel: Option<String>,
    /// Initrd of that guest.
    #[arg(long)]
    pub console_initrd: Option<String>,
    /// Bytes the guest prints in the console phase.
    #[arg(long, default_value_t = 1_000_000)]
    pub console_bytes: usize,
}

#[derive(Serialize, Debug, Clone)]
pub struct Row {
    pub phase: String,
    pub count: usize,
    pub ops_per_sec: Option<f64>,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

pub(crate) fn row(phase: &str, mut samples: Vec<Duration>, wall: Option<Duration>) -> Row {
    samples.sort();
    let pick = |q: f64| {
        if samples.is_empty() {
            return 0.0;
        }
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1e6
    };
    Row {
        phase: phase.to_owned(),
        count: samples.len(),
        ops_per_sec: wall.map(|w| samples.len() as f64 / w.as_secs_f64().max(1e-9)),
        p50_us: pick(0.5),
        p99_us: pick(0.99),
        max_us: samples.last().map(|d| d.as_secs_f64() * 1e6).unwrap_or(0.0),
    }
}

fn domain_xml(name: &str, ty: &str) -> String {
    format!(
        "<domain type='{ty}'><name>{name}</name><memory unit='MiB'>32</memory>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os>\
         <devices><memballoon model='none'/></devices></domain>"
    )
}

async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<(Duration, T), ClientError> {
    let t = Instant::now();
    let v = f.await?;
    Ok((t.elapsed(), v))
}

/// Removes leftovers of an interrupted earlier run.
async fn cleanup(c: &Client, prefix: &str) {
    if let Ok(doms) = c.list_all_domains(0).await {
        for d in doms.into_iter().filter(|d| d.name.0.starts_with(prefix)) {
            let _ = c.destroy(&d).await;
            let _ = c.undefine(&d).await;
        }
    }
}

/// `virDomainEventType` SUSPENDED.
const SUSPENDED: i32 = 3;

type Subscriber = (
    Client,
    tokio::sync::mpsc::UnboundedReceiver<crate::client::EventMessage>,
);

/// Waits (at most 10 s) until every subscriber has the event `wanted`
/// picks out, recording how long after `sent` each one read it.
async fn collect_latencies(
    subs: &mut [Subscriber],
    sent: Instant,
    samples: &mut Vec<Duration>,
    wanted: impl Fn(&crate::client::LifecycleEvent) -> bool,
) -> Result<(), ClientError> {
    let deadline = sent + Duration::from_secs(10);
    for (_, rx) in subs.iter_mut() {
        loop {
            let ev = tokio::time::timeout_at(deadline.into(), rx.recv())
                .await
                .map_err(|_| ClientError::Timeout("event".into()))?
                .ok_or(ClientError::Closed)?;
            if ev.lifecycle().is_some_and(|l| wanted(&l)) {
                samples.push(ev.received.duration_since(sent));
                break;
            }
        }
    }
    Ok(())
}

pub async fn measure(uri: &str, a: &BenchArgs) -> Result<Vec<Row>, ClientError> {
    let ty = a.domain_type.clone().unwrap_or_else(|| {
        let kvm = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if kvm { "kvm" } else { "qemu" }.to_owned()
    });
    let prefix = format!("qemuctl-bench-{}-", std::process::id());
    let mut rows = Vec::new();

    // Connect + open.
    let mut samples = Vec::with_capacity(a.connects);
    for _ in 0..a.connects {
        let (d, c) = timed(Client::connect(uri)).await?;
        samples.push(d);
        let _ = c.close().await;
    }
    rows.push(row("connect+open", samples, None));

    let c = Arc::new(Client::connect(uri).await?);
    cleanup(&c, "qemuctl-bench-").await;

    // Sequential round trips of a cheap call.
    let mut samples = Vec::with_capacity(a.calls);
    let wall = Instant::now();
    for _ in 0..a.calls {
        samples.push(
            timed(c.call_raw(procs::CONNECT_GET_LIB_VERSION, Vec::new()))
                .await?
                .0,
        );
    }
    rows.push(row(
        "get_lib_version sequential",
        samples,
        Some(wall.elapsed()),
    ));

    // Pipelined on one connection.
    let mut samples = Vec::with_capacity(a.calls);
    let wall = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let mut sent = 0;
    while sent < a.calls || !inflight.is_empty() {
        while sent < a.calls && inflight.len() < a.pipeline.max(1) {
            let c = c.clone();
            inflight.push(async move {
                timed(c.call_raw(procs::CONNECT_GET_LIB_VERSION, Vec::new())).await
            });
            sent += 1;
        }
        if let Some(r) = inflight.next().await {
            samples.push(r?.0);
        }
    }
    rows.push(row(
        &format!("get_lib_version pipelined x{}", a.pipeline),
        samples,
        Some(wall.elapsed()),
    ));

    // Lookup by name of an existing domain.
    let probe = c
        .define_xml(&domain_xml(&format!("{prefix}probe"), &ty))
        .await?;
    let mut samples = Vec::with_capacity(a.calls);
    let wall = Instant::now();
    for _ in 0..a.calls {
        samples.push(timed(c.lookup_by_name(&probe.name.0)).await?.0);
    }
    rows.push(row(
        "lookup_by_name sequential",
        samples,
        Some(wall.elapsed()),
    ));

    // Many connections at once.
    let mut clients = Vec::new();
    for _ in 0..a.connections {
        clients.push(Arc::new(Client::connect(uri).await?));
    }
    let per = (a.calls / a.connections.max(1)).max(1);
    let wall = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .cloned()
        .map(|cl| {
            tokio::spawn(async move {
                let mut s = Vec::with_capacity(per);
                for _ in 0..per {
                    s.push(
                        timed(cl.call_raw(procs::CONNECT_GET_LIB_VERSION, Vec::new()))
                            .await?
                            .0,
                    );
                }
                Ok::<_, ClientError>(s)
            })
        })
        .collect();
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(
            t.await
                .map_err(|e| ClientError::Protocol(e.to_string()))??,
        );
    }
    rows.push(row(
        &format!("get_lib_version {} connections", a.connections),
        samples,
        Some(wall.elapsed()),
    ));

    // Listing many defined domains.
    let mut defined = Vec::new();
    for i in 0..a.domains {
        defined.push(
            c.define_xml(&domain_xml(&format!("{prefix}list-{i}"), &ty))
                .await?,
        );
    }
    let mut samples = Vec::new();
    for _ in 0..100 {
        let (d, list) = timed(c.list_all_domains(0)).await?;
        if list.len() < a.domains {
            return Err(ClientError::Protocol(format!(
                "listed {} of {} domains",
                list.len(),
                a.domains
            )));
        }
        samples.push(d);
    }
    rows.push(row(
        &format!("list_all_domains ({} defined)", a.domains + 1),
        samples,
        None,
    ));
    for d in &defined {
        c.undefine(d).await?;
    }

    // Event delivery: subscribers on their own connections.
    let mut subs = Vec::new();
    for _ in 0..a.subscribers {
        let s = Client::connect(uri).await?;
        let rx = s.take_events().ok_or(ClientError::Closed)?;
        s.register_lifecycle(None).await?;
        subs.push((s, rx));
    }
    let mut samples = Vec::new();
    for i in 0..a.events {
        let name = format!("{prefix}ev-{i}");
        let sent = Instant::now();
        let d = c.define_xml(&domain_xml(&name, &ty)).await?;
        collect_latencies(&mut subs, sent, &mut samples, |l| l.domain == name).await?;
        c.undefine(&d).await?;
    }
    rows.push(row(
        &format!("define -> event at {} subscribers", a.subscribers),
        samples,
        None,
    ));

    // Real VM lifecycle (and QMP-driven events).
    if a.lifecycles > 0 {
        let (mut def, mut start, mut suspend_ev, mut destroy, mut undef) =
            (vec![], vec![], vec![], vec![], vec![]);
        for i in 0..a.lifecycles {
            let name = format!("{prefix}vm-{i}");
            let (t, d) = timed(c.define_xml(&domain_xml(&name, &ty))).await?;
            def.push(t);
            start.push(timed(c.start(&d)).await?.0);
            // suspend: QMP stop -> STOP event -> subscribers.
            let sent = Instant::now();
            c.suspend(&d).await?;
            collect_latencies(&mut subs, sent, &mut suspend_ev, |l| {
                l.domain == name && l.event == SUSPENDED
            })
            .await?;
            destroy.push(timed(c.destroy(&d)).await?.0);
            undef.push(timed(c.undefine(&d)).await?.0);
        }
        rows.push(row("define", def, None));
        rows.push(row("start (tiny VM)", start, None));
        rows.push(row(
            &format!("suspend -> event at {} subscribers", a.subscribers),
            suspend_ev,
            None,
        ));
        rows.push(row("destroy", destroy, None));
        rows.push(row("undefine", undef, None));
    }
    if a.stats_guests > 0 {
        rows.extend(
            crate::bench_stats::measure(&c, uri, a.stats_guests, a.stats_calls, &ty, &prefix)
                .await?,
        );
    }
    // Virtual network start/destroy (opt-in: it changes host networking).
    if a.networks > 0 {
        let name = format!("{prefix}net");
        if let Ok(n) = c.network_lookup(&name).await {
            let _ = c.network_destroy(&n).await;
            let _ = c.network_undefine(&n).await;
        }
        let xml = format!(
            "<network><name>{name}</name><forward mode='nat'/><bridge name='qdbenchbr0'/>\
             <ip address='10.253.0.1' prefix='24'><dhcp>\
             <range start='10.253.0.2' end='10.253.0.254'/></dhcp></ip></network>"
        );
        let n = c.network_define(&xml).await?;
        let (mut start, mut destroy) = (vec![], vec![]);
        for _ in 0..a.networks {
            start.push(timed(c.network_start(&n)).await?.0);
            destroy.push(timed(c.network_destroy(&n)).await?.0);
        }
        c.network_undefine(&n).await?;
        rows.push(row("network start (NAT, dnsmasq)", start, None));
        rows.push(row("network destroy", destroy, None));
    }
    if a.screenshots > 0 {
        rows.push(screenshot_phase(&c, &prefix, &ty, a.screenshots).await?);
    }
    if let (Some(k), Some(i)) = (&a.console_kernel, &a.console_initrd) {
        rows.push(console_phase(&c, &prefix, &ty, k, i, a.console_bytes).await?);
    }
    c.undefine(&probe).await?;

    // Storage: qcow2 volume create (qemu-img) and delete latency.
    if a.volumes > 0 {
        if let Ok(pool) = c.pool_lookup(&a.pool).await {
            let (mut create, mut delete) = (vec![], vec![]);
            for i in 0..a.volumes {
                let xml = format!(
                    "<volume><name>{prefix}vol-{i}.qcow2</name><capacity unit='G'>1</capacity>\
                     <target><format type='qcow2'/></target></volume>"
                );
                let (t, v) = timed(c.vol_create_xml(&pool, &xml, 0)).await?;
                create.push(t);
                delete.push(timed(c.vol_delete(&v)).await?.0);
            }
            rows.push(row("vol-create qcow2 1G", create, None));
            rows.push(row("vol-delete", delete, None));

            // Stream throughput: count is MiB, ops/s is MiB/s.
            let mib = 64usize;
            let xml = format!(
                "<volume><name>{prefix}xfer.img</name><capacity unit='M'>{mib}</capacity></volume>"
            );
            let v = c.vol_create_xml(&pool, &xml, 0).await?;
            let data: Vec<u8> = (0..mib << 20).map(|i| (i % 251) as u8).collect();
            let t = Instant::now();
            let up = c.vol_upload(&v, 0, 0).await?;
            up.send(&data).await?;
            up.finish().await?;
            let up_time = t.elapsed();
            let t = Instant::now();
            let mut down = c.vol_download(&v, 0, 0).await?;
            let mut got = 0usize;
            while let Some(d) = down.recv().await? {
                got += d.len();
            }
            down.finish().await?;
            let down_time = t.elapsed();
            c.vol_delete(&v).await?;
            if got != data.len() {
                return Err(ClientError::Protocol(format!(
                    "downloaded {got} bytes of {}",
                    data.len()
                )));
            }
            rows.push(row(
                "vol-upload (count MiB, MiB/s)",
                vec![up_time; mib],
                Some(up_time),
            ));
            rows.push(row(
                "vol-download (count MiB, MiB/s)",
                vec![down_time; mib],
                Some(down_time),
            ));
        }
    }
    Ok(rows)
}

/// Screenshot latency: call, PNG/PPM stream, finish handshake.
async fn screenshot_phase(
    c: &Client,
    prefix: &str,
    ty: &str,
    n: usize,
) -> Result<Row, ClientError> {
    let xml = format!(
        "<domain type='{ty}'><name>{prefix}shot</name><memory unit='MiB'>32</memory>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os>\
         <devices><graphics type='vnc' autoport='yes' listen='127.0.0.1'/>\
         <memballoon model='none'/></devices></domain>"
    );
    let d = c.define_xml(&xml).await?;
    c.start(&d).await?;
    let mut samples = Vec::new();
    let mut result = Ok(());
    for _ in 0..n {
        match timed(c.screenshot(&d, 0)).await {
            Ok((t, _)) => samples.push(t),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let _ = c.destroy(&d).await;
    c.undefine(&d).await?;
    result?;
    Ok(row("screenshot", samples, None))
}

/// Console throughput: the guest's shell prints `bytes` bytes; the row's
/// ops/s column is MB/s and its latencies the whole transfer.
async fn console_phase(
    c: &Client,
    prefix: &str,
    ty: &str,
    kernel: &str,
    initrd: &str,
    bytes: usize,
) -> Result<Row, ClientError> {
    let xml = format!(
        "<domain type='{ty}'><name>{prefix}console</name><memory unit='MiB'>256</memory>\
         <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{kernel}</kernel>\
         <initrd>{initrd}</initrd><cmdline>console=ttyS0 quiet</cmdline></os><features><acpi/></features>\
         <devices><serial type='pty'/><console type='pty'/><memballoon model='none'/></devices></domain>"
    );
    let d = c.define_xml(&xml).await?;
    c.start(&d).await?;
    let result = async {
        let mut st = c.open_console(&d, None, true).await?;
        // Wait for a shell: ask it to echo until it does (at most 2 min).
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut seen = Vec::new();
        let mut asked = Instant::now() - Duration::from_secs(10);
        while !contains(&seen, b"BENCH-2READY") {
            if Instant::now() > deadline {
                return Err(ClientError::Timeout("guest shell on the console".into()));
            }
            if asked.elapsed() > Duration::from_secs(2) {
                st.send(b"echo BENCH-$((1+1))READY\n").await?;
                asked = Instant::now();
            }
            match tokio::time::timeout(Duration::from_millis(500), st.recv()).await {
                Ok(Ok(Some(b))) => seen.extend_from_slice(&b),
                Ok(Ok(None)) => return Err(ClientError::Closed),
                Ok(Err(e)) => return Err(e),
                Err(_) => {}
            }
        }
        let cmd = format!("head -c {bytes} /dev/zero | tr '\\000' x; echo BENCH-$((2+2))END\n");
        let start = Instant::now();
        st.send(cmd.as_bytes()).await?;
        let mut got = 0usize;
        let mut tail: Vec<u8> = Vec::new();
        loop {
            let left =
                deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(300);
            let b = tokio::time::timeout(left, st.recv())
                .await
                .map_err(|_| ClientError::Timeout("console output".into()))??
                .ok_or(ClientError::Closed)?;
            got += b.len();
            tail.extend_from_slice(&b);
            if contains(&tail, b"BENCH-4END") {
                break;
            }
            let keep = tail.len().saturating_sub(16);
            tail.drain(..keep);
        }
        let wall = start.elapsed();
        let _ = st.abort().await;
        let mut r = row("console output (ops/s = MB/s)", vec![wall], None);
        r.count = got;
        r.ops_per_sec = Some(got as f64 / 1e6 / wall.as_secs_f64().max(1e-9));
        Ok(r)
    }
    .await;
    let _ = c.destroy(&d).await;
    c.undefine(&d).await?;
    result
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

pub fn print_table(rows: &[Row]) {
    let w = rows
        .iter()
        .map(|r| r.phase.len())
        .max()
        .unwrap_or(10)
        .max(5);
    println!(
        "{:<w$}  {:>7}  {:>12}  {:>10}  {:>10}  {:>10}",
        "phase", "count", "ops/s", "p50 us", "p99 us", "max us"
    );
    for r in rows {
        let ops = r
            .ops_per_sec
            .map(|o| format!("{o:.0}"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<w$}  {:>7}  {:>12}  {:>10.1}  {:>10.1}  {:>10.1}",
            r.phase, r.count, ops, r.p50_us, r.p99_us, r.max_us
        );
    }
}

pub async fn run(uri: &str, a: &BenchArgs, json: bool) -> Result<(), ClientError> {
    let rows = measure(uri, a).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"uri": uri, "results": rows}))
                .unwrap_or_default()
        );
    } else {
        print_table(&rows);
    }
    Ok(())
}
