//! Issue 10 (hardening), each case of the issue reproduced: memory bounded
//! per client in bytes and given back, one daemon per state directory,
//! prompt restart after SIGKILL, no leftover temp files, private file
//! modes and plain logs, prompt destroy whatever QEMU's state — and a soak
//! run showing no fd, QEMU or memory leak. Also issue 19, item 5: a
//! SIGSTOPped QEMU is destroyed in under a second.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use qemud_client::Client;
use qemud_tests::*;

/// Resident memory of a process, in KiB.
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Whether `pid` is a live (not zombie) process whose command line names
/// `uuid`: the QEMU of that domain.
fn qemu_alive(pid: i32, uuid: &str) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat
        .rsplit_once(')')
        .map(|(_, r)| r.trim_start().starts_with('Z'))
        .unwrap_or(true);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    !zombie && String::from_utf8_lossy(&cmdline).contains(uuid)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A daemon with settings, and its pid.
fn daemon_with_pid(toml: &str) -> (Daemon, i32) {
    let d = daemon_with_settings(toml);
    let pid = daemon_pid(&d);
    (d, pid)
}

/// The daemon's pid: the process listening on its socket.
fn daemon_pid(d: &Daemon) -> i32 {
    let table = std::fs::read_to_string("/proc/net/unix").expect("/proc/net/unix");
    let path = d.socket().to_string_lossy().into_owned();
    let inode = table
        .lines()
        .skip(1)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 8 && f[7] == path && f[3] == "00010000").then(|| f[6].to_owned())
        })
        .expect("listening socket");
    let link = format!("socket:[{inode}]");
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == link) {
                return pid;
            }
        }
    }
    panic!("no process holds {path}");
}

