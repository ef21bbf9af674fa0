//! Issue 3: real QEMU domains driven through unmodified virsh and
//! python3-libvirt: define, start, query, suspend, resume, reset, destroy,
//! ACPI shutdown, undefine; errors as libvirt gives them.

use qemud_tests::*;

#[test]
fn virsh_full_lifecycle() {
    let d = Daemon::start();
    let uri = d.uri();
    let xml = write_xml(d.dir.path(), "life", &guest_xml(d.dir.path(), "life", 192));

    let out = virsh_full(&uri, &["define", xml.to_str().unwrap()]);
    assert!(out.ok().contains("Domain 'life' defined"), "{}", out.stdout);
    let list = squash(virsh(&uri, &["list", "--all"]).ok());
    assert!(list.contains("- life shut off"), "{list}");
    assert_eq!(virsh(&uri, &["domstate", "life"]).ok().trim(), "shut off");

    virsh(&uri, &["start", "life"]).ok();
    let list = squash(virsh(&uri, &["list"]).ok());
    assert!(list.contains("1 life running"), "{list}");
    let id = virsh(&uri, &["domid", "life"]).ok().trim().to_owned();
    assert_eq!(id, "1");
    let uuid = virsh(&uri, &["domuuid", "life"]).ok().trim().to_owned();
    assert_eq!(uuid.len(), 36);
    assert_eq!(virsh(&uri, &["domname", &uuid]).ok().trim(), "life");
    assert_eq!(virsh(&uri, &["domname", &id]).ok().trim(), "life");
    let info = virsh(&uri, &["dominfo", "life"]);
    let info = info.ok();
    for expect in [
        "Name:           life",
        "State:          running",
        "CPU(s):         1",
        "Max memory:     196608 KiB",
        "Persistent:     yes",
        "Autostart:      disable",
        "OS Type:        hvm",
    ] {
        assert!(info.contains(expect), "missing {expect:?} in {info}");
    }
    assert_eq!(
        virsh(&uri, &["domstate", "--reason", "life"]).ok().trim(),
        "running (booted)"
    );
    let live = virsh(&uri, &["dumpxml", "life"]);
    let live = live.ok();
    assert!(
        live.contains(&format!("<domain type='{}' id='1'>", domain_type())),
        "{live}"
    );
    assert!(live.contains("<source path='/dev/pts/"), "{live}");
    assert!(live.contains(&format!("<uuid>{uuid}</uuid>")), "{live}");
    let inactive = virsh(&uri, &["dumpxml", "--inactive", "life"]);
    assert!(!inactive.ok().contains("id='1'"), "{}", inactive.stdout);

    // Starting twice is refused the way libvirt refuses it.
    assert!(virsh(&uri, &["start", "life"])
        .fails()
        .contains("already active"));

    virsh(&uri, &["suspend", "life"]).ok();
    assert_eq!(
        virsh(&uri, &["domstate", "--reason", "life"]).ok().trim(),
        "paused (user)"
    );
    virsh(&uri, &["resume", "life"]).ok();
    assert_eq!(
        virsh(&uri, &["domstate", "--reason", "life"]).ok().trim(),
        "running (unpaused)"
    );
    let reset = virsh_full(&uri, &["reset", "life"]);
    assert!(reset.ok().contains("was reset"), "{}", reset.stdout);
    assert_eq!(virsh(&uri, &["domstate", "life"]).ok().trim(), "running");

    virsh(&uri, &["destroy", "life"]).ok();
    assert_eq!(
        virsh(&uri, &["domstate", "--reason", "life"]).ok().trim(),
        "shut off (destroyed)"
    );
    assert_eq!(virsh(&uri, &["domid", "life"]).ok().trim(), "-");
    let err = virsh(&uri, &["suspend", "life"]);
    assert!(
        err.fails()
            .contains("Requested operation is not valid: domain is not running"),
        "{}",
        err.stderr
    );

    // A second boot gets a new id; a reboot goes through the guest's own
    // power-off and comes back; a real ACPI shutdown stops it.
    virsh(&uri, &["start", "life"]).ok();
    assert_eq!(virsh(&uri, &["domid", "life"]).ok().trim(), "2");
    wait_guest_ready(d.dir.path(), "life", GUEST_BOOT_SECS);
    let log = serial_log(d.dir.path(), "life");
    press_until_guest_powers_off(&uri, "reboot", d.dir.path(), "life");
    wait_until(GUEST_BOOT_SECS, "guest reboot", || {
        std::fs::read_to_string(&log)
            .map(|t| t.matches("QEMUD-GUEST-READY").count() >= 2)
            .unwrap_or(false)
    });
    assert_eq!(virsh(&uri, &["domstate", "life"]).ok().trim(), "running");
    assert_eq!(virsh(&uri, &["domid", "life"]).ok().trim(), "2");
    wait_guest_ready(d.dir.path(), "life", GUEST_BOOT_SECS);
    press_until_guest_powers_off(&uri, "shutdown", d.dir.path(), "life");
    wait_until(GUEST_BOOT_SECS, "guest shutdown", || {
        virsh(&uri, &["domstate", "life"]).stdout.trim() == "shut off"
    });
    assert_eq!(
        virsh(&uri, &["domstate", "--reason", "life"]).ok().trim(),
        "shut off (shutdown)"
    );

    virsh(&uri, &["undefine", "life"]).ok();
    let err = virsh(&uri, &["dominfo", "life"]);
    assert!(
        err.fails().contains("failed to get domain 'life'"),
        "{}",
        err.stderr
    );
    assert!(virsh(&uri, &["list", "--all", "--name"])
        .ok()
        .trim()
        .is_empty());
    assert!(d.qemu_pids().is_empty(), "QEMU left running");
}

