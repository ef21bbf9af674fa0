//! Issue 12: runtime statistics, tuning and metadata with real QEMU, virsh,
//! python3-libvirt and the Rust client; the metrics endpoint over plain
//! HTTP; bad typed parameters and pinning refused the way libvirt refuses
//! them, with nothing changed.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use qemud_client::Client;
use qemud_protocol::remote::procs::*;
use qemud_protocol::remote::*;
use qemud_protocol::typed_params::ParamList;
use qemud_protocol::xdr::{Opaque, XdrVec};
use qemud_tests::*;

/// Keys libvirt 9.0's QEMU driver returns from virConnectGetAllDomainStats
/// for a running TCG guest with 2 vCPUs, one raw virtio disk, one
/// user-mode NIC and a virtio balloon (taken from Debian's libvirtd with
/// /work/shared/tools/reference-libvirtd.sh and python3-libvirt).
const LIBVIRT_KEYS: &[&str] = &[
    "balloon.current",
    "balloon.last-update",
    "balloon.maximum",
    "balloon.rss",
    "block.0.allocation",
    "block.0.backingIndex",
    "block.0.capacity",
    "block.0.fl.reqs",
    "block.0.fl.times",
    "block.0.name",
    "block.0.path",
    "block.0.physical",
    "block.0.rd.bytes",
    "block.0.rd.reqs",
    "block.0.rd.times",
    "block.0.wr.bytes",
    "block.0.wr.reqs",
    "block.0.wr.times",
    "block.count",
    "cpu.cache.monitor.count",
    "cpu.haltpoll.fail.time",
    "cpu.haltpoll.success.time",
    "cpu.system",
    "cpu.time",
    "cpu.user",
    "dirtyrate.calc_mode",
    "dirtyrate.calc_period",
    "dirtyrate.calc_start_time",
    "dirtyrate.calc_status",
    "net.count",
    "state.reason",
    "state.state",
    "vcpu.0.delay",
    "vcpu.0.state",
    "vcpu.0.time",
    "vcpu.0.wait",
    "vcpu.1.delay",
    "vcpu.1.state",
    "vcpu.1.time",
    "vcpu.1.wait",
    "vcpu.current",
    "vcpu.maximum",
];

const DISK_BYTES: u64 = 64 * 1024 * 1024;

/// A kernel guest with 2 vCPUs, a raw disk, a user-mode NIC and a balloon.
fn stats_guest_xml(dir: &Path, name: &str) -> String {
    let g = guest();
    let disk = dir.join(format!("{name}.img"));
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(DISK_BYTES).unwrap();
    format!(
        "<domain type='{ty}'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet</cmdline>
  </os>
  <features><acpi/></features>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{disk}'/><target dev='vda' bus='virtio'/></disk>
    <interface type='user'><mac address='52:54:00:12:34:56'/><model type='virtio'/></interface>
    <serial type='pty'/>
    <memballoon model='virtio'/>
  </devices>
</domain>
",
        ty = domain_type(),
        kernel = g.kernel.display(),
        initrd = g.initrd.display(),
        disk = disk.display(),
    )
}

/// A firmware-only guest with a balloon.
fn small_xml(name: &str) -> String {
    format!(
        "<domain type='{}'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os>\
         <devices><memballoon model='virtio'/></devices></domain>",
        domain_type()
    )
}

/// `virsh domstats` output as (domain, key, value) triples.
fn domstats(uri: &str, args: &[&str]) -> Vec<(String, String, String)> {
    let mut a = vec!["domstats"];
    a.extend_from_slice(args);
    let out = virsh(uri, &a);
    let mut dom = String::new();
    let mut rows = Vec::new();
    for line in out.ok().lines() {
        if let Some(n) = line.strip_prefix("Domain: '") {
            dom = n.trim_end_matches('\'').to_owned();
        } else if let Some((k, v)) = line.trim().split_once('=') {
            rows.push((dom.clone(), k.to_owned(), v.to_owned()));
        }
    }
    rows
}

