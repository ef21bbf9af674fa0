//! A VM that stops answering fails only its own calls; a client that stops
//! reading its events is dropped without holding up anyone else.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use qemud_tests::*;

#[test]
fn stuck_vm_fails_only_its_own_calls() {
    // Long enough for the other calls to finish well inside it, even on
    // a loaded machine.
    let d = daemon_with_settings("qmp_timeout_ms = 8000\n");
    let uri = d.uri();
    for n in ["stuck", "fine"] {
        let x = write_xml(d.dir.path(), n, &tiny_xml(n));
        virsh(&uri, &["define", x.to_str().unwrap()]).ok();
        virsh(&uri, &["start", n]).ok();
    }
    let pid = Pid::from_raw(d.qemu_pid("stuck"));
    kill(pid, Signal::SIGSTOP).unwrap();

    // The stuck VM's call runs into its deadline...
    let uri2 = uri.clone();
    let stuck_call = std::thread::spawn(move || {
        let t = Instant::now();
        let r = virsh(&uri2, &["suspend", "stuck"]);
        (r.status.success(), r.stderr, t.elapsed())
    });
    // ...once it is in flight (its "stop" went to the stuck QEMU)...
    wait_until(20, "the stuck call in flight", || {
        d.log().contains("QMP command stop sent")
    });
    // ...everything else carries on meanwhile: the other VM's calls and
    // a registry-wide call all finish while the stuck call still waits.
    virsh(&uri, &["suspend", "fine"]).ok();
    assert_eq!(virsh(&uri, &["domstate", "fine"]).ok().trim(), "paused");
    virsh(&uri, &["resume", "fine"]).ok();
    virsh(&uri, &["list", "--all"]).ok();
    assert!(
        !stuck_call.is_finished(),
        "the stuck call ended before the others were done"
    );

    let (ok, stderr, took) = stuck_call.join().unwrap();
    assert!(!ok, "a stopped QEMU answered?");
    assert!(stderr.contains("Timed out during operation"), "{stderr}");
    assert!(took < Duration::from_secs(10), "{took:?}");

    kill(pid, Signal::SIGCONT).unwrap();
    virsh(&uri, &["destroy", "stuck"]).ok();
    virsh(&uri, &["destroy", "fine"]).ok();
}

#[test]
fn client_that_stops_reading_events_is_dropped() {
    let d = daemon_with_settings("max_queued_messages = 8\n");
    let uri = d.uri();
    // A subscriber that registers and then never reads again.
    let mut lazy = UnixStream::connect(d.socket()).unwrap();
    lazy.write_all(&call_frame(REMOTE_PROGRAM, 1, 1, &[0, 0, 0, 0, 0, 0, 0, 0]))
        .unwrap();
    // CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY: lifecycle, all domains.
    lazy.write_all(&call_frame(
        REMOTE_PROGRAM,
        316,
        2,
        &[0, 0, 0, 0, 0, 0, 0, 0],
    ))
    .unwrap();
    // A well-behaved subscriber.
    let mut w =
        Watcher::spawn(Command::new("virsh").args(["-c", &uri, "event", "--all", "--loop"]));
    d.wait_lifecycle_subscribers(2);

    // Long names make big events, to fill the lazy client's socket soon.
    let name = format!("n{}", "x".repeat(200));
    let r = python(
        &uri,
        &format!(
            r#"
import os, libvirt
c = libvirt.open(os.environ["QEMUD_URI"])
xml = """{xml}"""
for i in range(1200):
    c.defineXML(xml).undefine()
c.defineXML(xml.replace("{name}", "last"))
print("ok")
"#,
            xml = tiny_xml(&name).replace(
                "<name>",
                "<uuid>6a9e1c7e-0000-4000-8000-000000000001</uuid><name>"
            )
        ),
    );
    assert_eq!(r.ok().trim(), "ok", "{}", r.stderr);
    w.expect("event 'lifecycle' for domain 'last': Defined Added", 30);
    wait_until(10, "lazy client dropped", || {
        d.log().contains("is not reading its messages")
    });
    // The daemon still serves everyone else.
    virsh(&uri, &["list", "--all"]).ok();
}