#[test]
fn definitions_are_validated_and_persisted() {
    let mut d = Daemon::start();
    let uri = d.uri();
    let bad = write_xml(d.dir.path(), "bad", "<domain type='qemu'><name>x</name>");
    let err = virsh(&uri, &["define", bad.to_str().unwrap()]);
    assert!(err.fails().contains("XML error"), "{}", err.stderr);
    let hostdev = tiny_xml("hd").replace(
        "<devices>",
        "<devices><hostdev mode='subsystem' type='pci'/>",
    );
    let hostdev = write_xml(d.dir.path(), "hd", &hostdev);
    let err = virsh(&uri, &["define", hostdev.to_str().unwrap()]);
    assert!(
        err.fails().contains("unsupported configuration: hostdev"),
        "{}",
        err.stderr
    );

    let a = write_xml(d.dir.path(), "a", &tiny_xml("a"));
    virsh(&uri, &["define", a.to_str().unwrap()]).ok();
    // Same name, other uuid: refused.
    let clash = write_xml(
        d.dir.path(),
        "clash",
        &tiny_xml("a").replace(
            "<name>",
            "<uuid>11111111-2222-3333-4444-555555555555</uuid><name>",
        ),
    );
    let err = virsh(&uri, &["define", clash.to_str().unwrap()]);
    assert!(
        err.fails().contains("already exists with uuid"),
        "{}",
        err.stderr
    );
    virsh(&uri, &["autostart", "a"]).ok();
    assert!(virsh(&uri, &["dominfo", "a"])
        .ok()
        .contains("Autostart:      enable"));
    virsh(&uri, &["autostart", "--disable", "a"]).ok();

    // Definitions survive a restart, byte for byte.
    let before = virsh(&uri, &["dumpxml", "a"]).ok().to_owned();
    d.kill9();
    d.restart();
    assert_eq!(virsh(&uri, &["dumpxml", "a"]).ok(), before);
    assert!(virsh(&uri, &["dominfo", "a"])
        .ok()
        .contains("Autostart:      disable"));
}

#[test]
fn transient_domain_via_create() {
    let d = Daemon::start();
    let uri = d.uri();
    let t = write_xml(d.dir.path(), "t", &tiny_xml("t"));
    virsh(&uri, &["create", t.to_str().unwrap()]).ok();
    let info = virsh(&uri, &["dominfo", "t"]);
    assert!(info.ok().contains("Persistent:     no"), "{}", info.stdout);
    let err = virsh(&uri, &["autostart", "t"]);
    assert!(err.fails().contains("transient"), "{}", err.stderr);
    virsh(&uri, &["destroy", "t"]).ok();
    // A transient domain is gone once stopped.
    assert!(virsh(&uri, &["dominfo", "t"])
        .fails()
        .contains("failed to get domain 't'"));
}

#[test]
fn python_lifecycle() {
    let d = Daemon::start();
    let xml = guest_xml(d.dir.path(), "py", 192);
    let script = format!(
        r#"
import os, time, libvirt
c = libvirt.open(os.environ["QEMUD_URI"])
dom = c.defineXML("""{xml}""")
assert dom.name() == "py" and dom.ID() == -1
assert dom.isPersistent() == 1 and dom.isActive() == 0
assert dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, 0], dom.state()
assert [x.name() for x in c.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_INACTIVE)] == ["py"]
assert c.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE) == []
dom.create()
assert dom.isActive() == 1 and dom.ID() > 0
assert dom.state() == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED], dom.state()
assert c.lookupByID(dom.ID()).UUIDString() == dom.UUIDString()
assert c.lookupByUUIDString(dom.UUIDString()).name() == "py"
info = dom.info()
assert info[0] == libvirt.VIR_DOMAIN_RUNNING and info[1] == 192 * 1024 and info[3] == 1, info
assert dom.OSType() == "hvm" and dom.maxMemory() == 192 * 1024
assert dom.vcpusFlags(0) == 1
assert c.listDomainsID() == [dom.ID()] and c.numOfDomains() == 1
assert [x.name() for x in c.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING)] == ["py"]
dom.suspend()
assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
assert [x.name() for x in c.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PAUSED)] == ["py"]
dom.resume()
assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
dom.reset(0)
try:
    dom.create()
    raise SystemExit("double start accepted")
