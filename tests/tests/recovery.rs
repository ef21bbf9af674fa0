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