fn stat(rows: &[(String, String, String)], dom: &str, key: &str) -> Option<String> {
    rows.iter()
        .find(|(d, k, _)| d == dom && k == key)
        .map(|(_, _, v)| v.clone())
}

fn stat_u64(rows: &[(String, String, String)], dom: &str, key: &str) -> u64 {
    stat(rows, dom, key)
        .unwrap_or_else(|| panic!("no {key} for {dom} in {rows:?}"))
        .parse()
        .unwrap()
}

/// (utime + stime) of a process or thread in nanoseconds, from /proc.
fn proc_cpu_ns(path: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap();
    let after = text.rsplit_once(')').unwrap().1;
    let f: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap())
        .collect();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as u64;
    (f[0] + f[1]) * 1_000_000_000 / hz
}

/// The thread id of QEMU's vCPU `n` (threads are named "CPU n/TCG" or "CPU n/KVM").
fn vcpu_tid(pid: i32, n: u32) -> i32 {
    let prefix = format!("CPU {n}/");
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid = e.unwrap().file_name().to_string_lossy().into_owned();
        let comm =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
        if comm.starts_with(&prefix) {
            return tid.parse().unwrap();
        }
    }
    panic!("no vCPU {n} thread in QEMU {pid}");
}

fn cpus_allowed(pid: i32, tid: i32) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_owned()
}

fn http_get(port: u16, accept: Option<&str>) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\n{accept}\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Checks the exposition's syntax: comments, then `name{labels} value`
/// samples with numeric values; returns the samples.
fn parse_exposition(body: &str) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    for line in body.lines() {
        if line.starts_with('#') || line.is_empty() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let kind = rest.split_whitespace().nth(1).unwrap();
                assert!(["gauge", "counter"].contains(&kind), "{line}");
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name in {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels in {line}");
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        samples.push((series.to_owned(), v));
    }
    samples
}

