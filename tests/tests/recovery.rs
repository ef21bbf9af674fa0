//! Issue 3: a daemon killed with SIGKILL restarts with every definition and
//! re-attaches to every QEMU still running; a QEMU killed behind the
//! daemon's back becomes shut off (crashed) while the daemon keeps serving.

use qemud_tests::*;

#[test]
fn sigkill_daemon_with_two_running_vms() {
    let mut d = Daemon::start();
    let uri = d.uri();
    for name in ["r1", "r2", "r3"] {
        let x = write_xml(d.dir.path(), name, &tiny_xml(name));
        virsh(&uri, &["define", x.to_str().unwrap()]).ok();
    }
    virsh(&uri, &["start", "r1"]).ok();
    virsh(&uri, &["start", "r2"]).ok();
    virsh(&uri, &["suspend", "r2"]).ok();
    let pids_before = {
        let mut p = d.qemu_pids();
        p.sort();
        p
    };
    assert_eq!(pids_before.len(), 2);

    d.kill9();
    d.restart();

    let list = squash(virsh(&uri, &["list", "--all"]).ok());
    assert!(list.contains("1 r1 running"), "{list}");
    assert!(list.contains("2 r2 paused"), "{list}");
    assert!(list.contains("- r3 shut off"), "{list}");
    let mut pids_after = d.qemu_pids();
    pids_after.sort();
    assert_eq!(pids_before, pids_after, "the same QEMUs, not new ones");
    // Still controllable, and new ids do not collide with recovered ones.
    virsh(&uri, &["resume", "r2"]).ok();
    assert_eq!(virsh(&uri, &["domstate", "r2"]).ok().trim(), "running");
    virsh(&uri, &["start", "r3"]).ok();
    assert_eq!(virsh(&uri, &["domid", "r3"]).ok().trim(), "3");
    for name in ["r1", "r2", "r3"] {
        virsh(&uri, &["destroy", name]).ok();
    }
    assert!(d.qemu_pids().is_empty());
}

#[test]
fn qemu_killed_becomes_crashed() {
    let d = Daemon::start();
    let uri = d.uri();
    let x = write_xml(d.dir.path(), "victim", &tiny_xml("victim"));
    virsh(&uri, &["define", x.to_str().unwrap()]).ok();
    let y = write_xml(d.dir.path(), "other", &tiny_xml("other"));
    virsh(&uri, &["define", y.to_str().unwrap()]).ok();
    virsh(&uri, &["start", "victim"]).ok();
    virsh(&uri, &["start", "other"]).ok();
    let pid = d.qemu_pid("victim");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(20, "crash noticed", || {
        virsh(&uri, &["domstate", "victim"]).stdout.trim() == "shut off"
    });
    assert_eq!(
        virsh(&uri, &["domstate", "--reason", "victim"]).ok().trim(),
        "shut off (crashed)"
    );
    assert_eq!(virsh(&uri, &["domstate", "other"]).ok().trim(), "running");
    virsh(&uri, &["start", "victim"]).ok();
    virsh(&uri, &["destroy", "victim"]).ok();
    virsh(&uri, &["destroy", "other"]).ok();
}

#[test]
fn autostart_domains_start_with_the_daemon() {
    let mut d = Daemon::start();
    let uri = d.uri();
    let x = write_xml(d.dir.path(), "auto", &tiny_xml("auto"));
    virsh(&uri, &["define", x.to_str().unwrap()]).ok();
    virsh(&uri, &["autostart", "auto"]).ok();
    d.terminate();
    d.restart();
    wait_until(20, "autostart", || {
        virsh(&uri, &["domstate", "auto"]).stdout.trim() == "running"
    });
    virsh(&uri, &["destroy", "auto"]).ok();
}

