//! Issue 2: unmodified virsh and python3-libvirt against a fresh daemon.

use qemud_tests::*;

#[test]
fn virsh_host_commands() {
    let d = Daemon::start();
    let uri = d.uri();

    let version = virsh(&uri, &["version"]);
    let out = version.ok();
    assert!(out.contains("Using API: QEMU 9.0.0"), "{out}");
    assert!(out.contains("Running hypervisor: QEMU "), "{out}");

    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert_eq!(virsh(&uri, &["hostname"]).ok().trim(), host);
    assert_eq!(virsh(&uri, &["uri"]).ok().trim(), uri);

    let nodeinfo = virsh(&uri, &["nodeinfo"]);
    let out = nodeinfo.ok();
    assert!(out.contains("CPU model:           x86_64"), "{out}");
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert!(
        out.contains(&format!("CPU(s):              {cpus}\n")),
        "{out}"
    );
    assert!(out.contains("Memory size:"), "{out}");

    let caps = virsh(&uri, &["capabilities"]);
    let out = caps.ok();
    assert!(out.contains("<arch>x86_64</arch>"), "{out}");
    assert!(out.contains("<os_type>hvm</os_type>"), "{out}");
    assert!(out.contains("<emulator>"), "{out}");
    assert!(out.contains("<domain type='qemu'/>"), "{out}");
    assert_eq!(out.contains("<domain type='kvm'/>"), kvm_usable(), "{out}");

    let list = virsh_full(&uri, &["list", "--all"]);
    let out = list.ok();
    assert!(out.contains(" Id   Name   State"), "{out}");
    assert_eq!(
        out.lines().filter(|l| !l.trim().is_empty()).count(),
        2,
        "{out}"
    );

    let free = virsh(&uri, &["freecell"]);
    assert!(free.ok().contains("KiB"), "{}", free.stdout);
}

#[test]
fn virsh_read_only_connections() {
    let d = Daemon::start();
    // The -r flag asks for a read-only connection on the normal socket...
    virsh(&d.uri(), &["-r", "list", "--all"]).ok();
    // ...and the read-only socket forces one.
    virsh(&d.uri_ro(), &["list", "--all"]).ok();
    virsh(&d.uri_ro(), &["version"]).ok();
    let xml = write_xml(d.dir.path(), "ro", &tiny_xml("ro"));
    let r = virsh(&d.uri_ro(), &["define", xml.to_str().unwrap()]);
    let err = r.fails();
    assert!(
        err.contains("operation forbidden: read only access prevents virDomainDefineXML"),
        "{err}"
    );
    let r = virsh(&d.uri(), &["-r", "define", xml.to_str().unwrap()]);
    assert!(r.fails().contains("read only access"), "{}", r.stderr);
    // Nothing was defined.
    assert!(virsh(&d.uri(), &["list", "--all", "--name"])
        .ok()
        .trim()
        .is_empty());
}

#[test]
fn python_libvirt_host_api() {
    let d = Daemon::start();
    let r = python(
        &d.uri(),
        r#"
import os, socket, libvirt
c = libvirt.open(os.environ["QEMUD_URI"])
assert c.getType() == "QEMU", c.getType()
assert c.getVersion() > 1000000, c.getVersion()
assert c.getLibVersion() == 9000000, c.getLibVersion()
assert c.getHostname() == socket.gethostname(), c.getHostname()
info = c.getInfo()
assert info[0] == "x86_64" and info[2] == os.cpu_count(), info
assert c.listAllDomains() == []
assert c.numOfDomains() == 0 and c.numOfDefinedDomains() == 0
assert c.listDomainsID() == [] and c.listDefinedDomains() == []
assert c.isSecure() == 1
assert c.getFreeMemory() > 0
assert "<capabilities>" in c.getCapabilities()
assert c.getMaxVcpus(None) > 0
ro = libvirt.openReadOnly(os.environ["QEMUD_URI"])
assert ro.listAllDomains() == []
try:
    ro.defineXML("<domain type='qemu'><name>x</name><memory>1024</memory><os><type>hvm</type></os></domain>")
    raise SystemExit("read-only define succeeded")
except libvirt.libvirtError as e:
    assert e.get_error_code() == libvirt.VIR_ERR_OPERATION_DENIED, e.get_error_code()
c.close()
print("ok")
"#,
    );
    assert_eq!(r.ok().trim(), "ok", "{}", r.stderr);
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let mut d = Daemon::start();
    let status = d.terminate();
    assert!(status.success(), "{status}\n{}", d.log());
    assert!(!d.socket().exists(), "socket left behind");
}
