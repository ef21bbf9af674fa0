//! Issue 9: what Debian's own clients ask on connect — virt-install with no
//! --machine, domain capabilities, CPU models, node statistics, a
//! virt-manager-style python session, clients without an event loop that
//! sit idle, a stuck VM, and libvirt's refusals at define.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use qemud_tests::*;

/// A client process started in the background; the test collects it at the
/// end with a deadline.
struct Background {
    what: &'static str,
    child: Option<Child>,
}

impl Drop for Background {
    /// A test that fails early leaves no client behind.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Background {
    fn spawn(what: &'static str, cmd: &mut Command) -> Background {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        Background {
            what,
            child: Some(child),
        }
    }

    /// Waits at most `secs` for the process and returns its stdout; fails
    /// the test if it failed.
    #[track_caller]
    fn finish(mut self, secs: u64) -> String {
        let mut child = self.child.take().expect("collected once");
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not finish in {secs}s", self.what);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let out = child.wait_with_output().expect("collect output");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{} failed: {}\nstdout: {stdout}",
            self.what,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

/// python3-libvirt without an event loop: no keepalive is negotiated, so
/// nothing may drop it for being silent.
const IDLE_PYTHON: &str = r#"
import os, sys, time, libvirt
c = libvirt.open(os.environ["QEMUD_URI"])
c.getInfo()
time.sleep(90)
print(c.getInfo()[0], len(c.listAllDomains()), c.getHostname() != "")
print("IDLE-OK")
"#;

/// Perl Sys::Virt, idle for 30 s between calls.
const IDLE_PERL: &str = r#"
use strict; use Sys::Virt;
my $c = Sys::Virt->new(uri => $ENV{QEMUD_URI});
my @i = $c->get_node_info();
sleep 30;
my @d = $c->list_all_domains();
print "cpus=", ($c->get_node_info())[2], " domains=", scalar(@d), "\n";
print "PERL-OK\n";
"#;

/// What virt-manager asks when it connects, with an event loop.
const VIRT_MANAGER_STYLE: &str = r#"
import os, threading, libvirt
libvirt.virEventRegisterDefaultImpl()
def loop():
    while True:
        libvirt.virEventRunDefaultImpl()
threading.Thread(target=loop, daemon=True).start()
c = libvirt.open(os.environ["QEMUD_URI"])
c.setKeepAlive(5, 3)
caps = c.getCapabilities()
assert "<capabilities>" in caps
dc = c.getDomainCapabilities()
assert "<domainCapabilities>" in dc and "<machine>pc-" in dc, dc[:300]
models = c.getCPUModelNames("x86_64")
assert "qemu64" in models, models
info = c.getInfo()
assert info[0] == "x86_64" and info[2] > 0
cpu = c.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS)
assert set(cpu) == {"kernel", "user", "idle", "iowait"}, cpu
mem = c.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS)
assert mem["total"] > 0 and "free" in mem, mem
assert c.getCellsFreeMemory(0, 1)[0] > 0
assert c.getFreePages([4], 0, 1)[0][4] > 0
ncpus, cpumap, online = c.getCPUMap()
assert ncpus >= 1 and online >= 1 and cpumap[0]
params = c.getMemoryParameters()
assert "shm_pages_to_scan" in params, params
assert c.getMaxVcpus("qemu") == 16
doms = c.listAllDomains()
cb = c.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lambda *a: None, None)
try:
    c.getSysinfo()
except libvirt.libvirtError as e:
    assert e.get_error_code() == libvirt.VIR_ERR_CONFIG_UNSUPPORTED, e
base = c.baselineHypervisorCPU(None, None, None, None, ["<cpu><model>qemu64</model></cpu>"])
assert "<model" in base, base
r = c.compareHypervisorCPU(None, None, None, "qemu", "<cpu><model>qemu64</model></cpu>")
assert r in (libvirt.VIR_CPU_COMPARE_IDENTICAL, libvirt.VIR_CPU_COMPARE_SUPERSET), r
c.domainEventDeregisterAny(cb)
print("DOMAINS", len(doms))
print("VM-OK")
"#;

