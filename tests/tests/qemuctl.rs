//! Issue 6: qemuctl drives the full lifecycle against qemud, and the load
//! generator runs a short smoke configuration (figures are not asserted).

use std::process::Command;

use qemud_tests::*;

fn qemuctl(uri: &str, args: &[&str]) -> Run {
    let out = Command::new("timeout")
        .arg("120")
        .arg(binary("qemuctl"))
        .arg("-c")
        .arg(uri)
        .args(args)
        .output()
        .expect("run qemuctl");
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The lifecycle every transport must carry.
pub fn lifecycle(uri: &str, dir: &std::path::Path, name: &str) {
    let x = write_xml(dir, name, &tiny_xml(name));
    let out = qemuctl(uri, &["define", x.to_str().unwrap()]);
    assert!(
        out.ok().contains(&format!("Domain '{name}' defined")),
        "{}",
        out.stdout
    );
    assert!(squash(qemuctl(uri, &["list", "--all"]).ok()).contains(&format!("- {name} shut off")));
    qemuctl(uri, &["start", name]).ok();
    let list = squash(qemuctl(uri, &["list"]).ok());
    assert!(list.contains(&format!("{name} running")), "{list}");
    let info = qemuctl(uri, &["dominfo", name]);
    assert!(
        info.ok().contains("State:          running"),
        "{}",
        info.stdout
    );
    assert_eq!(
        qemuctl(uri, &["domstate", "--reason", name]).ok().trim(),
        "running (booted)"
    );
    qemuctl(uri, &["suspend", name]).ok();
    assert_eq!(qemuctl(uri, &["domstate", name]).ok().trim(), "paused");
    qemuctl(uri, &["resume", name]).ok();
    qemuctl(uri, &["reset", name]).ok();
    assert!(qemuctl(uri, &["dumpxml", name]).ok().contains("id='"));
    let j = qemuctl(uri, &["--json", "dominfo", name]);
    let v: serde_json::Value = serde_json::from_str(j.ok()).expect("json");
    assert_eq!(v["state"], "running");
    assert_eq!(v["persistent"], true);
    qemuctl(uri, &["autostart", name]).ok();
    qemuctl(uri, &["autostart", "--disable", name]).ok();
    qemuctl(uri, &["destroy", name]).ok();
    assert_eq!(
        qemuctl(uri, &["domstate", "--reason", name]).ok().trim(),
        "shut off (destroyed)"
    );
    qemuctl(uri, &["undefine", name]).ok();
    let err = qemuctl(uri, &["dominfo", name]);
    let msg = err.fails();
    assert!(
        msg.contains("Domain not found") && msg.contains("VIR_ERR_NO_DOMAIN"),
        "{msg}"
    );
}

#[test]
fn qemuctl_lifecycle_over_unix() {
    let d = Daemon::start();
    lifecycle(&d.uri(), d.dir.path(), "ctl");
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
    std::thread::sleep(std::time::Duration::from_millis(500));
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