/// Plain HTTP GET of `path` on a local port; the body.
fn get_body(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

/// Debian's Prometheus server scrapes the endpoint (it asks for
/// OpenMetrics, which it parses strictly) and a PromQL query returns the
/// guest's CPU time.
fn prometheus_scrapes(port: u16, dir: &Path) {
    let bin = Path::new("/usr/bin/prometheus");
    if !bin.exists() {
        eprintln!("prometheus is not installed (scripts/install-deps.sh installs it); skipping");
        return;
    }
    let web = free_port();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: qemud\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("prom").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prometheus = KillOnDrop(child);
    let query =
        "/api/v1/query?query=libvirt_domain_info_cpu_time_seconds_total%7Bdomain%3D%22sa%22%7D";
    let mut last = String::new();
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(body) = get_body(web, query) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                let result = &v["data"]["result"];
                if let Some(value) = result[0]["value"][1].as_str() {
                    assert_eq!(result[0]["metric"]["job"], "qemud", "{body}");
                    assert!(value.parse::<f64>().unwrap() > 0.0, "{body}");
                    break;
                }
            }
            last = body;
        }
        let targets = get_body(web, "/api/v1/targets").unwrap_or_default();
        assert!(
            Instant::now() < until,
            "PromQL gave no CPU time: {last}\ntargets: {targets}\nlog: {}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Prometheus parsed the scrape without complaint.
    let targets = get_body(web, "/api/v1/targets").unwrap_or_default();
    assert!(targets.contains("\"health\":\"up\""), "{targets}");
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn stats_tuning_metadata_and_metrics_on_running_guests() {
    let port = free_port();
    let d = daemon_with_settings(&format!("metrics_addr = \"127.0.0.1:{port}\"\n"));
    let uri = d.uri();
    let dir = d.dir.path();
    let a = write_xml(dir, "sa", &stats_guest_xml(dir, "sa"));
    let b = write_xml(dir, "sb", &small_xml("sb"));
    virsh(&uri, &["define", a.to_str().unwrap()]).ok();
    virsh(&uri, &["define", b.to_str().unwrap()]).ok();
    virsh(&uri, &["start", "sa"]).ok();
    virsh(&uri, &["start", "sb"]).ok();
    let pid_a = d.qemu_pid("sa");
    let pid_b = d.qemu_pid("sb");
    // Both vCPU threads exist once QEMU answers query-cpus-fast.
    wait_until(30, "vCPU threads", || {
        stat(&domstats(&uri, &["--vcpu", "sa"]), "sa", "vcpu.1.time").is_some()
    });

    // domstats, all groups, both guests: values agree with QEMU and /proc.
    let rows = domstats(&uri, &[]);
    for dom in ["sa", "sb"] {
        assert_eq!(
            stat(&rows, dom, "state.state").as_deref(),
            Some("1"),
            "{rows:?}"
        );
        assert!(stat_u64(&rows, dom, "cpu.time") > 0);
    }
    assert!(stat_u64(&rows, "sa", "cpu.time") <= proc_cpu_ns(&format!("/proc/{pid_a}/stat")));
    assert_eq!(
        stat_u64(&rows, "sa", "cpu.time"),
        stat_u64(&rows, "sa", "cpu.user") + stat_u64(&rows, "sa", "cpu.system")
    );
    assert_eq!(stat_u64(&rows, "sa", "balloon.maximum"), 262_144);
    assert_eq!(stat_u64(&rows, "sa", "balloon.current"), 262_144);
    assert_eq!(stat_u64(&rows, "sa", "vcpu.current"), 2);
    assert_eq!(stat_u64(&rows, "sa", "net.count"), 1);
    assert_eq!(stat_u64(&rows, "sa", "block.count"), 1);
    assert_eq!(stat(&rows, "sa", "block.0.name").as_deref(), Some("vda"));
    assert_eq!(
        stat(&rows, "sa", "block.0.path"),
        Some(dir.join("sa.img").display().to_string())
    );
    assert_eq!(stat_u64(&rows, "sa", "block.0.capacity"), DISK_BYTES);
    assert_eq!(stat_u64(&rows, "sa", "block.0.physical"), DISK_BYTES);
    let tid1 = vcpu_tid(pid_a, 1);
    assert!(
        stat_u64(&rows, "sa", "vcpu.1.time")
            <= proc_cpu_ns(&format!("/proc/{pid_a}/task/{tid1}/stat"))
    );
    assert_eq!(stat_u64(&rows, "sb", "block.count"), 0);
    let groups = domstats(&uri, &["--state", "--block", "sb"]);
    assert!(
        groups
            .iter()
            .all(|(_, k, _)| k.starts_with("state.") || k.starts_with("block.")),
        "{groups:?}"
    );

    // python3-libvirt sees libvirt's keys.
    let py = python(
        &uri,
        r#"
import libvirt, os
c = libvirt.open(os.environ["QEMUD_URI"])
for dom, st in c.getAllDomainStats():
    print("ALL", dom.name(), " ".join(sorted(st.keys())))
d = c.lookupByName("sa")
for dom, st in c.domainListGetStats([d], libvirt.VIR_DOMAIN_STATS_VCPU | libvirt.VIR_DOMAIN_STATS_STATE):
    print("LIST", dom.name(), " ".join(sorted(st.keys())))
"#,
    );
    let out = py.ok();
    let keys_of = |tag: &str, dom: &str| -> Vec<String> {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{tag} {dom} ")))
            .unwrap_or_else(|| panic!("no {tag} {dom} in {out}"))
            .split(' ')
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(keys_of("ALL", "sa"), LIBVIRT_KEYS, "{out}");
    let expected_list: Vec<&str> = LIBVIRT_KEYS
        .iter()
        .copied()
        .filter(|k| k.starts_with("vcpu.") || k.starts_with("state."))
        .collect();
    assert_eq!(keys_of("LIST", "sa"), expected_list);

    // dommemstat: the balloon and QEMU's resident set.
    let mem = virsh(&uri, &["dommemstat", "sa"]);
    let mem = mem.ok();
    assert!(mem.contains("actual 262144"), "{mem}");
    let rss: u64 = mem
        .lines()
        .find_map(|l| l.strip_prefix("rss "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid_a}/status")).unwrap();
    let vmrss: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    assert!(
        rss > vmrss / 2 && rss < vmrss * 2,
        "rss {rss} vs VmRSS {vmrss}"
    );

    // The balloon's statistics period is set in QEMU.
    virsh(&uri, &["dommemstat", "sa", "--period", "2", "--live"]).ok();

    // domblkstat agrees with domstats.
    let blk = virsh(&uri, &["domblkstat", "sa", "vda"]);
    let blk = squash(blk.ok());
    let rd_req: u64 = blk
        .lines()
        .find_map(|l| l.strip_prefix("vda rd_req "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(rd_req >= stat_u64(&rows, "sa", "block.0.rd.reqs"), "{blk}");
    assert!(virsh(&uri, &["domblkstat", "sa", "vdz"])
        .fails()
        .contains("invalid path: vdz"));
    // A user-mode NIC has no host interface: libvirt's error.
    assert!(virsh(&uri, &["domifstat", "sa", "52:54:00:12:34:56"])
        .fails()
        .contains("Interface name not provided"));

    // vcpuinfo, vcpupin, emulatorpin: the kernel's affinity of QEMU's threads.
    let info = squash(virsh(&uri, &["vcpuinfo", "sa"]).ok());
    assert!(
        info.contains("VCPU: 1") && info.contains("State: running"),
        "{info}"
    );
    virsh(&uri, &["vcpupin", "sa", "1", "0"]).ok();
    assert_eq!(cpus_allowed(pid_a, tid1), "0");
    let pins = squash(virsh(&uri, &["vcpupin", "sa"]).ok());
    assert!(pins.contains("1 0"), "{pins}");
    virsh(&uri, &["emulatorpin", "sa", "0"]).ok();
    assert_eq!(cpus_allowed(pid_a, pid_a), "0");
    assert_eq!(virsh(&uri, &["emulatorpin", "sa"]).ok().trim(), "0");
    // vCPU threads keep their own affinity.
    let tid0 = vcpu_tid(pid_a, 0);
    assert_ne!(cpus_allowed(pid_a, tid0), "", "vCPU 0 affinity");

    // Memory: live balloon target, above-max refused, persistent maximum.
    virsh(&uri, &["setmem", "sa", "200M", "--live"]).ok();
    assert!(virsh(&uri, &["setmem", "sa", "1G", "--live"])
        .fails()
        .contains("cannot set memory higher than max memory"));
    assert!(virsh(&uri, &["setmaxmem", "sa", "300M"])
        .fails()
        .contains("cannot resize the maximum memory on an active domain"));
    virsh(&uri, &["setmaxmem", "sa", "300M", "--config"]).ok();
    let inactive = virsh(&uri, &["dumpxml", "--inactive", "sa"]);
    assert!(
        inactive.ok().contains("<memory unit='KiB'>307200</memory>"),
        "{}",
        inactive.stdout
    );
    let live = squash(virsh(&uri, &["dominfo", "sa"]).ok());
    assert!(live.contains("Max memory: 262144 KiB"), "{live}");

    // schedinfo: the CPU controller's view of QEMU, set through a cgroup of
    // the domain's own where the host lets the daemon create one.
    let sched = virsh(&uri, &["schedinfo", "sa"]);
    if sched.status.success() {
        let s = squash(&sched.stdout);
        assert!(
            s.contains("Scheduler : posix") && s.contains("cpu_shares :"),
            "{s}"
        );
        let set = virsh(&uri, &["schedinfo", "sa", "--set", "cpu_shares=512"]);
        if set.status.success() {
            assert!(
                squash(&set.stdout).contains("cpu_shares : 512"),
                "{}",
                set.stdout
            );
            let cg = std::fs::read_to_string(format!("/proc/{pid_a}/cgroup")).unwrap();
            let uuid = virsh(&uri, &["domuuid", "sa"]).ok().trim().to_owned();
            assert!(cg.contains(&format!("qemud/{uuid}")), "{cg}");
        } else {
            assert!(set.stderr.contains("Unable to"), "{}", set.stderr);
        }
    } else {
        assert!(
            sched
                .stderr
                .contains("cgroup CPU controller is not mounted"),
            "{}",
            sched.stderr
        );
    }

    // memtune: the memory controller of QEMU's cgroup, changed in a cgroup
    // of the domain's own; a hard limit above the swap limit is refused.
    let mt = virsh(&uri, &["memtune", "sa"]);
    if mt.status.success() {
        assert!(squash(&mt.stdout).contains("hard_limit :"), "{}", mt.stdout);
        let set = virsh(
            &uri,
            &[
                "memtune",
                "sa",
                "--hard-limit",
                "1048576",
                "--swap-hard-limit",
                "2097152",
            ],
        );
        if set.status.success() {
            let shown = squash(virsh(&uri, &["memtune", "sa"]).ok());
            assert!(shown.contains("hard_limit : 1048576"), "{shown}");
            let cg = std::fs::read_to_string(format!("/proc/{pid_a}/cgroup")).unwrap();
            let line = cg
                .lines()
                .find(|l| l.contains(":memory:") || l.starts_with("0::"))
                .unwrap();
            let uuid = virsh(&uri, &["domuuid", "sa"]).ok().trim().to_owned();
            assert!(line.contains(&format!("qemud/{uuid}")), "{cg}");
            assert!(virsh(&uri, &["memtune", "sa", "--hard-limit", "4194304"])
                .fails()
                .contains("must be lower than or equal to swap_hard_limit"));
            let shown = squash(virsh(&uri, &["memtune", "sa"]).ok());
            assert!(shown.contains("hard_limit : 1048576"), "{shown}");
        } else {
            assert!(set.stderr.contains("Unable to"), "{}", set.stderr);
        }
    } else {
        assert!(
            mt.stderr
                .contains("cgroup memory controller is not mounted"),
            "{}",
            mt.stderr
        );
    }

    // Title, description and custom metadata, with metadata-change events.
    let mut events = Watcher::spawn(Command::new("virsh").arg("-c").arg(&uri).args([
        "event",
        "sa",
        "--event",
        "metadata-change",
        "--loop",
        "--timeout",
        "60",
    ]));
    std::thread::sleep(Duration::from_millis(500));
    virsh(
        &uri,
        &[
            "desc",
            "sa",
            "--title",
            "--live",
            "--config",
            "--new-desc",
            "Stats guest",
        ],
    )
    .ok();
    assert_eq!(
        virsh(&uri, &["desc", "sa", "--title"]).ok().trim(),
        "Stats guest"
    );
    events.expect("metadata-change", 20);
    virsh(
        &uri,
        &["desc", "sa", "--config", "--new-desc", "two\nlines"],
    )
    .ok();
    assert_eq!(
        virsh(&uri, &["desc", "sa", "--config"]).ok().trim(),
        "two\nlines"
    );
    virsh(
        &uri,
        &[
            "metadata",
            "sa",
            "urn:qemud:test",
            "--key",
            "t",
            "--set",
            "<app><v>1</v></app>",
        ],
    )
    .ok();
    let md = virsh(&uri, &["metadata", "sa", "urn:qemud:test"]);
    assert_eq!(md.ok().trim(), "<app>\n  <v>1</v>\n</app>");
    assert!(virsh(&uri, &["metadata", "sa", "urn:none"])
        .fails()
        .contains("Requested metadata element is not present"));
    drop(events);

    // Bad input through the Rust client: libvirt's errors, nothing changed.
    let before_pins = virsh(&uri, &["vcpupin", "sa"]).ok().to_owned();
    let before_sched = virsh(&uri, &["schedinfo", "sa"]).stdout;
    block_on(async {
        let c = Client::connect(&uri).await.unwrap();
        let dom = c.lookup_by_name("sa").await.unwrap();
        let set = |params: ParamList| DomainSetSchedulerParametersFlagsArgs {
            dom: dom.clone(),
            params: XdrVec(params.0),
            flags: 0,
        };
        let mut p = ParamList::new();
        p.ullong("bogus", 1);
        let e = c
            .call_void(DOMAIN_SET_SCHEDULER_PARAMETERS_FLAGS, &set(p))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(74), "{e}");
        assert!(
            e.to_string().contains("parameter 'bogus' not supported"),
            "{e}"
        );
        let mut p = ParamList::new();
        p.int("cpu_shares", 1);
        let e = c
            .call_void(DOMAIN_SET_SCHEDULER_PARAMETERS_FLAGS, &set(p))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(8), "{e}");
        assert!(
            e.to_string()
                .contains("invalid type 'int' for parameter 'cpu_shares', expected 'ullong'"),
            "{e}"
        );
        let mut p = ParamList::new();
        p.ullong("cpu_shares", 100).ullong("cpu_shares", 200);
        let e = c
            .call_void(DOMAIN_SET_SCHEDULER_PARAMETERS_FLAGS, &set(p))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("occurs multiple times"), "{e}");
        let mut p = ParamList::new();
        p.ullong("x".repeat(100), 1);
        assert!(c
            .call_void(DOMAIN_SET_SCHEDULER_PARAMETERS_FLAGS, &set(p))
            .await
            .is_err());

        // Pinning to a CPU the host does not have, or to none.
        let mut map = vec![0u8; 16];
        map[15] = 0x80;
        let pin = |cpumap: Vec<u8>| DomainPinVcpuFlagsArgs {
            dom: dom.clone(),
            vcpu: 0,
            cpumap: Opaque(cpumap),
            flags: 1,
        };
        let e = c
            .call_void(DOMAIN_PIN_VCPU_FLAGS, &pin(map))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("cannot set CPU affinity"), "{e}");
        let e = c
            .call_void(DOMAIN_PIN_VCPU_FLAGS, &pin(vec![0, 0]))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("Empty cpu list for pinning"), "{e}");
        let bad_vcpu = DomainPinVcpuFlagsArgs {
            dom: dom.clone(),
            vcpu: 7,
            cpumap: Opaque(vec![1]),
            flags: 1,
        };
        let e = c
            .call_void(DOMAIN_PIN_VCPU_FLAGS, &bad_vcpu)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("vcpu 7 is out of range"), "{e}");
    });
    // XML nested far deeper than libvirt's parser allows is refused
    // without harming the daemon.
    let deep = format!(
        "<domain type='qemu'><name>deep</name><metadata>{}{}</metadata></domain>",
        "<a>".repeat(200_000),
        "</a>".repeat(200_000)
    );
    let deep = write_xml(dir, "deep", &deep);
    assert!(virsh(&uri, &["define", deep.to_str().unwrap()])
        .fails()
        .contains("Excessive depth in document"));
    let nested = format!("{}{}", "<a>".repeat(300), "</a>".repeat(300));
    assert!(virsh(
        &uri,
        &["metadata", "sa", "urn:x", "--key", "x", "--set", &nested]
    )
    .fails()
    .contains("Excessive depth in document"));
    assert_eq!(virsh(&uri, &["vcpupin", "sa"]).ok(), before_pins);
    assert_eq!(virsh(&uri, &["schedinfo", "sa"]).stdout, before_sched);

    // Metrics: plain Prometheus text and OpenMetrics, parsed.
    let resp = http_get(port, None);
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let samples = parse_exposition(body);
    let cpu = samples
        .iter()
        .find(|(s, _)| s.starts_with("libvirt_domain_info_cpu_time_seconds_total{domain=\"sa\""))
        .unwrap_or_else(|| panic!("no CPU time of sa in {body}"));
    assert!(cpu.1 > 0.0);
    for name in [
        "libvirt_up ",
        "qemud_host_cpu_seconds_total{mode=\"idle\"}",
        "qemud_host_memory_available_bytes ",
        "libvirt_domain_info_memory_usage_bytes{domain=\"sb\"",
        "libvirt_domain_info_virtual_cpus{domain=\"sa\"",
        "libvirt_domain_vcpu_time_seconds_total{domain=\"sa\"",
        "libvirt_domain_block_stats_read_bytes_total{domain=\"sa\"",
        "libvirt_domain_block_stats_capacity_bytes{domain=\"sa\"",
    ] {
        assert!(body.contains(name), "no {name} in {body}");
    }
    let om = http_get(port, Some("application/openmetrics-text; version=1.0.0"));
    let (head, body) = om.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("# TYPE libvirt_domain_info_cpu_time_seconds counter"));
    parse_exposition(body);

    prometheus_scrapes(port, dir);

    // A stopped QEMU costs its own record the stats deadline, no more.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid_b),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let t = Instant::now();
    let rows = domstats(&uri, &[]);
    let took = t.elapsed();
    let metrics = http_get(port, None);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid_b),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    assert!(took < Duration::from_secs(6), "domstats took {took:?}");
    assert!(stat(&rows, "sa", "block.0.rd.reqs").is_some(), "{rows:?}");
    assert_eq!(stat(&rows, "sb", "state.state").as_deref(), Some("1"));
    // What the kernel knows needs no monitor.
    assert!(stat_u64(&rows, "sb", "cpu.time") > 0);
    assert!(stat(&rows, "sb", "vcpu.0.time").is_some(), "{rows:?}");
    assert!(metrics.contains("libvirt_domain_info_cpu_time_seconds_total{domain=\"sb\""));

    // Rename: refused while running, done once shut off.
    assert!(virsh(&uri, &["domrename", "sb", "sb2"])
        .fails()
        .contains("cannot rename active domain"));
    virsh(&uri, &["destroy", "sb"]).ok();
    virsh(&uri, &["domrename", "sb", "sb2"]).ok();
    let list = squash(virsh(&uri, &["list", "--all"]).ok());
    assert!(
        list.contains("sb2 shut off") && !list.contains("sb "),
        "{list}"
    );
    assert!(virsh(&uri, &["dominfo", "sb"])
        .fails()
        .contains("failed to get domain 'sb'"));
    assert!(virsh(&uri, &["domrename", "sb2", "sa"])
        .fails()
        .contains("domain with name 'sa' already exists"));

    // Tuning stored in the persistent definition applies at the next start.
    virsh(&uri, &["vcpupin", "sb2", "0", "0", "--config"]).ok();
    virsh(&uri, &["emulatorpin", "sb2", "0", "--config"]).ok();
    let cgroups = sched.status.success();
    if cgroups {
        virsh(
            &uri,
            &["schedinfo", "sb2", "--config", "--set", "cpu_shares=300"],
        )
        .ok();
    }
    if mt.status.success() {
        virsh(
            &uri,
            &["memtune", "sb2", "--config", "--hard-limit", "2000000"],
        )
        .ok();
        assert!(squash(virsh(&uri, &["memtune", "sb2", "--config"]).ok())
            .contains("hard_limit : 2000000"));
    }
    let inactive = virsh(&uri, &["dumpxml", "--inactive", "sb2"]);
    let inactive = inactive.ok();
    assert!(
        inactive.contains("<vcpupin vcpu='0' cpuset='0'/>"),
        "{inactive}"
    );
    assert!(inactive.contains("<emulatorpin cpuset='0'/>"), "{inactive}");
    assert!(squash(virsh(&uri, &["vcpupin", "sb2", "--config"]).ok()).contains("0 0"));
    virsh(&uri, &["start", "sb2"]).ok();
    let pid = d.qemu_pid("sb2");
    let tid = vcpu_tid(pid, 0);
    wait_until(10, "pinning applied at start", || {
        cpus_allowed(pid, tid) == "0" && cpus_allowed(pid, pid) == "0"
    });
    if cgroups {
        wait_until(10, "cpu shares applied at start", || {
            squash(&virsh(&uri, &["schedinfo", "sb2"]).stdout).contains("cpu_shares : 300")
        });
    }
    if mt.status.success() {
        wait_until(10, "memory limit applied at start", || {
            squash(&virsh(&uri, &["memtune", "sb2"]).stdout).contains("hard_limit : 2000000")
        });
    }
    virsh(&uri, &["destroy", "sb2"]).ok();

    // qemuctl speaks the same procedures.
    let q = qemuctl(&uri, &["--json", "domstats", "sa", "--balloon"]);
    let v: serde_json::Value = serde_json::from_str(q.ok()).unwrap();
    assert_eq!(v[0]["stats"]["balloon.maximum"], 262_144);
    let q = qemuctl(&uri, &["--json", "vcpuinfo", "sa"]);
    let v: serde_json::Value = serde_json::from_str(q.ok()).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    virsh(&uri, &["destroy", "sa"]).ok();
}