/// Waits (polling tightly) for a starting QEMU's pid file and stops that
/// QEMU at once with SIGSTOP, which holds its start open: it has not
/// answered its monitor yet.
fn stop_qemu_at_its_pid_file(pidfile: &Path) -> i32 {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let pid: i32 = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        if pid > 0 {
            kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
            return pid;
        }
        assert!(Instant::now() < until, "no pid file {}", pidfile.display());
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

const MIB: u64 = 1024;

/// Case 1: clients on the read-only socket (any local user may connect)
/// pipeline getCapabilities and never read. Before: 1.04 GiB, kept after
/// they left. Now the daemon stops reading them at their byte budget, stays
/// under 200 MiB, serves everyone else, and gives the memory back.
#[test]
fn lazy_readers_keep_daemon_memory_bounded_and_it_falls_back() {
    let (d, pid) = daemon_with_pid("");
    let base = rss_kib(pid);
    let mut frames = call_frame(REMOTE_PROGRAM, 1, 1, &[0; 8]);
    for serial in 2..5002 {
        // REMOTE_PROC_CONNECT_GET_CAPABILITIES
        frames.extend(call_frame(REMOTE_PROGRAM, 7, serial, &[]));
    }
    let clients: Vec<UnixStream> = (0..40)
        .map(|_| {
            let s = UnixStream::connect(d.socket_ro()).expect("connect ro");
            s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
            s
        })
        .collect();
    let writers: Vec<_> = clients
        .iter()
        .map(|s| {
            let mut s = s.try_clone().unwrap();
            let frames = frames.clone();
            std::thread::spawn(move || {
                // Stops at the write timeout once the daemon stops reading.
                let _ = s.write_all(&frames);
            })
        })
        .collect();
    let mut peak = 0;
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    // Everyone else is served meanwhile, promptly.
    let t = Instant::now();
    virsh(&d.uri(), &["list", "--all"]).ok();
    virsh(&d.uri_ro(), &["capabilities"]).ok();
    let others = t.elapsed();
    peak = peak.max(rss_kib(pid));
    for w in writers {
        w.join().unwrap();
    }
    drop(clients);
    eprintln!("lazy readers: rss before {base} KiB, peak {peak} KiB, others served in {others:?}");
    assert!(
        peak < 200 * MIB,
        "40 lazy clients drove the daemon to {peak} KiB"
    );
    assert!(others < Duration::from_secs(5), "others waited {others:?}");
    let mut after = 0;
    wait_until(15, "RSS to fall back after the lazy clients left", || {
        after = rss_kib(pid);
        after < base + 24 * MIB
    });
    eprintln!("lazy readers: rss after they left {after} KiB");

    // A reply larger than the whole budget still goes out, alone...
    let small = daemon_with_settings(
        "max_client_queue_bytes = 1024\nmax_total_queue_bytes = 2048\nclient_stall_timeout_ms = 1000\n",
    );
    let caps = virsh(&small.uri(), &["capabilities"]);
    assert!(caps.ok().len() > 2048 && caps.stdout.contains("</capabilities>"));
    // ...and a client that stays over its budget without reading is
    // dropped: its socket reaches end-of-file (not a read timeout).
    let mut lazy = UnixStream::connect(small.socket_ro()).unwrap();
    lazy.set_write_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let _ = lazy.write_all(&frames);
    wait_until(15, "the stalled client to be dropped", || {
        small.log().contains("is not reading its messages")
    });
    lazy.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    // Closed with calls still unread, the socket may also be reset.
    match std::io::Read::read_to_end(&mut lazy, &mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the stalled client's socket is still open: {e}"),
    }
    virsh(&small.uri(), &["list"]).ok();
}

/// Case 2: a second daemon on the same directories. Before: it ran
/// recovery first and SIGKILLed the QEMU the first daemon was starting.
/// Now it exits at once, non-zero, touching nothing. The first daemon's
/// start is held open (QEMU stopped right after it wrote its pid file) so
/// the second daemon surely runs while the start is in progress.
#[test]
fn second_daemon_on_the_same_dirs_exits_at_once_and_touches_nothing() {
    let d = Daemon::start();
    let uri = d.uri();
    let x = write_xml(d.dir.path(), "first", &tiny_xml("first"));
    virsh(&uri, &["define", x.to_str().unwrap()]).ok();
    let uuid = virsh(&uri, &["domuuid", "first"]).ok().trim().to_owned();
    let pidfile = d.run_dir().join("pid").join(format!("{uuid}.pid"));
    let starter = {
        let uri = uri.clone();
        std::thread::spawn(move || virsh(&uri, &["start", "first"]))
    };
    let qemu = stop_qemu_at_its_pid_file(&pidfile);

    let t = Instant::now();
    let second = Command::new("timeout")
        .arg("20")
        .arg(binary("qemud"))
        .arg("--run-dir")
        .arg(d.run_dir())
        .arg("--state-dir")
        .arg(d.state_dir())
        .env("RUST_LOG", "info")
        .output()
        .expect("run second qemud");
    let took = t.elapsed();
    kill(Pid::from_raw(qemu), Signal::SIGCONT).unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success(),
        "second daemon succeeded: {stderr}"
    );
    assert!(took < Duration::from_secs(1), "second daemon took {took:?}");
    assert!(
        stderr.contains("another qemud is already running"),
        "{stderr}"
    );
    assert!(!stderr.contains("stopping QEMU"), "{stderr}");

    let started = starter.join().unwrap();
    started.ok();
    assert!(
        qemu_alive(qemu, &uuid),
        "the first daemon's QEMU was killed"
    );
    assert_eq!(virsh(&uri, &["domstate", "first"]).ok().trim(), "running");
    assert!(d.socket().exists() && d.socket_ro().exists());
    virsh(&uri, &["destroy", "first"]).ok();
}

