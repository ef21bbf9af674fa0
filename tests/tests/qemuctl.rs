//! Issue 6: qemuctl drives the full lifecycle against qemud, and the load
//! generator runs a short smoke configuration (figures are not asserted).

use std::process::Command;

use qemud_tests::*;

#[test]
fn qemuctl_lifecycle_over_unix() {
    let d = Daemon::start();
    qemuctl_lifecycle(&d.uri(), d.dir.path(), "ctl");
    let v = qemuctl(&d.uri(), &["version"]);
    assert!(v.ok().contains("Using API: QEMU 9.0.0"), "{}", v.stdout);
    let j = qemuctl(&d.uri(), &["--json", "nodeinfo"]);
    let v: serde_json::Value = serde_json::from_str(j.ok()).unwrap();
    assert!(v["cpus"].as_i64().unwrap() >= 1);
    // Read-only connections are refused changes.
    let x = write_xml(d.dir.path(), "ro", &tiny_xml("ro"));
    let err = qemuctl(&d.uri(), &["-r", "define", x.to_str().unwrap()]);
    assert!(
        err.fails().contains("VIR_ERR_OPERATION_DENIED"),
        "{}",
        err.stderr
    );
}

#[test]
fn qemuctl_event_loop() {
    let d = Daemon::start();
    let uri = d.uri();
    let mut w = Watcher::spawn(Command::new(binary("qemuctl")).args([
        "-c",
        &uri,
        "event",
        "--loop",
        "--timeout",
        "60",
    ]));
    d.wait_lifecycle_subscribers(1);
    let x = write_xml(d.dir.path(), "e", &tiny_xml("e"));
    qemuctl(&uri, &["define", x.to_str().unwrap()]).ok();
    qemuctl(&uri, &["start", "e"]).ok();
    qemuctl(&uri, &["destroy", "e"]).ok();
    w.expect("event 'lifecycle' for domain 'e': Defined Added", 10);
    w.expect("event 'lifecycle' for domain 'e': Started Booted", 10);
    w.expect("event 'lifecycle' for domain 'e': Stopped Destroyed", 10);
}

#[test]
fn bench_smoke() {
    let d = Daemon::start();
    let out = qemuctl(
        &d.uri(),
        &[
            "--json",
            "bench",
            "--calls",
            "200",
            "--connections",
            "4",
            "--connects",
            "10",
            "--domains",
            "10",
            "--lifecycles",
            "1",
            "--subscribers",
            "3",
            "--events",
            "3",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(out.ok()).expect("bench json");
    let phases: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["phase"].as_str().unwrap())
        .collect();
    assert!(
        phases
            .iter()
            .any(|p| p.starts_with("get_lib_version pipelined")),
        "{phases:?}"
    );
    assert!(
        phases.iter().any(|p| p.starts_with("suspend -> event")),
        "{phases:?}"
    );
    // The bench cleans up after itself.
    assert!(virsh(&d.uri(), &["list", "--all", "--name"])
        .ok()
        .trim()
        .is_empty());
}
