//! Issue 3: many domains started and destroyed at once from several
//! connections end in a consistent state.

use qemud_tests::*;

#[test]
fn twenty_domains_from_four_connections() {
    let d = Daemon::start();
    let n = 20;
    let r = python(
        &d.uri(),
        &format!(
            r#"
import os, threading, libvirt
uri = os.environ["QEMUD_URI"]
xml = """{xml}"""
conns = [libvirt.open(uri) for _ in range(4)]
for i in range({n}):
    conns[0].defineXML(xml.replace("NAME", "c%02d" % i))
errors = []
def work(k, action):
    c = conns[k]
    try:
        for i in range(k, {n}, 4):
            d = c.lookupByName("c%02d" % i)
            getattr(d, action)()
    except Exception as e:
        errors.append(repr(e))
for action in ["create", "destroy", "create"]:
    ts = [threading.Thread(target=work, args=(k, action)) for k in range(4)]
    for t in ts: t.start()
    for t in ts: t.join()
    assert not errors, errors
running = conns[1].listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
assert len(running) == {n}, len(running)
ids = sorted(d.ID() for d in running)
assert len(set(ids)) == {n}, ids
# Concurrent destroy and a racing second destroy of the same domain.
def destroy_all(k):
    c = conns[k]
    for i in range({n}):
        try:
            c.lookupByName("c%02d" % i).destroy()
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                errors.append(repr(e))
ts = [threading.Thread(target=destroy_all, args=(k,)) for k in range(4)]
for t in ts: t.start()
for t in ts: t.join()
assert not errors, errors
for c in conns:
    assert c.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE) == []
    assert len(c.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_INACTIVE)) == {n}
print("ok")
"#,
            xml = tiny_xml("NAME"),
        ),
    );
    assert_eq!(r.ok().trim(), "ok", "{}\n{}", r.stderr, d.log());
    assert!(d.qemu_pids().is_empty());
}