/// Case 3: SIGKILL while 10 VMs are being destroyed (and two QEMUs no
/// longer answer). Before: restart stalled 10–20 s, one monitor timeout
/// after another, calls on other domains blocked, and domains were listed
/// shut off while their QEMU ran. Now: a call on another domain answers
/// within 1 s of the socket being back, a domain being re-attached refuses
/// operations at once, and no domain is ever listed off while its QEMU lives.
#[test]
fn restart_after_sigkill_during_destroys_is_prompt_and_truthful() {
    let mut d = daemon_with_settings("qmp_timeout_ms = 3000\n");
    let uri = d.uri();
    let names: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    for name in names.iter().map(String::as_str).chain(["other"]) {
        let x = write_xml(d.dir.path(), name, &tiny_xml(name));
        virsh(&uri, &["define", x.to_str().unwrap()]).ok();
    }
    let mut vms = Vec::new();
    for name in &names {
        virsh(&uri, &["start", name]).ok();
        let uuid = virsh(&uri, &["domuuid", name]).ok().trim().to_owned();
        vms.push((name.clone(), uuid, d.qemu_pid(name)));
    }
    // Destroys in flight on eight of them: SIGKILL the daemon as soon as
    // the first of those QEMUs is gone, the others being under way.
    let destroys: Vec<_> = vms[..8]
        .iter()
        .map(|(name, _, _)| {
            let (uri, name) = (uri.clone(), name.clone());
            std::thread::spawn(move || virsh(&uri, &["destroy", &name]))
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(20);
    while vms[..8].iter().all(|(_, uuid, pid)| qemu_alive(*pid, uuid)) {
        assert!(Instant::now() < until, "no destroy happened");
        std::thread::sleep(Duration::from_millis(1));
    }
    d.kill9();
    for t in destroys {
        let _ = t.join();
    }
    // Two QEMUs stop answering their monitor. (Stopped before the kill,
    // they would get SIGHUP from the kernel with their orphaned process
    // group, and die.)
    for (_, _, pid) in &vms[8..] {
        kill(Pid::from_raw(*pid), Signal::SIGSTOP).unwrap();
    }

    d.restart();
    let t = Instant::now();
    virsh(&uri, &["autostart", "other"]).ok();
    let answered = t.elapsed();
    assert!(
        answered < Duration::from_secs(1),
        "a call on another domain took {answered:?} after restart"
    );
    // A domain still being re-attached answers at once, clearly.
    let t = Instant::now();
    let busy = virsh(&uri, &["suspend", "k8"]);
    let busy_took = t.elapsed();
    assert!(busy_took < Duration::from_secs(1), "{busy_took:?}");
    let msg = busy.fails();
    assert!(msg.contains("re-attaching"), "{msg}");
    // Destroy, the operator's way out, does not wait for the monitor.
    let (k9_uuid, k9_pid) = (vms[9].1.clone(), vms[9].2);
    let t = Instant::now();
    virsh(&uri, &["destroy", "k9"]).ok();
    let destroy_took = t.elapsed();
    assert!(destroy_took < Duration::from_secs(1), "{destroy_took:?}");
    assert!(!qemu_alive(k9_pid, &k9_uuid));
    assert_eq!(
        virsh(&uri, &["domstate", "--reason", "k9"]).ok().trim(),
        "shut off (destroyed)"
    );

    // Watch the listing until the unreachable QEMUs are dealt with:
    // whatever is listed inactive must have no QEMU left.
    let rt = runtime();
    let client = rt.block_on(Client::connect(&uri)).expect("connect");
    let until = Instant::now() + Duration::from_secs(20);
    let mut rounds = 0;
    loop {
        let listed = rt.block_on(client.list_all_domains(0)).expect("list");
        rounds += 1;
        let mut stuck_gone = 0;
        for (name, uuid, pid) in &vms {
            let dom = listed.iter().find(|d| &d.name.0 == name).expect("listed");
            if dom.id == -1 {
                assert!(
                    !qemu_alive(*pid, uuid),
                    "{name} is listed shut off while its QEMU {pid} runs"
                );
                if name == "k8" || name == "k9" {
                    stuck_gone += 1;
                }
            }
        }
        if stuck_gone == 2 {
            break;
        }
        assert!(
            Instant::now() < until,
            "the unreachable QEMUs were not dealt with"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "restart: other domain answered in {answered:?}, destroy during re-attachment took {destroy_took:?}; {rounds} listings checked"
    );
    // Every domain is now settled and operable again.
    for (name, _, _) in &vms {
        let _ = virsh(&uri, &["destroy", name]);
        assert!(virsh(&uri, &["domstate", name]).ok().contains("shut off"));
    }
}

/// Case 4: temp files of interrupted atomic writes never survive a
/// restart (before: one `.UUID.xml.tmp-PID` per interrupted write, forever).
#[test]
fn no_temp_file_survives_a_restart() {
    let mut d = Daemon::start();
    let uri = d.uri();
    let x = write_xml(d.dir.path(), "keep", &tiny_xml("keep"));
    virsh(&uri, &["define", x.to_str().unwrap()]).ok();
    let uuid = virsh(&uri, &["domuuid", "keep"]).ok().trim().to_owned();
    d.kill9();
    let stale = [
        d.state_dir()
            .join("domains")
            .join(format!(".{uuid}.xml.tmp-999999")),
        d.state_dir().join("domains").join(".other.xml.tmp-1"),
        d.state_dir()
            .join("autostart")
            .join(format!(".{uuid}.tmp-42")),
        d.run_dir().join("live").join(format!(".{uuid}.json.tmp-7")),
    ];
    for p in &stale {
        std::fs::write(p, b"").unwrap();
    }
    d.restart();
    assert!(virsh(&uri, &["list", "--all", "--name"])
        .ok()
        .contains("keep"));
    for dir in [
        d.state_dir().join("domains"),
        d.state_dir().join("autostart"),
        d.run_dir().join("live"),
    ] {
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(left.is_empty(), "{}: {left:?}", dir.display());
    }
}

/// Case 6: definitions and records are private; sockets keep their
/// configured modes; logs to a file carry no colour codes; a world-readable
/// TLS key is refused loudly; `--log-format json` writes JSON lines.
#[test]
fn files_are_private_keys_checked_and_logs_plain() {
    let d = Daemon::start();
    let uri = d.uri();
    let x = write_xml(d.dir.path(), "m1", &tiny_xml("m1"));
    virsh(&uri, &["define", x.to_str().unwrap()]).ok();
    virsh(&uri, &["start", "m1"]).ok();
    let uuid = virsh(&uri, &["domuuid", "m1"]).ok().trim().to_owned();
    let (state, run) = (d.state_dir(), d.run_dir());
    for dir in [
        state.clone(),
        state.join("domains"),
        state.join("autostart"),
        state.join("log"),
        run.join("live"),
        run.join("qmp"),
        run.join("pid"),
    ] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    // The read-only socket (0777) is for everyone: the run directory lets
    // others through to it by name, and nothing more.
    assert_eq!(mode(&run), 0o711);
    for file in [
        state.join("domains").join(format!("{uuid}.xml")),
        state.join("log").join("m1.log"),
        run.join("live").join(format!("{uuid}.json")),
    ] {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    assert_eq!(mode(&d.socket()), 0o700);
    assert_eq!(mode(&d.socket_ro()), 0o777);
    virsh(&uri, &["destroy", "m1"]).ok();
    assert!(!d.log().contains('\u{1b}'), "colour codes in a log file");

    // A TLS key others can read is refused, loudly, at once.
    let pki = Pki::generate(&d.dir.path().join("pki"));
    let key = pki.dir.join("serverkey.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = d.dir.path().join("tls.toml");
    std::fs::write(&cfg, pki.settings(&format!("127.0.0.1:{}", free_port()))).unwrap();
    let other = tempfile::Builder::new()
        .prefix("qd")
        .tempdir_in("/tmp")
        .unwrap();
    let out = Command::new("timeout")
        .arg("20")
        .arg(binary("qemud"))
        .arg("--config")
        .arg(&cfg)
        .arg("--run-dir")
        .arg(other.path().join("run"))
        .arg("--state-dir")
        .arg(other.path().join("state"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "served with a world-readable key");
    assert!(
        stderr.contains("accessible by other users") && stderr.contains("ERROR"),
        "{stderr}"
    );

    // JSON logs, one object per line.
    let j = Daemon::start_with(&["--log-format", "json"]);
    virsh(&j.uri(), &["list"]).ok();
    let log = j.log();
    let mut ready = false;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
        ready |= v["fields"]["message"] == "qemud ready";
    }
    assert!(ready, "{log}");
}

/// Case 5 (and issue 19, item 5): destroy is prompt whatever state QEMU
/// is in. Before: 4 of 120 quick start/destroy cycles took 10 s (QEMU
/// ignores SIGTERM that early), and a SIGSTOPped QEMU took 10.2 s. The
/// 200-cycle p99 figure comes from `qemuctl bench --lifecycles 200`; here
/// 20 cycles, none over a generous bound.
#[test]
fn destroy_is_prompt_young_stopped_or_graceful() {
    let d = Daemon::start();
    let uri = d.uri();
    let rt = runtime();
    let c = rt.block_on(Client::connect(&uri)).expect("connect");
    let dom = rt
        .block_on(c.define_xml(&tiny_xml("quick")))
        .expect("define");
    let mut took = Vec::new();
    for _ in 0..20 {
        rt.block_on(c.start(&dom)).expect("start");
        let t = Instant::now();
        rt.block_on(c.destroy(&dom)).expect("destroy");
        took.push(t.elapsed());
    }
    took.sort();
    eprintln!(
        "20 quick start/destroy cycles: p50 {:?}, max {:?}",
        took[10], took[19]
    );
    assert!(
        took[19] < Duration::from_secs(3),
        "a destroy right after start took {:?}",
        took[19]
    );

    // A stopped QEMU acts on no signal but SIGKILL: destroy must not wait.
    rt.block_on(c.start(&dom)).expect("start");
    let pid = d.qemu_pid("quick");
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let t = Instant::now();
    rt.block_on(c.destroy(&dom)).expect("destroy stopped");
    let stopped = t.elapsed();
    eprintln!("destroy of a SIGSTOPped QEMU: {stopped:?}");
    assert!(stopped < Duration::from_secs(1), "{stopped:?}");
    assert_eq!(
        virsh(&uri, &["domstate", "--reason", "quick"]).ok().trim(),
        "shut off (destroyed)"
    );

    // A destroy while QEMU is still starting (held so: stopped as soon as
    // it wrote its pid file) does not wait for the start: it kills QEMU,
    // the start fails, and the destroy finds the domain not running, as
    // with libvirt.
    let uuid = virsh(&uri, &["domuuid", "quick"]).ok().trim().to_owned();
    let pidfile = d.run_dir().join("pid").join(format!("{uuid}.pid"));
    let starter = {
        let uri = uri.clone();
        std::thread::spawn(move || virsh(&uri, &["start", "quick"]))
    };
    let pid = stop_qemu_at_its_pid_file(&pidfile);
    let t = Instant::now();
    let destroyed = virsh(&uri, &["destroy", "quick"]);
    let starting = t.elapsed();
    eprintln!("destroy of a QEMU still starting: {starting:?}");
    assert!(starting < Duration::from_secs(2), "{starting:?}");
    let msg = destroyed.fails();
    assert!(msg.contains("domain is not running"), "{msg}");
    starter.join().unwrap().fails();
    assert!(!qemu_alive(pid, &uuid));
    assert_eq!(virsh(&uri, &["domstate", "quick"]).ok().trim(), "shut off");

    // VIR_DOMAIN_DESTROY_GRACEFUL: SIGTERM only, which a running QEMU obeys.
    rt.block_on(c.start(&dom)).expect("start");
    let pid = d.qemu_pid("quick");
    let kills_before = d.log().matches("SIGKILL").count();
    virsh(&uri, &["destroy", "--graceful", "quick"]).ok();
    assert!(!qemu_alive(pid, &uuid));
    assert_eq!(
        d.log().matches("SIGKILL").count(),
        kills_before,
        "a graceful destroy sent SIGKILL:\n{}",
        d.log()
    );
    assert_eq!(virsh(&uri, &["domstate", "quick"]).ok().trim(), "shut off");
}

/// The soak: mixed load for QEMUD_SOAK_SECONDS (default 60), then no fd,
/// QEMU or memory leak in the daemon.
#[test]
fn soak_leaks_no_fds_qemus_or_memory() {
    let secs = std::env::var("QEMUD_SOAK_SECONDS").unwrap_or_else(|_| "60".into());
    let d = Daemon::start();
    let pid = daemon_pid(&d);
    let out = Command::new("timeout")
        .arg("600")
        .arg(binary("qemuctl"))
        .args(["-c", &d.uri(), "--json", "soak", "--seconds", &secs])
        .args(["--daemon-pid", &pid.to_string()])
        .args(["--domain-type", domain_type()])
        .output()
        .expect("run qemuctl soak");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "soak failed: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    let r: serde_json::Value = serde_json::from_str(&text).expect("soak JSON");
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"));
    let (start, end) = (&r["start"], &r["end"]);
    assert_eq!(n(&r["counts"]["errors"]), 0, "{}", r["first_errors"]);
    assert!(n(&r["counts"]["vm_cycles"]) > 0, "no VM cycle ran");
    assert!(n(&r["counts"]["lazy_clients"]) > 0, "no lazy client ran");
    assert!(n(&r["counts"]["events"]) > 0, "no event arrived");
    assert_eq!(n(&start["qemus"]), 0);
    assert_eq!(n(&end["qemus"]), 0, "QEMUs left behind");
    assert!(
        n(&end["fds"]) <= n(&start["fds"]) + 2,
        "fds grew from {} to {}",
        start["fds"],
        end["fds"]
    );
    assert!(
        n(&r["peak_rss_kib"]) < 200 * MIB,
        "peak RSS {}",
        r["peak_rss_kib"]
    );
    assert!(
        n(&end["rss_kib"]) < n(&start["rss_kib"]) + 32 * MIB,
        "RSS grew from {} to {} KiB",
        start["rss_kib"],
        end["rss_kib"]
    );
    let p99 = r["destroy_p99_ms"].as_f64().expect("destroy p99");
    assert!(p99 < 3000.0, "destroy p99 {p99} ms");
}