#[test]
fn setvcpus_live_hotplugs_a_cpu_the_guest_sees() {
    let d = Daemon::start();
    let uri = d.uri();
    let dir = d.dir.path();
    let g = guest();
    let log = dir.join("hp-serial.log");
    let xml = format!(
        "<domain type='{ty}'><name>hp</name><memory unit='MiB'>256</memory>\
         <vcpu current='1'>2</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{k}</kernel><initrd>{i}</initrd>\
         <cmdline>console=ttyS0 panic=-1</cmdline></os><features><acpi/></features>\
         <devices><serial type='pty'><log file='{log}' append='off'/></serial>\
         <memballoon model='none'/></devices></domain>",
        ty = domain_type(),
        k = g.kernel.display(),
        i = g.initrd.display(),
        log = log.display(),
    );
    let x = write_xml(dir, "hp", &xml);
    virsh(&uri, &["define", x.to_str().unwrap()]).ok();
    virsh(&uri, &["start", "hp"]).ok();
    let pid = d.qemu_pid("hp");
    let serial = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(120, "guest ready", || {
        serial().contains("QEMUD-GUEST-READY")
    });

    assert!(virsh(&uri, &["setvcpus", "hp", "3", "--live"])
        .fails()
        .contains(
            "requested vcpus is greater than max allowable vcpus for the live domain: 3 > 2"
        ));
    virsh(&uri, &["setvcpus", "hp", "2", "--live"]).ok();
    let count = squash(virsh(&uri, &["vcpucount", "hp"]).ok());
    assert!(count.contains("current live 2"), "{count}");
    // QEMU has the thread and the guest kernel took the CPU.
    vcpu_tid(pid, 1);
    wait_until(30, "guest sees the CPU", || {
        serial().contains("CPU1 has been hot-added")
    });
    let info = virsh(&uri, &["vcpuinfo", "hp"]);
    assert_eq!(info.ok().matches("VCPU:").count(), 2);
    // The persistent definition is untouched by a live change.
    let inactive = virsh(&uri, &["dumpxml", "--inactive", "hp"]);
    assert!(inactive.ok().contains("current='1'"), "{}", inactive.stdout);
    virsh(&uri, &["setvcpus", "hp", "2", "--config"]).ok();
    let inactive = virsh(&uri, &["dumpxml", "--inactive", "hp"]);
    assert!(
        !inactive.ok().contains("current='1'"),
        "{}",
        inactive.stdout
    );
    virsh(&uri, &["destroy", "hp"]).ok();
}