except libvirt.libvirtError as e:
    assert e.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID, e
dom.destroy()
assert dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED], dom.state()
dom.setAutostart(1)
assert dom.autostart() == 1
dom.setAutostart(0)
dom.undefine()
try:
    c.lookupByName("py")
    raise SystemExit("undefined domain still found")
except libvirt.libvirtError as e:
    assert e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN, e
print("ok")
"#
    );
    let r = python(&d.uri(), &script);
    assert_eq!(r.ok().trim(), "ok", "{}", r.stderr);
}

#[test]
fn create_xml_of_a_defined_domain_runs_the_given_definition() {
    let d = Daemon::start();
    let uri = d.uri();
    let uuid = "<uuid>0d9e1c7e-0000-4000-8000-0000000000aa</uuid><name>";
    let base = tiny_xml("both").replace("<name>", uuid);
    let x = write_xml(d.dir.path(), "both", &base);
    virsh(&uri, &["define", x.to_str().unwrap()]).ok();
    let bigger = base.replace(
        "<memory unit='MiB'>32</memory>",
        "<memory unit='MiB'>48</memory>",
    );
    let y = write_xml(d.dir.path(), "both-live", &bigger);
    virsh(&uri, &["create", y.to_str().unwrap()]).ok();
    assert!(virsh(&uri, &["dominfo", "both"])
        .ok()
        .contains("Max memory:     49152 KiB"));
    assert!(virsh(&uri, &["dumpxml", "--inactive", "both"])
        .ok()
        .contains("<memory unit='KiB'>32768</memory>"));
    virsh(&uri, &["destroy", "both"]).ok();
    // Still defined, with its own definition.
    let info = virsh(&uri, &["dominfo", "both"]);
    assert!(
        info.ok().contains("Max memory:     32768 KiB"),
        "{}",
        info.stdout
    );
    assert!(info.stdout.contains("Persistent:     yes"));
}

#[test]
fn current_and_maximum_vcpus() {
    let d = Daemon::start();
    let xml = tiny_xml("cpus").replace("<memory", "<vcpu current='1'>2</vcpu><memory");
    let r = python(
        &d.uri(),
        &format!(
            r#"
import os, libvirt
c = libvirt.open(os.environ["QEMUD_URI"])
d = c.defineXML("""{xml}""")
assert d.vcpusFlags(libvirt.VIR_DOMAIN_VCPU_MAXIMUM) == 2
assert d.vcpusFlags(0) == 1
d.create()
assert d.info()[3] == 1, d.info()
assert d.maxVcpus() == 2
d.destroy()
print("ok")
"#
        ),
    );
    assert_eq!(r.ok().trim(), "ok", "{}", r.stderr);
}

/// Issue 19: a `virsh reboot` the guest ignores must not linger: libvirt
/// forgets it on `shutdown` (and on reset or destroy), so the guest's next
/// power-off stops the domain instead of resetting it.
#[test]
fn ignored_reboot_does_not_turn_shutdown_into_reset() {
    let d = Daemon::start();
    let uri = d.uri();
    let dir = d.dir.path();
    let xml = write_xml(dir, "rb", &guest_xml(dir, "rb", 256));
    virsh(&uri, &["define", xml.to_str().unwrap()]).ok();
    let log = serial_log(dir, "rb");
    let ready_count = || {
        std::fs::read_to_string(&log)
            .map(|t| t.matches("QEMUD-GUEST-READY").count())
            .unwrap_or(0)
    };
    // The guest listens to its power button only from its ready marker
    // on; a press before that is lost, like an OS that ignores it. The
    // press must have been made before the marker appeared, which a
    // slow host may not allow on the first try.
    let mut ignored = false;
    for _ in 0..3 {
        virsh(&uri, &["start", "rb"]).ok();
        virsh(&uri, &["reboot", "rb"]).ok();
        if ready_count() == 0 {
            ignored = true;
            break;
        }
        virsh(&uri, &["destroy", "rb"]).ok();
    }
    assert!(ignored, "the guest was ready before every reboot request");
    wait_guest_ready(dir, "rb", GUEST_BOOT_SECS);
    // The guest booted once and nothing reset it.
    assert_eq!(ready_count(), 1);
    assert_eq!(virsh(&uri, &["domstate", "rb"]).ok().trim(), "running");

    press_until_guest_powers_off(&uri, "shutdown", dir, "rb");
    wait_until(GUEST_BOOT_SECS, "guest power-off", || {
        virsh(&uri, &["domstate", "rb"]).stdout.trim() == "shut off" || ready_count() > 1
    });
    assert_eq!(ready_count(), 1, "the power-off was turned into a reset");
    assert_eq!(
        virsh(&uri, &["domstate", "--reason", "rb"]).ok().trim(),
        "shut off (shutdown)"
    );
}
