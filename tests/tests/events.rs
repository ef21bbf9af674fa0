//! Issue 4: domain events pushed to every subscribed client, interleaved
//! with ordinary replies, in libvirt 9.0's wire format.

use std::process::Command;
use std::time::Duration;

use qemud_tests::*;

#[test]
fn virsh_event_loop_sees_every_transition() {
    let d = Daemon::start();
    let uri = d.uri();
    let mut w =
        Watcher::spawn(Command::new("virsh").args(["-c", &uri, "event", "--all", "--loop"]));
    // virsh registers its callbacks right after connecting; a list call
    // on another connection cannot overtake that by much, so give it a beat.
    std::thread::sleep(Duration::from_millis(500));
    let x = write_xml(d.dir.path(), "ev", &tiny_xml("ev"));
    virsh(&uri, &["define", x.to_str().unwrap()]).ok();
    w.expect("event 'lifecycle' for domain 'ev': Defined Added", 10);
    // Redefining the dumped definition updates it (the `virsh edit` flow).
    let dumped = virsh(&uri, &["dumpxml", "ev"]).ok().to_owned();
    let x = write_xml(d.dir.path(), "ev2", &dumped);
    virsh(&uri, &["define", x.to_str().unwrap()]).ok();
    w.expect("event 'lifecycle' for domain 'ev': Defined Updated", 10);
    virsh(&uri, &["start", "ev"]).ok();
    w.expect("event 'lifecycle' for domain 'ev': Started Booted", 10);
    virsh(&uri, &["suspend", "ev"]).ok();
    w.expect("event 'lifecycle' for domain 'ev': Suspended Paused", 10);
    virsh(&uri, &["resume", "ev"]).ok();
    w.expect("event 'lifecycle' for domain 'ev': Resumed Unpaused", 10);
    virsh(&uri, &["reset", "ev"]).ok();
    w.expect("event 'reboot' for domain 'ev'", 10);
    virsh(&uri, &["destroy", "ev"]).ok();
    w.expect("event 'lifecycle' for domain 'ev': Stopped Destroyed", 10);
    virsh(&uri, &["undefine", "ev"]).ok();
    w.expect("event 'lifecycle' for domain 'ev': Undefined Removed", 10);

    // Order is preserved per domain.
    let lifecycle: Vec<&String> = w
        .seen
        .iter()
        .filter(|l| l.contains("'lifecycle'"))
        .collect();
    let order = [
        "Defined Added",
        "Defined Updated",
        "Started Booted",
        "Suspended Paused",
        "Resumed Unpaused",
        "Stopped Destroyed",
        "Undefined Removed",
    ];
    assert_eq!(lifecycle.len(), order.len(), "{lifecycle:#?}");
    for (line, want) in lifecycle.iter().zip(order) {
        assert!(line.ends_with(want), "{line} != {want}");
    }
}

#[test]
fn guest_power_off_yields_shutdown_guest_then_stopped_shutdown() {
    let d = Daemon::start();
    let uri = d.uri();
    let x = write_xml(d.dir.path(), "acpi", &guest_xml(d.dir.path(), "acpi", 192));
    virsh(&uri, &["define", x.to_str().unwrap()]).ok();
    let mut w = Watcher::spawn(Command::new("virsh").args([
        "-c",
        &uri,
        "event",
        "acpi",
        "--event",
        "lifecycle",
        "--loop",
    ]));
    std::thread::sleep(Duration::from_millis(500));
    virsh(&uri, &["start", "acpi"]).ok();
    w.expect("Started Booted", 10);
    wait_guest_ready(d.dir.path(), "acpi", 120);
    virsh(&uri, &["shutdown", "acpi"]).ok();
    w.expect(
        "event 'lifecycle' for domain 'acpi': Shutdown Finished after guest request",
        60,
    );
    w.expect("event 'lifecycle' for domain 'acpi': Stopped Shutdown", 30);
    let shutdown_at = w
        .seen
        .iter()
        .position(|l| l.contains("Shutdown Finished"))
        .unwrap();
    let stopped_at = w
        .seen
        .iter()
        .position(|l| l.contains("Stopped Shutdown"))
        .unwrap();
    assert!(shutdown_at < stopped_at);
    assert_eq!(
        virsh(&uri, &["domstate", "--reason", "acpi"]).ok().trim(),
        "shut off (shutdown)"
    );
}

