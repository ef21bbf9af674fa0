//! Issue 14: storage pools and volumes with real qemu-img, driven by virsh,
//! virt-install, python3-libvirt and qemuctl; a guest booting from a
//! `<disk type='volume'>`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use qemud_tests::*;

/// Replaces the run-dependent parts of libvirt XML (timestamps, UUIDs,
/// sizes that depend on the host filesystem) so outputs can be compared
/// with what libvirtd prints.
fn normalise(xml: &str) -> String {
    xml.lines()
        .map(|l| {
            let t = l.trim_start();
            let indent = &l[..l.len() - t.len()];
            for tag in ["atime", "mtime", "ctime", "uuid"] {
                if t.starts_with(&format!("<{tag}>")) {
                    return format!("{indent}<{tag}>X</{tag}>");
                }
            }
            for tag in ["capacity", "allocation", "available"] {
                if t.starts_with(&format!("<{tag} unit='bytes'>"))
                    && l.len() < 60
                    && indent.len() == 2
                    && xml.starts_with("<pool")
                {
                    return format!("{indent}<{tag} unit='bytes'>N</{tag}>");
                }
            }
            l.to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn file_list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn virsh_dir_pool_and_volumes_like_libvirt() {
    let d = Daemon::start();
    let uri = d.uri();
    let dir = d.dir.path();
    let target = dir.join("p1");
    let t = target.to_str().unwrap();

    // Distributions ship a `default` pool; qemud creates one on first run.
    let pools = virsh(&uri, &["pool-list", "--all"]).ok().to_owned();
    assert!(squash(&pools).contains("default active yes"), "{pools}");

    let mut lifecycle = Watcher::spawn(Command::new("virsh").args([
        "-c",
        &uri,
        "pool-event",
        "--event",
        "lifecycle",
        "--loop",
    ]));
    let mut refreshes = Watcher::spawn(Command::new("virsh").args([
        "-c",
        &uri,
        "pool-event",
        "--event",
        "refresh",
        "--loop",
    ]));
    std::thread::sleep(Duration::from_millis(500));

    assert_eq!(
        virsh_full(&uri, &["pool-define-as", "p1", "dir", "--target", t])
            .ok()
            .trim(),
        "Pool p1 defined"
    );
    lifecycle.expect("event 'lifecycle' for storage pool p1: Defined", 10);
    // An inactive pool cannot be used yet.
    let e = virsh(&uri, &["vol-list", "p1"]).fails().to_owned();
    assert!(e.contains("storage pool 'p1' is not active"), "{e}");
    assert_eq!(
        virsh_full(&uri, &["pool-build", "p1"]).ok().trim(),
        "Pool p1 built"
    );
    lifecycle.expect("event 'lifecycle' for storage pool p1: Created", 10);
    assert!(target.is_dir());
    assert_eq!(
        virsh_full(&uri, &["pool-start", "p1"]).ok().trim(),
        "Pool p1 started"
    );
    lifecycle.expect("event 'lifecycle' for storage pool p1: Started", 10);
    assert_eq!(
        virsh_full(&uri, &["pool-autostart", "p1"]).ok().trim(),
        "Pool p1 marked as autostarted"
    );
    let info = virsh(&uri, &["pool-info", "p1"]).ok().to_owned();
    for want in [
        "Name:           p1",
        "State:          running",
        "Persistent:     yes",
        "Autostart:      yes",
        "Capacity:",
        "Available:",
    ] {
        assert!(info.contains(want), "{want} missing in {info}");
    }
    // The same layout libvirtd 9.0 prints for a dir pool.
    let xml = virsh(&uri, &["pool-dumpxml", "p1"]).ok().to_owned();
    assert_eq!(
        normalise(&xml).trim_end(),
        format!(
            "<pool type='dir'>\n  <name>p1</name>\n  <uuid>X</uuid>\n  <capacity unit='bytes'>N</capacity>\n  \
             <allocation unit='bytes'>N</allocation>\n  <available unit='bytes'>N</available>\n  <source>\n  \
             </source>\n  <target>\n    <path>{t}</path>\n    <permissions>\n      <mode>0711</mode>\n      \
             <owner>0</owner>\n      <group>0</group>\n    </permissions>\n  </target>\n</pool>"
        )
    );
    virsh(&uri, &["pool-refresh", "p1"]).ok();
    refreshes.expect("event 'refresh' for storage pool p1", 10);
    let caps = virsh(&uri, &["pool-capabilities"]).ok().to_owned();
    assert!(
        caps.contains("<pool type='dir' supported='yes'>\n    <volOptions>\n      <defaultFormat type='raw'/>"),
        "{caps}"
    );

    // Volumes through qemu-img.
    assert_eq!(
        virsh_full(
            &uri,
            &["vol-create-as", "p1", "v1.qcow2", "1G", "--format", "qcow2"]
        )
        .ok()
        .trim(),
        "Vol v1.qcow2 created"
    );
    virsh(
        &uri,
        &["vol-create-as", "p1", "r1.img", "10M", "--format", "raw"],
    )
    .ok();
    virsh(
        &uri,
        &[
            "vol-create-as",
            "p1",
            "b1.qcow2",
            "2G",
            "--format",
            "qcow2",
            "--backing-vol",
            "v1.qcow2",
            "--backing-vol-format",
            "qcow2",
        ],
    )
    .ok();
    let vx = virsh(&uri, &["vol-dumpxml", "v1.qcow2", "--pool", "p1"])
        .ok()
        .to_owned();
    assert_eq!(
        normalise(&vx).trim_end(),
        format!(
            "<volume type='file'>\n  <name>v1.qcow2</name>\n  <key>{t}/v1.qcow2</key>\n  \
             <capacity unit='bytes'>1073741824</capacity>\n  <allocation unit='bytes'>200704</allocation>\n  \
             <physical unit='bytes'>196624</physical>\n  <target>\n    <path>{t}/v1.qcow2</path>\n    \
             <format type='qcow2'/>\n    <permissions>\n      <mode>0600</mode>\n      <owner>0</owner>\n      \
             <group>0</group>\n    </permissions>\n    <timestamps>\n      <atime>X</atime>\n      \
             <mtime>X</mtime>\n      <ctime>X</ctime>\n      <btime>0</btime>\n    </timestamps>\n  \
             </target>\n</volume>"
        )
    );
    let bx = virsh(&uri, &["vol-dumpxml", "b1.qcow2", "--pool", "p1"])
        .ok()
        .to_owned();
    assert!(
        bx.contains(&format!(
            "  <backingStore>\n    <path>{t}/v1.qcow2</path>\n    <format type='qcow2'/>"
        )),
        "{bx}"
    );
    let ri = virsh(&uri, &["vol-info", "r1.img", "--pool", "p1", "--bytes"])
        .ok()
        .to_owned();
    assert_eq!(
        squash(&ri),
        squash("Name: r1.img\nType: file\nCapacity: 10485760 bytes\nAllocation: 10485760 bytes")
    );
    let vi = virsh(&uri, &["vol-info", "v1.qcow2", "--pool", "p1"])
        .ok()
        .to_owned();
    assert!(squash(&vi).contains("Capacity: 1.00 GiB"), "{vi}");
    // Lookups by path and key.
    let path = format!("{t}/r1.img");
    assert_eq!(virsh_full(&uri, &["vol-pool", &path]).ok().trim(), "p1");
    assert_eq!(virsh_full(&uri, &["vol-name", &path]).ok().trim(), "r1.img");
    assert_eq!(
        virsh_full(&uri, &["vol-key", "r1.img", "--pool", "p1"])
            .ok()
            .trim(),
        path
    );

    // qcow2 options from the XML; libvirt shows the header's cluster size
    // and features once a refresh read them.
    let lz = write_xml(
        dir,
        "lz",
        "<volume><name>lz.qcow2</name><capacity unit='M'>16</capacity><target>\
         <format type='qcow2'/><compat>1.1</compat><features><lazy_refcounts/></features>\
         </target></volume>",
    );
    virsh(&uri, &["vol-create", "p1", lz.to_str().unwrap()]).ok();
    let lx = virsh(&uri, &["vol-dumpxml", "lz.qcow2", "--pool", "p1"])
        .ok()
        .to_owned();
    assert!(
        lx.contains("    <compat>1.1</compat>\n    <features>\n      <lazy_refcounts/>\n    </features>\n  </target>"),
        "{lx}"
    );
    virsh(&uri, &["pool-refresh", "p1"]).ok();
    let lx = virsh(&uri, &["vol-dumpxml", "lz.qcow2", "--pool", "p1"])
        .ok()
        .to_owned();
    assert!(lx.contains("    <compat>1.1</compat>\n    <clusterSize unit='B'>65536</clusterSize>\n    <features>\n      <lazy_refcounts/>"), "{lx}");
    let vx = virsh(&uri, &["vol-dumpxml", "v1.qcow2", "--pool", "p1"])
        .ok()
        .to_owned();
    assert!(
        vx.contains(
            "    </timestamps>\n    <clusterSize unit='B'>65536</clusterSize>\n  </target>"
        ),
        "{vx}"
    );
    virsh(&uri, &["vol-delete", "lz.qcow2", "--pool", "p1"]).ok();

    // Clone within the pool and create-from with another format.
    assert_eq!(
        virsh_full(&uri, &["vol-clone", "v1.qcow2", "c1.qcow2", "--pool", "p1"])
            .ok()
            .trim(),
        "Vol c1.qcow2 cloned from v1.qcow2"
    );
    let from = write_xml(
        dir,
        "from",
        "<volume><name>r2.qcow2</name><capacity unit='M'>20</capacity>\
         <target><format type='qcow2'/></target></volume>",
    );
    virsh(
        &uri,
        &[
            "vol-create-from",
            "p1",
            from.to_str().unwrap(),
            "r1.img",
            "--inputpool",
            "p1",
        ],
    )
    .ok();
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", &format!("{t}/r2.qcow2")])
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 20 << 20);

    // Resize: grow, refuse a shrink without the flag, shrink with it.
    assert_eq!(
        virsh_full(&uri, &["vol-resize", "r1.img", "20M", "--pool", "p1"])
            .ok()
            .trim(),
        "Size of volume 'r1.img' successfully changed to 20M"
    );
    let e = virsh(&uri, &["vol-resize", "r1.img", "5M", "--pool", "p1"])
        .fails()
        .to_owned();
    assert!(
        e.contains("can't shrink capacity below existing allocation"),
        "{e}"
    );
    virsh(&uri, &["vol-resize", "v1.qcow2", "2G", "--pool", "p1"]).ok();
    virsh(
        &uri,
        &["vol-resize", "v1.qcow2", "1G", "--pool", "p1", "--shrink"],
    )
    .ok();
    let vi = virsh(&uri, &["vol-info", "v1.qcow2", "--pool", "p1", "--bytes"])
        .ok()
        .to_owned();
    assert!(squash(&vi).contains("Capacity: 1073741824 bytes"), "{vi}");
    let e = virsh(
        &uri,
        &["vol-resize", "r1.img", "400T", "--pool", "p1", "--allocate"],
    )
    .fails()
    .to_owned();
    assert!(e.contains("Not enough space left in storage pool"), "{e}");

    // Wipe with zeros.
    std::fs::write(target.join("junk"), vec![0xAAu8; 65536]).unwrap();
    virsh(&uri, &["pool-refresh", "p1"]).ok();
    assert_eq!(
        virsh_full(&uri, &["vol-wipe", "junk", "--pool", "p1"])
            .ok()
            .trim(),
        "Vol junk wiped"
    );
    assert!(std::fs::read(target.join("junk"))
        .unwrap()
        .iter()
        .all(|b| *b == 0));

    // Bad input: libvirt's errors, nothing on disk changed.
    let before = file_list(&target);
    let e = virsh(&uri, &["vol-create-as", "p1", "../evil", "1M"])
        .fails()
        .to_owned();
    assert!(
        e.contains("volume name '../evil' cannot contain '/'"),
        "{e}"
    );
    let e = virsh(&uri, &["vol-create-as", "p1", "v1.qcow2", "1M"])
        .fails()
        .to_owned();
    assert!(
        e.contains("storage volume 'v1.qcow2' exists already"),
        "{e}"
    );
    let e = virsh(
        &uri,
        &[
            "vol-create-as",
            "p1",
            "huge",
            "100T",
            "--allocation",
            "100T",
        ],
    )
    .fails()
    .to_owned();
    assert!(e.contains(&format!("'{t}/huge'")), "{e}");
    for (args, want) in [
        (
            &["vol-create-as", "p1", "pr.img", "1M", "--prealloc-metadata"][..],
            "unsupported configuration: metadata preallocation is not supported for raw volumes",
        ),
        (
            &[
                "vol-create-as",
                "p1",
                "rb.img",
                "1M",
                "--backing-vol",
                "v1.qcow2",
            ][..],
            "backing storage not supported for raw volumes",
        ),
        (
            &[
                "vol-create-as",
                "p1",
                "pb.qcow2",
                "1M",
                "--format",
                "qcow2",
                "--prealloc-metadata",
                "--backing-vol",
                "v1.qcow2",
                "--backing-vol-format",
                "qcow2",
            ][..],
            "metadata preallocation conflicts with backing store",
        ),
    ] {
        let e = virsh(&uri, args).fails().to_owned();
        assert!(e.contains(want), "{e}");
    }
    // A backing chain that loops.
    let a = target.join("loop-a.qcow2");
    let b = target.join("loop-b.qcow2");
    for (img, back) in [(&a, &b), (&b, &a)] {
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-u", "-b"])
            .arg(back)
            .args(["-F", "qcow2"])
            .arg(img)
            .arg("1M")
            .status()
            .unwrap();
        assert!(st.success());
    }
    // A qcow2 whose header is cut short.
    let mut corrupt = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    corrupt.resize(512, 0xff);
    std::fs::write(target.join("corrupt.qcow2"), corrupt).unwrap();
    virsh(&uri, &["pool-refresh", "p1"]).ok();
    let before_bad = file_list(&target);
    let e = virsh(
        &uri,
        &[
            "vol-create-as",
            "p1",
            "onloop.qcow2",
            "1M",
            "--format",
            "qcow2",
            "--backing-vol",
            a.to_str().unwrap(),
            "--backing-vol-format",
            "qcow2",
        ],
    )
    .fails()
    .to_owned();
    assert!(e.contains("is self-referential"), "{e}");
    let e = virsh(
        &uri,
        &["vol-clone", "corrupt.qcow2", "fromcorrupt", "--pool", "p1"],
    )
    .fails()
    .to_owned();
    assert!(e.contains("qemu-img"), "{e}");
    assert_eq!(
        file_list(&target),
        before_bad,
        "a failed create left files behind"
    );
    assert!(before.iter().all(|f| file_list(&target).contains(f)));
    let e = virsh(&uri, &["pool-define-as", "p3", "dir", "--target", t])
        .fails()
        .to_owned();
    assert!(e.contains("Storage source conflict with pool: 'p1'"), "{e}");

    // Teardown in libvirt's order, with its refusals.
    let e = virsh(&uri, &["pool-undefine", "p1"]).fails().to_owned();
    assert!(e.contains("storage pool 'p1' is still active"), "{e}");
    for v in virsh(&uri, &["vol-list", "p1"]).ok().lines() {
        let name = v.split_whitespace().next().unwrap();
        assert_eq!(
            virsh_full(&uri, &["vol-delete", name, "--pool", "p1"])
                .ok()
                .trim(),
            format!("Vol {name} deleted")
        );
    }
    assert!(file_list(&target).is_empty(), "{:?}", file_list(&target));
    assert_eq!(
        virsh_full(&uri, &["pool-destroy", "p1"]).ok().trim(),
        "Pool p1 destroyed"
    );
    lifecycle.expect("event 'lifecycle' for storage pool p1: Stopped", 10);
    assert_eq!(
        virsh_full(&uri, &["pool-delete", "p1"]).ok().trim(),
        "Pool p1 deleted"
    );
    lifecycle.expect("event 'lifecycle' for storage pool p1: Deleted", 10);
    assert!(!target.exists());
    assert_eq!(
        virsh_full(&uri, &["pool-undefine", "p1"]).ok().trim(),
        "Pool p1 has been undefined"
    );
    lifecycle.expect("event 'lifecycle' for storage pool p1: Undefined", 10);
    let e = virsh(&uri, &["pool-info", "p1"]).fails().to_owned();
    assert!(e.contains("no storage pool with matching name 'p1'"), "{e}");
}

#[test]
fn pools_survive_restart_and_partial_creates_vanish() {
    let mut d = Daemon::start();
    let uri = d.uri();
    let target = d.dir.path().join("keep");
    let t = target.to_str().unwrap();
    virsh(&uri, &["pool-define-as", "keep", "dir", "--target", t]).ok();
    virsh(&uri, &["pool-build", "keep"]).ok();
    virsh(&uri, &["pool-start", "keep"]).ok();
    virsh(&uri, &["pool-autostart", "keep"]).ok();
    virsh(
        &uri,
        &[
            "vol-create-as",
            "keep",
            "a.qcow2",
            "16M",
            "--format",
            "qcow2",
        ],
    )
    .ok();
    // What a create interrupted by a crash leaves: refresh never shows it
    // and the next start removes it.
    std::fs::write(target.join(".qemud-partial-b.qcow2"), b"half").unwrap();
    virsh(&uri, &["pool-refresh", "keep"]).ok();
    assert_eq!(virsh(&uri, &["vol-list", "keep"]).ok().lines().count(), 1);
    // A transient pool lives as long as it is active, across restarts too.
    let tr = d.dir.path().join("tr");
    virsh(
        &uri,
        &[
            "pool-create-as",
            "tr",
            "dir",
            "--target",
            tr.to_str().unwrap(),
            "--build",
        ],
    )
    .ok();
    d.kill9();
    d.restart();
    let uri = d.uri();
    wait_until(20, "pools keep and tr resumed", || {
        let l = squash(virsh(&uri, &["pool-list"]).ok());
        l.contains("keep active yes") && l.contains("tr active no")
    });
    let transient = virsh(&uri, &["pool-list", "--transient"]).ok().to_owned();
    assert!(squash(&transient).contains("tr active no"), "{transient}");
    virsh(&uri, &["pool-destroy", "tr"]).ok();
    assert!(virsh(&uri, &["pool-info", "tr"])
        .fails()
        .contains("no storage pool with matching name 'tr'"));
    let vols = virsh(&uri, &["vol-list", "keep"]).ok().to_owned();
    assert!(
        vols.contains("a.qcow2") && vols.lines().count() == 1,
        "{vols}"
    );
    assert!(!target.join(".qemud-partial-b.qcow2").exists());

    // qemuctl drives the same driver, with --json.
    let q = qemuctl(&uri, &["--json", "vol-create-as", "keep", "q.img", "1M"]);
    let v: serde_json::Value = serde_json::from_str(q.ok()).unwrap();
    assert_eq!(v["name"], "q.img");
    let q = qemuctl(&uri, &["--json", "pool-info", "keep"]);
    let v: serde_json::Value = serde_json::from_str(q.ok()).unwrap();
    assert_eq!(v["state"], "running");
    assert!(v["capacity"].as_u64().unwrap() > 0);
    let q = qemuctl(&uri, &["--json", "vol-info", "q.img", "--pool", "keep"]);
    let v: serde_json::Value = serde_json::from_str(q.ok()).unwrap();
    assert_eq!(v["capacity"], 1 << 20);
    qemuctl(&uri, &["vol-resize", "q.img", "2M", "--pool", "keep"]).ok();
    assert!(qemuctl(&uri, &["vol-dumpxml", "q.img", "--pool", "keep"])
        .ok()
        .contains("<capacity unit='bytes'>2097152</capacity>"));
    qemuctl(&uri, &["vol-delete", "q.img", "--pool", "keep"]).ok();
    assert!(qemuctl(&uri, &["vol-list", "keep"])
        .ok()
        .contains("a.qcow2"));
    let q = qemuctl(&uri, &["--json", "pool-list", "--all"]);
    let v: serde_json::Value = serde_json::from_str(q.ok()).unwrap();
    assert!(v.as_array().unwrap().iter().any(|p| p["name"] == "keep"));
}

#[test]
fn guest_boots_from_a_volume_and_virt_install_creates_one() {
    let d = Daemon::start();
    let uri = d.uri();
    let dir = d.dir.path();
    let t = dir.join("vm");
    virsh(
        &uri,
        &[
            "pool-define-as",
            "vm",
            "dir",
            "--target",
            t.to_str().unwrap(),
        ],
    )
    .ok();
    virsh(&uri, &["pool-build", "vm"]).ok();
    virsh(&uri, &["pool-start", "vm"]).ok();
    virsh(
        &uri,
        &[
            "vol-create-as",
            "vm",
            "data.qcow2",
            "64M",
            "--format",
            "qcow2",
        ],
    )
    .ok();

    let base = guest_xml(dir, "volguest", 256);
    let xml = base.replace(
        "<devices>",
        "<devices>\n    <disk type='volume' device='disk'>\n      <source pool='vm' volume='data.qcow2'/>\n      \
         <target dev='vdb' bus='virtio'/>\n    </disk>",
    );
    let x = write_xml(dir, "volguest", &xml);
    virsh(&uri, &["define", x.to_str().unwrap()]).ok();
    let dumped = virsh(&uri, &["dumpxml", "volguest"]).ok().to_owned();
    assert!(
        dumped.contains("<source pool='vm' volume='data.qcow2'/>"),
        "{dumped}"
    );
    virsh(&uri, &["start", "volguest"]).ok();
    wait_guest_ready(dir, "volguest", 120);
    // QEMU opened the volume's file.
    let pid = std::fs::read_dir(d.run_dir())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".pid"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap());
    if let Some(pid) = pid {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(
            cmdline.contains("data.qcow2") && cmdline.contains("format=qcow2"),
            "{cmdline}"
        );
    }
    // A volume in use by nothing but the guest can still not vanish from
    // under a create: a second domain start is refused once the pool stops.
    virsh(&uri, &["destroy", "volguest"]).ok();
    virsh(&uri, &["pool-destroy", "vm"]).ok();
    let e = virsh(&uri, &["start", "volguest"]).fails().to_owned();
    assert!(
        e.contains("storage pool 'vm' containing volume 'data.qcow2' is not active"),
        "{e}"
    );
    virsh(&uri, &["pool-start", "vm"]).ok();
    virsh(&uri, &["vol-delete", "data.qcow2", "--pool", "vm"]).ok();
    let e = virsh(&uri, &["start", "volguest"]).fails().to_owned();
    assert!(
        e.contains("no storage vol with matching name 'data.qcow2'"),
        "{e}"
    );
    virsh(&uri, &["undefine", "volguest"]).ok();

    // virt-install allocates the disk in the pool, then boots from it.
    let g = guest();
    let out = Command::new("timeout")
        .arg("180")
        .arg("virt-install")
        .args([
            "--connect",
            &uri,
            "--name",
            "vi1",
            "--memory",
            "256",
            "--vcpus",
            "1",
        ])
        .args(["--machine", "pc", "--virt-type", "qemu"])
        .args(["--disk", "pool=vm,size=1,format=qcow2,bus=virtio"])
        .arg("--boot")
        .arg(format!(
            "kernel={},initrd={},kernel_args=console=ttyS0",
            g.kernel.display(),
            g.initrd.display()
        ))
        .args(["--osinfo", "detect=on,require=off", "--network", "none"])
        .args(["--graphics", "none", "--noautoconsole", "--import"])
        // The qcow2 is sparse: do not depend on the host's free space.
        .args(["--check", "disk_size=off"])
        .output()
        .expect("run virt-install");
    assert!(
        out.status.success(),
        "virt-install failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let vols = virsh(&uri, &["vol-list", "vm"]).ok().to_owned();
    assert!(vols.contains("vi1.qcow2"), "{vols}");
    let vi = virsh(&uri, &["vol-info", "vi1.qcow2", "--pool", "vm"])
        .ok()
        .to_owned();
    assert!(squash(&vi).contains("Capacity: 1.00 GiB"), "{vi}");
    assert_eq!(
        virsh_full(&uri, &["domstate", "vi1"]).ok().trim(),
        "running"
    );
    virsh(&uri, &["destroy", "vi1"]).ok();
    virsh(&uri, &["undefine", "vi1"]).ok();
}

#[test]
fn python_libvirt_storage_and_pool_events() {
    let d = Daemon::start();
    let target = d.dir.path().join("py");
    let script = format!(
        r#"
import libvirt, os, threading, time
libvirt.virEventRegisterDefaultImpl()
def loop():
    while True:
        libvirt.virEventRunDefaultImpl()
threading.Thread(target=loop, daemon=True).start()
conn = libvirt.open(os.environ["QEMUD_URI"])
seen = []
def lifecycle(conn, pool, event, detail, opaque):
    seen.append(("lifecycle", pool.name(), event))
def refresh(conn, pool, opaque):
    seen.append(("refresh", pool.name()))
conn.storagePoolEventRegisterAny(None, libvirt.VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE, lifecycle, None)
conn.storagePoolEventRegisterAny(None, libvirt.VIR_STORAGE_POOL_EVENT_ID_REFRESH, refresh, None)
xml = "<pool type='dir'><name>py</name><target><path>{target}</path></target></pool>"
pool = conn.storagePoolDefineXML(xml, 0)
pool.build(0)
pool.create(0)
pool.setAutostart(1)
assert pool.isActive() == 1 and pool.isPersistent() == 1 and pool.autostart() == 1
state, cap, alloc, avail = pool.info()
assert state == libvirt.VIR_STORAGE_POOL_RUNNING and cap > 0 and avail > 0, pool.info()
vol = pool.createXML("<volume><name>disk.qcow2</name><capacity unit='M'>8</capacity><target><format type='qcow2'/></target></volume>", 0)
assert vol.info()[1] == 8 << 20, vol.info()
assert vol.path() == "{target}/disk.qcow2"
assert conn.storageVolLookupByPath(vol.path()).name() == "disk.qcow2"
assert conn.storageVolLookupByKey(vol.key()).name() == "disk.qcow2"
assert vol.storagePoolLookupByVolume().name() == "py"
assert [v.name() for v in pool.listAllVolumes()] == ["disk.qcow2"]
assert pool.listVolumes() == ["disk.qcow2"] and pool.numOfVolumes() == 1
assert "py" in [p.name() for p in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)]
assert "py" in conn.listStoragePools() and conn.numOfStoragePools() >= 1
assert conn.storagePoolLookupByUUIDString(pool.UUIDString()).name() == "py"
clone = pool.createXMLFrom("<volume><name>clone.img</name><target><format type='raw'/></target></volume>", vol, 0)
assert clone.info()[1] == 8 << 20
clone.resize(16 << 20, 0)
assert clone.info()[1] == 16 << 20
clone.wipePattern(libvirt.VIR_STORAGE_VOL_WIPE_ALG_ZERO, 0)
try:
    clone.wipePattern(libvirt.VIR_STORAGE_VOL_WIPE_ALG_TRIM, 0)
    raise SystemExit("trim accepted")
except libvirt.libvirtError as e:
    assert e.get_error_code() == libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED, e
try:
    pool.createXML("<volume><name>disk.qcow2</name><capacity>1</capacity></volume>", 0)
    raise SystemExit("duplicate accepted")
except libvirt.libvirtError as e:
    assert e.get_error_code() == libvirt.VIR_ERR_STORAGE_VOL_EXIST, e
# Across pools and formats, into a transient pool.
other = conn.storagePoolCreateXML("<pool type='dir'><name>py2</name><target><path>{target}2</path></target></pool>", libvirt.VIR_STORAGE_POOL_CREATE_WITH_BUILD)
assert other.isPersistent() == 0 and other.isActive() == 1
copy = other.createXMLFrom("<volume><name>copy.qcow2</name><target><format type='qcow2'/></target></volume>", clone, 0)
assert copy.info()[1] == 16 << 20 and "<format type='qcow2'/>" in copy.XMLDesc(0)
try:
    other.undefine()
    raise SystemExit("undefine of an active transient pool accepted")
except libvirt.libvirtError as e:
    assert "still active" in str(e), e
copy.delete(0)
other.destroy()
try:
    conn.storagePoolLookupByName("py2")
    raise SystemExit("transient pool kept after destroy")
except libvirt.libvirtError as e:
    assert e.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL, e
pool.refresh(0)
clone.delete(0)
vol.delete(0)
pool.destroy()
pool.delete(0)
pool.undefine()
try:
    conn.storagePoolLookupByName("py")
    raise SystemExit("undefined pool found")
except libvirt.libvirtError as e:
    assert e.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL, e
deadline = time.time() + 10
want = [("lifecycle", "py", 0), ("lifecycle", "py", 4), ("lifecycle", "py", 2), ("refresh", "py"),
        ("lifecycle", "py", 3), ("lifecycle", "py", 5), ("lifecycle", "py", 1)]
mine = lambda: [e for e in seen if e[1] == "py"]
while time.time() < deadline and len(mine()) < len(want):
    time.sleep(0.1)
assert mine() == want, seen
assert ("lifecycle", "py2", 2) in seen and ("lifecycle", "py2", 3) in seen, seen
print("ok")
"#,
        target = target.display()
    );
    let out = python(&d.uri(), &script);
    assert_eq!(out.ok().trim(), "ok", "{}", out.stderr);
}

/// Detaches the loop device when the test ends, passed or not.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn fs_pool_mounts_an_ext4_image_on_a_loop_device() {
    let d = Daemon::start();
    let uri = d.uri();
    let dir = d.dir.path();
    let image = dir.join("fs.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mkfs = Command::new("mkfs.ext4")
        .arg("-q")
        .arg("-F")
        .arg(&image)
        .status();
    if !mkfs.map(|s| s.success()).unwrap_or(false) {
        println!("SKIPPED: mkfs.ext4 is not available");
        return;
    }
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&image)
        .output();
    let dev = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        Ok(o) => {
            println!(
                "SKIPPED: loop devices are unavailable here: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return;
        }
        Err(e) => {
            println!("SKIPPED: losetup cannot run: {e}");
            return;
        }
    };
    let _loop = Loop(dev.clone());
    let mnt = dir.join("mnt");
    let m = mnt.to_str().unwrap();
    virsh(
        &uri,
        &[
            "pool-define-as",
            "fsp",
            "fs",
            "--source-dev",
            &dev,
            "--target",
            m,
        ],
    )
    .ok();
    virsh(&uri, &["pool-build", "fsp"]).ok();
    virsh(&uri, &["pool-start", "fsp"]).ok();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(mounts.lines().any(|l| l.contains(m)), "{m} not mounted");
    let info = virsh(&uri, &["pool-info", "fsp", "--bytes"])
        .ok()
        .to_owned();
    // A 64 MiB filesystem, not the host's.
    let cap: u64 = info
        .lines()
        .find(|l| l.starts_with("Capacity:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(cap < 64 << 20, "{info}");
    let xml = virsh(&uri, &["pool-dumpxml", "fsp"]).ok().to_owned();
    assert!(
        xml.contains(&format!(
            "  <source>\n    <device path='{dev}'/>\n    <format type='auto'/>\n  </source>"
        )),
        "{xml}"
    );
    virsh(
        &uri,
        &["vol-create-as", "fsp", "a.qcow2", "8M", "--format", "qcow2"],
    )
    .ok();
    assert!(mnt.join("a.qcow2").exists());
    virsh(&uri, &["vol-delete", "a.qcow2", "--pool", "fsp"]).ok();
    virsh(&uri, &["pool-destroy", "fsp"]).ok();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.lines().any(|l| l.contains(m)), "{m} still mounted");
    virsh(&uri, &["pool-undefine", "fsp"]).ok();
}

#[test]
fn vol_upload_and_download_round_trip_200_mb() {
    let d = Daemon::start();
    let uri = d.uri();
    let dir = d.dir.path();
    let src = dir.join("up.bin");
    // Incompressible, position-dependent content: any misplaced chunk shows.
    let mut data = Vec::with_capacity(200 << 20);
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    while data.len() < 200 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(&src, &data).unwrap();
    virsh(
        &uri,
        &[
            "vol-create-as",
            "default",
            "up.img",
            "200M",
            "--format",
            "raw",
        ],
    )
    .ok();
    let up = virsh(
        &uri,
        &[
            "vol-upload",
            "up.img",
            src.to_str().unwrap(),
            "--pool",
            "default",
        ],
    );
    if !up.status.success() && up.stderr.contains("not supported by the connection driver") {
        println!(
            "SKIPPED: volume transfers need the stream engine: {}",
            up.stderr.trim()
        );
        return;
    }
    up.ok();
    // Keep the disk footprint small: the source is no longer needed.
    std::fs::remove_file(&src).unwrap();
    let down = dir.join("down.bin");
    virsh(
        &uri,
        &[
            "vol-download",
            "up.img",
            down.to_str().unwrap(),
            "--pool",
            "default",
        ],
    )
    .ok();
    assert!(
        std::fs::read(&down).unwrap() == data,
        "downloaded bytes differ"
    );
    // A range: offset and length.
    let part = dir.join("part.bin");
    virsh(
        &uri,
        &[
            "vol-download",
            "up.img",
            part.to_str().unwrap(),
            "--pool",
            "default",
            "--offset",
            "1048576",
            "--length",
            "4096",
        ],
    )
    .ok();
    assert!(std::fs::read(&part).unwrap() == data[1 << 20..(1 << 20) + 4096]);
    let e = virsh(
        &uri,
        &[
            "vol-upload",
            "up.img",
            part.to_str().unwrap(),
            "--pool",
            "default",
            "--sparse",
        ],
    )
    .fails()
    .to_owned();
    assert!(
        e.contains("unsupported flags (0x1) in function virStorageVolUpload"),
        "{e}"
    );
    virsh(&uri, &["vol-delete", "up.img", "--pool", "default"]).ok();
}

#[test]
fn a_volume_in_a_long_operation_cannot_be_deleted_and_others_carry_on() {
    use std::os::unix::fs::MetadataExt;
    let d = Daemon::start();
    let uri = d.uri();
    // Fully allocated: a wipe overwrites every allocated byte.
    virsh(&uri, &["vol-create-as", "default", "slow.img", "256M"]).ok();
    let path = d.state_dir().join("images").join("slow.img");
    let mtime = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| (m.mtime(), m.mtime_nsec()))
            .unwrap_or_default()
    };
    let before = mtime(&path);
    let mut wipe = Command::new("virsh")
        .args([
            "-c",
            &uri,
            "vol-wipe",
            "slow.img",
            "--pool",
            "default",
            "--algorithm",
            "random",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The wipe is under way once the file is being written.
    wait_until(30, "the wipe to start writing", || mtime(&path) != before);
    let e = virsh(&uri, &["vol-delete", "slow.img", "--pool", "default"])
        .fails()
        .to_owned();
    assert!(e.contains("volume 'slow.img' is still in use."), "{e}");
    // Other work is not held up by the wipe.
    let t = std::time::Instant::now();
    virsh(
        &uri,
        &[
            "vol-create-as",
            "default",
            "quick.qcow2",
            "1M",
            "--format",
            "qcow2",
        ],
    )
    .ok();
    virsh(&uri, &["pool-list", "--all"]).ok();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(wipe.wait().unwrap().success());
    virsh(&uri, &["vol-delete", "slow.img", "--pool", "default"]).ok();

    // A volume being created: listed, but neither deletable nor usable by
    // a domain until its data is in place.
    let images = d.state_dir().join("images");
    let src = images.join("src.img");
    let mut f = std::fs::File::create(&src).unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..256 {
        for c in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        std::io::Write::write_all(&mut f, &block).unwrap();
    }
    drop(f);
    virsh(&uri, &["pool-refresh", "default"]).ok();
    let dom = tiny_xml("usesbusy").replace(
        "<devices>",
        "<devices><disk type='volume' device='disk'><source pool='default' volume='busy.qcow2'/>\
         <target dev='vda' bus='virtio'/></disk>",
    );
    let x = write_xml(d.dir.path(), "usesbusy", &dom);
    virsh(&uri, &["define", x.to_str().unwrap()]).ok();
    let from = write_xml(
        d.dir.path(),
        "busy",
        "<volume><name>busy.qcow2</name><target><format type='qcow2'/></target></volume>",
    );
    let mut clone = Command::new("virsh")
        .args([
            "-c",
            &uri,
            "vol-create-from",
            "default",
            from.to_str().unwrap(),
            "src.img",
        ])
        .args(["--inputpool", "default"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(30, "the clone to start", || {
        images.join(".qemud-partial-busy.qcow2").exists()
    });
    // Hold the clone where it is: stop the qemu-img writing this test's
    // partial file (its path is unique to this test), so the checks below
    // cannot race its end; it continues afterwards.
    let partial = images.join(".qemud-partial-busy.qcow2");
    let mut qemu_img = None;
    wait_until(30, "the clone's qemu-img", || {
        qemu_img = process_with_arg(partial.to_str().unwrap());
        qemu_img.is_some()
    });
    let qemu_img = nix::unistd::Pid::from_raw(qemu_img.unwrap());
    nix::sys::signal::kill(qemu_img, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let e = virsh(&uri, &["vol-delete", "busy.qcow2", "--pool", "default"])
        .fails()
        .to_owned();
    let e2 = virsh(&uri, &["start", "usesbusy"]).fails().to_owned();
    let e3 = virsh(&uri, &["vol-delete", "src.img", "--pool", "default"])
        .fails()
        .to_owned();
    nix::sys::signal::kill(qemu_img, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(clone.wait().unwrap().success());
    assert!(
        e.contains("volume 'busy.qcow2' is still being allocated."),
        "{e}"
    );
    assert!(
        e2.contains("volume 'busy.qcow2' is still being allocated."),
        "{e2}"
    );
    assert!(e3.contains("volume 'src.img' is still in use."), "{e3}");
    assert!(!images.join(".qemud-partial-busy.qcow2").exists());
    virsh(&uri, &["undefine", "usesbusy"]).ok();
    for v in ["quick.qcow2", "busy.qcow2", "src.img"] {
        virsh(&uri, &["vol-delete", v, "--pool", "default"]).ok();
    }
}

/// The pid of a process whose command line has `arg` as one argument.
fn process_with_arg(arg: &str) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes()) {
            return Some(pid);
        }
    }
    None
}