/// A call on a VM whose QEMU is stopped fails on its own deadline with
/// libvirt's timeout error; the same connection then answers other calls.
const STUCK_VM: &str = r#"
import os, time, libvirt
c = libvirt.open(os.environ["QEMUD_URI"])
d = c.lookupByName(os.environ["VM"])
t = time.time()
try:
    d.suspend()
    raise SystemExit("suspend of a stopped QEMU succeeded")
except libvirt.libvirtError as e:
    print("CODE", e.get_error_code(), e.get_error_message())
    assert e.get_error_code() == libvirt.VIR_ERR_OPERATION_TIMEOUT, e
print("ELAPSED", round(time.time() - t))
assert c.getInfo()[0] == "x86_64"
assert d.name() == os.environ["VM"]
assert len(c.listAllDomains()) >= 1
print("STUCK-OK")
"#;

#[test]
fn debian_clients_against_qemud() {
    let d = daemon_with_settings("qmp_timeout_ms = 3000\n");
    let uri = d.uri();
    let dir = d.dir.path();

    // The slow idle clients run while everything else happens.
    let idle_python = Background::spawn(
        "idle python3-libvirt client",
        Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(IDLE_PYTHON)
            .env("QEMUD_URI", &uri),
    );
    let idle_perl = Background::spawn(
        "idle Perl Sys::Virt client",
        Command::new("perl")
            .arg("-e")
            .arg(IDLE_PERL)
            .env("QEMUD_URI", &uri),
    );

    // Capabilities: the default machine type and its alias first.
    let caps = virsh(&uri, &["capabilities"]).ok().to_owned();
    let first_machine = caps
        .lines()
        .find(|l| l.contains("<machine"))
        .expect("a machine type");
    assert!(
        first_machine.contains(">pc-i440fx-"),
        "first machine: {first_machine}"
    );
    assert!(caps.contains("canonical='pc-i440fx-"), "no pc alias");
    assert!(caps.contains("canonical='pc-q35-"), "no q35 alias");
    assert!(!first_machine.contains("microvm"));

    // Domain capabilities from QEMU itself.
    let dc = virsh(&uri, &["domcapabilities", "--virttype", "qemu"])
        .ok()
        .to_owned();
    assert!(dc.contains("<domain>qemu</domain>"), "{dc}");
    assert!(dc.contains("<machine>pc-i440fx-"), "{dc}");
    assert!(dc.contains("<vcpu max='255'/>"), "{dc}");
    assert!(dc.contains("<mode name='host-passthrough' supported='no'/>"));
    assert!(dc.contains("<mode name='host-model' supported='yes'>"));
    assert!(
        dc.contains("usable='yes' vendor='unknown'>qemu64</model>"),
        "{dc}"
    );
    assert!(dc.contains("<value>virtio</value>"));
    assert!(dc.contains("<value>vnc</value>"));
    let q35 = virsh(
        &uri,
        &["domcapabilities", "--virttype", "qemu", "--machine", "q35"],
    )
    .ok()
    .to_owned();
    assert!(q35.contains("<machine>pc-q35-"), "{q35}");
    assert!(q35.contains("<vcpu max='288'/>"), "{q35}");
    assert!(!q35.contains("<value>ide</value>"), "q35 has no IDE");
    let err = virsh(&uri, &["domcapabilities", "--machine", "nonsense"])
        .fails()
        .to_owned();
    assert!(
        err.contains("the machine 'nonsense' is not supported by emulator"),
        "{err}"
    );

    // CPU models and node statistics, as virsh prints them.
    let models = virsh(&uri, &["cpu-models", "x86_64"]).ok().to_owned();
    assert!(models.lines().any(|l| l == "qemu64"), "{models}");
    assert!(models.lines().any(|l| l == "Haswell"), "{models}");
    let err = virsh(&uri, &["cpu-models", "z80"]).fails().to_owned();
    assert!(err.contains("cannot find architecture z80"), "{err}");
    let cpu = virsh(&uri, &["nodecpustats"]).ok().to_owned();
    for field in ["user:", "system:", "idle:", "iowait:"] {
        assert!(cpu.contains(field), "{cpu}");
    }
    let idle: u64 = cpu
        .lines()
        .find(|l| l.starts_with("idle:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("idle time");
    assert!(idle > 0);
    let err = virsh(&uri, &["nodecpustats", "100000"]).fails().to_owned();
    assert!(err.contains("Invalid cpuNum"), "{err}");
    let mem = virsh(&uri, &["nodememstats"]).ok().to_owned();
    let total_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        squash(&mem).contains(&format!("total : {total_kib} KiB")),
        "{mem}"
    );
    for field in ["free", "buffers", "cached"] {
        assert!(mem.contains(field), "{mem}");
    }
    let cpumap = virsh(&uri, &["nodecpumap"]).ok().to_owned();
    assert!(cpumap.contains("CPUs online:"), "{cpumap}");
    virsh(&uri, &["node-memory-tune"]).ok();

    // qemuctl gives the same answers as JSON.
    let j: serde_json::Value =
        serde_json::from_str(qemuctl(&uri, &["--json", "nodememstats"]).ok()).expect("json");
    assert_eq!(j["total_kib"].as_u64(), Some(total_kib));
    let j: serde_json::Value =
        serde_json::from_str(qemuctl(&uri, &["--json", "nodecpustats"]).ok()).expect("json");
    assert!(j["idle"].as_u64().unwrap_or(0) > 0, "{j}");
    let j: serde_json::Value =
        serde_json::from_str(qemuctl(&uri, &["--json", "cpu-models", "x86_64"]).ok())
            .expect("json");
    assert!(j["models"].as_array().is_some_and(|m| !m.is_empty()));
    let j: serde_json::Value = serde_json::from_str(
        qemuctl(&uri, &["--json", "domcapabilities", "--virttype", "qemu"]).ok(),
    )
    .expect("json");
    assert!(j["xml"]
        .as_str()
        .unwrap_or("")
        .contains("<domainCapabilities>"));

    // libvirt's refusals at define; nothing is stored.
    let bad = write_xml(
        dir,
        "badmachine",
        &tiny_xml("badmachine").replace("machine='pc'", "machine='pc-nonexistent-9.9'"),
    );
    let err = virsh(&uri, &["define", bad.to_str().unwrap()])
        .fails()
        .to_owned();
    assert!(
        err.contains("unsupported configuration: Emulator")
            && err.contains("does not support machine type 'pc-nonexistent-9.9'"),
        "{err}"
    );
    let badarch = write_xml(
        dir,
        "badarch",
        &tiny_xml("badarch").replace("arch='x86_64'", "arch='aarch64'"),
    );
    let err = virsh(&uri, &["define", badarch.to_str().unwrap()])
        .fails()
        .to_owned();
    assert!(
        err.contains("No emulator found for arch 'aarch64'"),
        "{err}"
    );
    let badtype = write_xml(
        dir,
        "badtype",
        &tiny_xml("badtype").replacen(&format!("type='{}'", domain_type()), "type='xen'", 1),
    );
    let err = virsh(&uri, &["define", badtype.to_str().unwrap()])
        .fails()
        .to_owned();
    assert!(err.contains("does not support virt type 'xen'"), "{err}");
    let listed = virsh(&uri, &["list", "--all", "--name"]).ok().to_owned();
    for name in ["badmachine", "badarch", "badtype"] {
        assert!(!listed.contains(name), "{name} was stored: {listed}");
    }
    for f in walk(&d.state_dir()) {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        assert!(!text.contains("pc-nonexistent"), "stored in {f:?}");
    }

    // virt-install with no --machine: the default machine type, and the
    // guest boots.
    let g = guest();
    let serial = serial_log(dir, "vinst");
    let out = Command::new("timeout")
        .arg("180")
        .arg("virt-install")
        .args([
            "--connect",
            &uri,
            "--name",
            "vinst",
            "--virt-type",
            domain_type(),
        ])
        .args(["--memory", "256", "--vcpus", "1", "--import"])
        .args(["--osinfo", "detect=on,require=off", "--disk", "none"])
        .arg("--boot")
        .arg(format!(
            "kernel={},initrd={},kernel_args=console=ttyS0 panic=-1 quiet",
            g.kernel.display(),
            g.initrd.display()
        ))
        .args(["--network", "none", "--graphics", "vnc,listen=127.0.0.1"])
        .arg("--serial")
        .arg(format!("pty,log.file={}", serial.display()))
        .arg("--noautoconsole")
        .env("HOME", dir)
        .output()
        .expect("run virt-install");
    assert!(
        out.status.success(),
        "virt-install failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    wait_guest_ready(dir, "vinst", 120);
    let xml = virsh(&uri, &["dumpxml", "vinst"]).ok().to_owned();
    assert!(xml.contains("machine='pc-i440fx-"), "{xml}");
    // Autoport VNC shows the port QEMU took, so domdisplay is usable.
    wait_until(10, "VNC port in the live XML", || {
        !virsh(&uri, &["dumpxml", "vinst"])
            .ok()
            .contains("port='-1'")
    });
    let display = virsh(&uri, &["domdisplay", "vinst"]).ok().trim().to_owned();
    assert!(
        display.starts_with("vnc://127.0.0.1:") && !display.contains('-'),
        "{display}"
    );

    // Two VMs write one <shareable/> image at once: QEMU gets share-rw.
    let image = dir.join("shared.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).expect("shared image");
    for name in ["share1", "share2"] {
        let disk = format!(
            "<devices><disk type='file' device='disk'><driver name='qemu' type='raw'/>\
             <source file='{}'/><target dev='vda' bus='virtio'/><shareable/></disk>",
            image.display()
        );
        let x = write_xml(dir, name, &tiny_xml(name).replace("<devices>", &disk));
        virsh(&uri, &["define", x.to_str().unwrap()]).ok();
        virsh(&uri, &["start", name]).ok();
    }
    assert!(virsh(&uri, &["dumpxml", "share2"])
        .ok()
        .contains("<shareable/>"));
    for name in ["share1", "share2"] {
        virsh(&uri, &["destroy", name]).ok();
    }

    // The virt-manager-style session.
    let r = python(&uri, VIRT_MANAGER_STYLE);
    assert!(r.ok().contains("VM-OK"), "{}", r.stdout);

    // virsh negotiates keepalive with qemud.
    let out = Command::new("virsh")
        .args(["-c", &uri, "list"])
        .env("LIBVIRT_DEBUG", "1")
        .env("LIBVIRT_LOG_OUTPUTS", "1:stderr")
        .output()
        .expect("virsh with debug");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success());
    assert!(log.contains("RPC_KEEPALIVE_START"), "keepalive not started");

    // A stuck QEMU fails its own call with a timeout; the connection lives.
    let pid = Pid::from_raw(d.qemu_pid("vinst"));
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP QEMU");
    let r = Command::new("timeout")
        .arg("60")
        .arg("/usr/bin/python3")
        .arg("-c")
        .arg(STUCK_VM)
        .env("QEMUD_URI", &uri)
        .env("VM", "vinst")
        .output()
        .expect("run python");
    let _ = kill(pid, Signal::SIGCONT);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success() && stdout.contains("STUCK-OK"),
        "{}\n{stdout}",
        String::from_utf8_lossy(&r.stderr)
    );
    // The VM answers again once QEMU runs.
    virsh(&uri, &["suspend", "vinst"]).ok();
    virsh(&uri, &["resume", "vinst"]).ok();
    virsh(&uri, &["destroy", "vinst"]).ok();

    assert!(idle_perl.finish(60).contains("PERL-OK"));
    assert!(idle_python.finish(120).contains("IDLE-OK"));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