#[test]
fn qemu_of_an_interrupted_start_is_cleaned_up() {
    let mut d = Daemon::start();
    let uri = d.uri();
    let x = write_xml(d.dir.path(), "half", &tiny_xml("half"));
    virsh(&uri, &["define", x.to_str().unwrap()]).ok();
    let uuid = virsh(&uri, &["domuuid", "half"]).ok().trim().to_owned();
    d.kill9();
    // What a daemon that died between spawning QEMU and recording it leaves:
    // a QEMU with its pid file and no live record.
    let pidfile = d.run_dir().join("pid").join(format!("{uuid}.pid"));
    let mut orphan = std::process::Command::new("qemu-system-x86_64")
        .args([
            "-S",
            "-nodefaults",
            "-display",
            "none",
            "-machine",
            "none",
            "-uuid",
            &uuid,
        ])
        .arg("-pidfile")
        .arg(&pidfile)
        .spawn()
        .unwrap();
    wait_until(10, "pid file", || pidfile.exists());
    d.restart();
    let gone = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        orphan.try_wait().unwrap().is_some()
    });
    assert!(gone, "orphaned QEMU still running");
    assert_eq!(virsh(&uri, &["domstate", "half"]).ok().trim(), "shut off");
    // And the domain starts normally afterwards.
    virsh(&uri, &["start", "half"]).ok();
    virsh(&uri, &["destroy", "half"]).ok();
}

/// A process that names `uuid` on its command line, as a QEMU of that
/// domain would, but is not one.
fn impostor(uuid: &str) -> std::process::Child {
    std::process::Command::new("python3")
        .args(["-c", "import time; time.sleep(600)", uuid])
        .spawn()
        .expect("spawn impostor")
}

fn wait_gone(pid: i32) {
    wait_until(20, "QEMU gone", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z"))
            .unwrap_or(true)
    });
}

/// Issue 19: a pid recorded by an earlier daemon may belong to another
/// process by the time the daemon restarts. The daemon identifies its
/// QEMUs by pid and start time, and never signals a process that merely
/// has the recorded pid and names the domain.
#[test]
fn reused_pids_are_never_signalled() {
    let mut d = Daemon::start();
    let uri = d.uri();
    let x = write_xml(d.dir.path(), "gone", &tiny_xml("gone"));
    virsh(&uri, &["define", x.to_str().unwrap()]).ok();
    virsh(&uri, &["start", "gone"]).ok();
    let uuid = virsh(&uri, &["domuuid", "gone"]).ok().trim().to_owned();
    let qemu = d.qemu_pid("gone");
    d.kill9();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_gone(qemu);

    // The live record now names a process that took over "the" pid.
    let mut recorded = impostor(&uuid);
    let live = d.run_dir().join("live").join(format!("{uuid}.json"));
    let mut rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&live).unwrap()).unwrap();
    assert!(rec["start_time"].as_u64().is_some(), "{rec}");
    rec["pid"] = serde_json::json!(recorded.id());
    std::fs::write(&live, rec.to_string()).unwrap();

    // A pid file left by an interrupted start, written before the process
    // now holding that pid started.
    let ghost = "4b1fd6a8-7c2e-4d7e-9a55-0b9a3c1e2f10";
    let mut from_pidfile = impostor(ghost);
    let pidfile = d.run_dir().join("pid").join(format!("{ghost}.pid"));
    std::fs::write(&pidfile, format!("{}\n", from_pidfile.id())).unwrap();
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&pidfile)
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();

    d.restart();
    // Recovery ends with both records gone, whether it decided the
    // processes were QEMUs (signalled first) or not.
    wait_until(30, "recovery done", || !live.exists() && !pidfile.exists());
    let state = virsh(&uri, &["domstate", "--reason", "gone"]);
    assert!(
        recorded.try_wait().unwrap().is_none(),
        "recorded pid was signalled"
    );
    assert!(
        from_pidfile.try_wait().unwrap().is_none(),
        "pid-file pid was signalled"
    );
    assert_eq!(state.ok().trim(), "shut off (daemon)");
    let _ = recorded.kill();
    let _ = recorded.wait();
    let _ = from_pidfile.kill();
    let _ = from_pidfile.wait();
}