#[test]
fn python_two_subscribers_and_deregistration() {
    let d = Daemon::start();
    let xml = tiny_xml("pyev");
    let script = format!(
        r#"
import os, threading, time, libvirt
uri = os.environ["QEMUD_URI"]
libvirt.virEventRegisterDefaultImpl()
def loop():
    while True:
        libvirt.virEventRunDefaultImpl()
threading.Thread(target=loop, daemon=True).start()

a, b, ops = libvirt.open(uri), libvirt.open(uri), libvirt.open(uri)
seen_a, seen_b, seen_legacy, reboots = [], [], [], []
cb_a = a.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
    lambda c, d, e, det, o: seen_a.append((d.name(), e, det)), None)
cb_b = b.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
    lambda c, d, e, det, o: seen_b.append((d.name(), e, det)), None)
b.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT,
    lambda c, d, o: reboots.append(d.name()), None)
# The legacy registration API too.
b.domainEventRegister(lambda c, d, e, det, o: seen_legacy.append((d.name(), e, det)), None)

def wait(lst, n):
    end = time.time() + 20
    while len(lst) < n and time.time() < end:
        time.sleep(0.05)
    assert len(lst) >= n, lst

dom = ops.defineXML("""{xml}""")
dom.create()
dom.suspend()
dom.resume()
dom.reset(0)
dom.destroy()
E = libvirt
expected = [
    ("pyev", E.VIR_DOMAIN_EVENT_DEFINED, E.VIR_DOMAIN_EVENT_DEFINED_ADDED),
    ("pyev", E.VIR_DOMAIN_EVENT_STARTED, E.VIR_DOMAIN_EVENT_STARTED_BOOTED),
    ("pyev", E.VIR_DOMAIN_EVENT_SUSPENDED, E.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED),
    ("pyev", E.VIR_DOMAIN_EVENT_RESUMED, E.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED),
    ("pyev", E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_DESTROYED),
]
for lst in (seen_a, seen_b, seen_legacy):
    wait(lst, len(expected))
    assert lst == expected, lst
wait(reboots, 1)
assert reboots == ["pyev"], reboots

# Calls keep working on a connection that receives events.
assert [x.name() for x in a.listAllDomains()] == ["pyev"]

# After deregistering, a gets nothing more; b still does.
a.domainEventDeregisterAny(cb_a)
dom.undefine()
wait(seen_b, len(expected) + 1)
time.sleep(0.5)
assert len(seen_a) == len(expected), seen_a
assert seen_b[-1] == ("pyev", E.VIR_DOMAIN_EVENT_UNDEFINED, E.VIR_DOMAIN_EVENT_UNDEFINED_REMOVED), seen_b
try:
    a.domainEventDeregisterAny(cb_a)
    raise SystemExit("double deregister accepted")
except libvirt.libvirtError:
    pass
print("ok")
"#
    );
    let r = python(&d.uri(), &script);
    assert_eq!(r.ok().trim(), "ok", "{}", r.stderr);
}

#[test]
fn per_domain_filter() {
    let d = Daemon::start();
    let uri = d.uri();
    for n in ["f1", "f2"] {
        let x = write_xml(d.dir.path(), n, &tiny_xml(n));
        virsh(&uri, &["define", x.to_str().unwrap()]).ok();
    }
    let mut w = Watcher::spawn(Command::new("virsh").args([
        "-c",
        &uri,
        "event",
        "f2",
        "--event",
        "lifecycle",
        "--loop",
    ]));
    std::thread::sleep(Duration::from_millis(500));
    virsh(&uri, &["start", "f1"]).ok();
    virsh(&uri, &["start", "f2"]).ok();
    w.expect("event 'lifecycle' for domain 'f2': Started Booted", 10);
    virsh(&uri, &["destroy", "f1"]).ok();
    virsh(&uri, &["destroy", "f2"]).ok();
    w.expect("event 'lifecycle' for domain 'f2': Stopped Destroyed", 10);
    assert!(!w.seen.iter().any(|l| l.contains("'f1'")), "{:#?}", w.seen);
}
