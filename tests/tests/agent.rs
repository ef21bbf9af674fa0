//! Issue 11: the QEMU guest agent over a virtio-serial channel, with the
//! test guest's tiny agent; a guest whose agent is not up gets libvirt's
//! error at once.

use std::time::{Duration, Instant};

use qemud_tests::*;

const CHANNEL: &str = "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\n    <memballoon";

#[test]
fn agent_commands_time_and_hostname() {
    let d = Daemon::start();
    let uri = d.uri();
    let dir = d.dir.path();
    let xml = guest_xml(dir, "ga", 256).replace("<memballoon", CHANNEL);
    let x = write_xml(dir, "ga", &xml);
    virsh(&uri, &["define", x.to_str().unwrap()]).ok();
    let dumped = virsh(&uri, &["dumpxml", "ga"]).ok().to_owned();
    assert!(dumped.contains("name='org.qemu.guest_agent.0'"), "{dumped}");

    // Paused before boot: no agent listens yet; the error comes at once.
    virsh(&uri, &["start", "ga", "--paused"]).ok();
    let t = Instant::now();
    let err = virsh(
        &uri,
        &["qemu-agent-command", "ga", r#"{"execute":"guest-ping"}"#],
    )
    .fails()
    .to_owned();
    assert!(
        err.contains("Guest agent is not responding: QEMU guest agent is not connected"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    let mut events = Watcher::spawn(std::process::Command::new("virsh").args([
        "-c",
        &uri,
        "event",
        "ga",
        "--event",
        "agent-lifecycle",
        "--loop",
    ]));
    std::thread::sleep(Duration::from_millis(500));
    virsh(&uri, &["resume", "ga"]).ok();
    wait_guest_ready(dir, "ga", 120);
    // The guest's agent opening its port is an agent lifecycle event.
    events.expect("state: 'connected'", 60);

    // The guest's agent opens its port shortly after the ready marker.
    let mut out = String::new();
    wait_until(30, "guest agent answers guest-ping", || {
        let r = virsh(
            &uri,
            &["qemu-agent-command", "ga", r#"{"execute":"guest-ping"}"#],
        );
        out = r.stdout.clone();
        r.status.success()
    });
    assert_eq!(out.trim(), r#"{"return":{}}"#);
    let out = virsh(
        &uri,
        &[
            "qemu-agent-command",
            "ga",
            "--timeout",
            "10",
            r#"{"execute":"guest-info"}"#,
        ],
    )
    .ok()
    .to_owned();
    assert!(out.contains("qemud-test-agent"), "{out}");
    let out = virsh(&uri, &["domhostname", "ga", "--source", "agent"])
        .ok()
        .to_owned();
    assert_eq!(out.trim(), "qemud-guest");
    let out = virsh(&uri, &["domtime", "ga", "--pretty"]).ok().to_owned();
    assert!(out.contains("Time:"), "{out}");
    let out = virsh(&uri, &["domtime", "ga"]).ok().to_owned();
    let secs: i64 = out
        .trim()
        .trim_start_matches("Time:")
        .trim()
        .parse()
        .unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((secs - now).abs() < 3600, "guest time {secs} vs host {now}");
    let out = virsh_full(&uri, &["domfsfreeze", "ga"]).ok().to_owned();
    assert!(out.contains("Froze 0 filesystem(s)"), "{out}");
    let out = virsh_full(&uri, &["domfsthaw", "ga"]).ok().to_owned();
    assert!(out.contains("Thawed 0 filesystem(s)"), "{out}");
    let out = virsh(&uri, &["domifaddr", "ga", "--source", "agent"])
        .ok()
        .to_owned();
    assert!(out.contains("127.0.0.1/8"), "{out}");
    // An unknown command: the agent's own error, as libvirt passes it on.
    let out = virsh(
        &uri,
        &[
            "qemu-agent-command",
            "ga",
            r#"{"execute":"guest-nonsense"}"#,
        ],
    )
    .ok()
    .to_owned();
    assert!(out.contains("CommandNotFound"), "{out}");
    // Read-only clients are refused passthrough.
    let err = virsh(
        &d.uri_ro(),
        &["qemu-agent-command", "ga", r#"{"execute":"guest-ping"}"#],
    )
    .fails()
    .to_owned();
    assert!(
        err.contains("read only access prevents virDomainQemuAgentCommand"),
        "{err}"
    );
    virsh(&uri, &["destroy", "ga"]).ok();
}
