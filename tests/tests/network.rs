//! Virtual networks end to end. Every scenario runs the daemon inside a
//! network namespace of its own (`unshare --net`), so bridges, taps,
//! nftables rules and dnsmasq never touch the host's network; the daemon's
//! UNIX socket is still reachable from here, and `nsenter` looks inside.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qemud_tests::*;

/// A daemon in a network namespace of its own. A holder process keeps the
/// namespace, so the daemon can be killed and started again inside it.
struct NsDaemon {
    dir: tempfile::TempDir,
    holder: Child,
    child: Option<Child>,
    env: Vec<(&'static str, String)>,
}

impl NsDaemon {
    fn start() -> NsDaemon {
        Self::start_with_env(Vec::new())
    }

    fn start_with_env(env: Vec<(&'static str, String)>) -> NsDaemon {
        let dir = tempfile::Builder::new()
            .prefix("qdn")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let holder = Command::new("unshare")
            .args(["--net", "--", "sleep", "100000"])
            .spawn()
            .expect("spawn unshare");
        let mut d = NsDaemon {
            dir,
            holder,
            child: None,
            env,
        };
        let own = std::fs::read_link("/proc/self/ns/net").ok();
        wait_until(10, "namespace created", || {
            std::fs::read_link(format!("/proc/{}/ns/net", d.holder.id())).ok() != own
        });
        d.spawn();
        d
    }

    /// Starts the daemon inside the namespace; nsenter execs it, so the
    /// child's pid is the daemon's.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("qemud.log"))
            .expect("log");
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.holder.id()))
            .arg("--")
            .arg(binary("qemud"))
            .arg("--run-dir")
            .arg(self.dir.path().join("run"))
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .env("RUST_LOG", "info,qemud_actors=debug")
            .envs(self.env.iter().map(|(k, v)| (*k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nsenter qemud");
        self.child = Some(child);
        let sock = self.socket();
        let until = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            if let Some(s) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("qemud exited early ({s}):\n{}", self.log());
            }
            assert!(
                Instant::now() < until,
                "qemud did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn pid(&self) -> u32 {
        self.holder.id()
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run").join("libvirt-sock")
    }

    fn uri(&self) -> String {
        format!("qemu+unix:///system?socket={}", self.socket().display())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("qemud.log")).unwrap_or_default()
    }

    /// Runs a command inside the daemon's network namespace; its stdout.
    fn ns(&self, args: &[&str]) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.pid()))
            .arg("--")
            .args(args)
            .output()
            .expect("nsenter");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn has_link(&self, name: &str) -> bool {
        self.ns(&["ip", "-o", "link", "show"]).lines().any(|l| {
            l.split(": ")
                .nth(1)
                .map(|n| n.split('@').next() == Some(name))
                == Some(true)
        })
    }

    fn nft(&self) -> String {
        self.ns(&["nft", "list", "ruleset"])
    }

    /// The pid of the dnsmasq serving network `name`, if one runs.
    fn dnsmasq_pid(&self, name: &str) -> Option<i32> {
        let conf = self
            .dir
            .path()
            .join("run/networks")
            .join(format!("{name}.conf"));
        let out = Command::new("pgrep")
            .arg("-f")
            .arg(format!("dnsmasq --conf-file={}", conf.display()))
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
    }

    /// Every dnsmasq serving one of this daemon's networks.
    fn dnsmasq_pids(&self) -> Vec<i32> {
        let conf = self.dir.path().join("run/networks");
        Command::new("pgrep")
            .arg("-f")
            .arg(format!("dnsmasq --conf-file={}/", conf.display()))
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn terminate(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let until = Instant::now() + Duration::from_secs(40);
        while c.try_wait().ok().flatten().is_none() {
            assert!(Instant::now() < until, "qemud ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NsDaemon {
    fn drop(&mut self) {
        // QEMUs of this test only, by the pids the daemon recorded.
        if let Ok(entries) = std::fs::read_dir(self.dir.path().join("run/pid")) {
            for e in entries.flatten() {
                if let Some(pid) = std::fs::read_to_string(e.path())
                    .ok()
                    .and_then(|t| t.trim().parse::<i32>().ok())
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        self.kill9();
        // A killed daemon's dnsmasq outlives it.
        for pid in self.dnsmasq_pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

const NAT_NET: &str = "<network>
  <name>natnet</name>
  <forward mode='nat'/>
  <bridge name='qdbr7' stp='on' delay='0'/>
  <domain name='natnet.test'/>
  <ip address='10.77.0.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='10.77.0.100' end='10.77.0.150'/>
    </dhcp>
  </ip>
</network>
";

const EVENTS_SCRIPT: &str = r#"
import libvirt, os
libvirt.virEventRegisterDefaultImpl()
c = libvirt.open(os.environ['QEMUD_URI'])
names = ['DEFINED', 'UNDEFINED', 'STARTED', 'STOPPED']
def cb(conn, net, event, detail, opaque):
    print('NETEVENT %s %s' % (net.name(), names[event]), flush=True)
c.networkEventRegisterAny(None, libvirt.VIR_NETWORK_EVENT_ID_LIFECYCLE, cb, None)
print('REGISTERED', flush=True)
while True:
    libvirt.virEventRunDefaultImpl()
"#;

#[test]
fn nat_network_lifecycle_with_virsh() {
    let mut d = NsDaemon::start();
    let uri = d.uri();
    let dir = d.dir.path().to_path_buf();

    // The default network is defined on first run, not started.
    let list = squash(virsh(&uri, &["net-list", "--all"]).ok());
    assert!(list.contains("default inactive no yes"), "{list}");

    let mut events = Watcher::spawn(
        Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(EVENTS_SCRIPT)
            .env("QEMUD_URI", &uri),
    );
    events.expect("REGISTERED", 30);

    let xml = write_xml(&dir, "natnet", NAT_NET);
    let out = virsh_full(&uri, &["net-define", xml.to_str().unwrap()]);
    assert!(out.ok().contains("Network natnet defined"));
    events.expect("NETEVENT natnet DEFINED", 10);
    // Definitions are private, like the domains'.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: PathBuf| std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir.join("state/networks")), 0o700);
    assert_eq!(mode(dir.join("state/networks/natnet.xml")), 0o600);
    assert!(!d.has_link("qdbr7"));

    virsh(&uri, &["net-start", "natnet"]).ok();
    events.expect("NETEVENT natnet STARTED", 10);
    let info = squash(virsh_full(&uri, &["net-info", "natnet"]).ok());
    for line in [
        "Name: natnet",
        "Active: yes",
        "Persistent: yes",
        "Autostart: no",
        "Bridge: qdbr7",
    ] {
        assert!(info.contains(line), "{line} missing from {info}");
    }
    let dump = virsh(&uri, &["net-dumpxml", "natnet"]).ok().to_owned();
    assert!(dump.contains("<forward mode='nat'/>"), "{dump}");
    assert!(dump.contains("<bridge name='qdbr7' stp='on' delay='0'/>"));
    assert!(dump.contains("<mac address='52:54:00:"));
    assert!(dump.contains("<ip address='10.77.0.1' netmask='255.255.255.0'>"));
    assert!(dump.contains("<range start='10.77.0.100' end='10.77.0.150'/>"));

    // Present while active: bridge with its address, rules, dnsmasq.
    assert!(d.has_link("qdbr7"));
    assert!(d
        .ns(&["ip", "-o", "addr", "show", "dev", "qdbr7"])
        .contains("10.77.0.1/24"));
    let rules = d.nft();
    assert!(rules.contains("table inet qemud_qdbr7"), "{rules}");
    assert!(rules.contains("masquerade"));
    let first = d.dnsmasq_pid("natnet").expect("dnsmasq runs");

    virsh(&uri, &["net-autostart", "natnet"]).ok();
    assert!(squash(virsh_full(&uri, &["net-info", "natnet"]).ok()).contains("Autostart: yes"));

    // A static host, live and persistent.
    virsh(
        &uri,
        &[
            "net-update",
            "natnet",
            "add",
            "ip-dhcp-host",
            "<host mac='52:54:00:00:00:42' name='fixed' ip='10.77.0.42'/>",
            "--live",
            "--config",
        ],
    )
    .ok();
    let host = "<host mac='52:54:00:00:00:42' name='fixed' ip='10.77.0.42'/>";
    assert!(virsh(&uri, &["net-dumpxml", "natnet"]).ok().contains(host));
    assert!(virsh(&uri, &["net-dumpxml", "--inactive", "natnet"])
        .ok()
        .contains(host));
    let hosts = std::fs::read_to_string(dir.join("run/networks/natnet.hostsfile")).unwrap();
    assert!(
        hosts.contains("52:54:00:00:00:42,10.77.0.42,fixed"),
        "{hosts}"
    );
    let again = virsh(
        &uri,
        &[
            "net-update",
            "natnet",
            "add",
            "ip-dhcp-host",
            host,
            "--live",
        ],
    );
    assert!(
        again.fails().contains("existing dhcp host entry"),
        "{}",
        again.stderr
    );
    // A DNS host, live: dnsmasq's extra hosts file follows.
    virsh(
        &uri,
        &[
            "net-update",
            "natnet",
            "add",
            "dns-host",
            "<host ip='10.77.0.43'><hostname>db</hostname></host>",
            "--live",
        ],
    )
    .ok();
    let addn = std::fs::read_to_string(dir.join("run/networks/natnet.addnhosts")).unwrap();
    assert_eq!(addn, "10.77.0.43\tdb\n");
    assert!(virsh(&uri, &["net-dumpxml", "natnet"])
        .ok()
        .contains("<hostname>db</hostname>"));
    // Deleting by MAC alone.
    virsh(
        &uri,
        &[
            "net-update",
            "natnet",
            "delete",
            "ip-dhcp-host",
            "<host mac='52:54:00:00:00:42'/>",
            "--config",
        ],
    )
    .ok();
    assert!(!virsh(&uri, &["net-dumpxml", "--inactive", "natnet"])
        .ok()
        .contains("52:54:00:00:00:42"));

    // Bad input: an overlapping subnet, a bridge in use, a range outside.
    let overlap = write_xml(
        &dir,
        "overlap",
        "<network><name>overlap</name><bridge name='qdbr8'/><ip address='10.77.0.200' prefix='16'/></network>",
    );
    virsh(&uri, &["net-define", overlap.to_str().unwrap()]).ok();
    let err = virsh(&uri, &["net-start", "overlap"]);
    assert!(
        err.fails()
            .contains("Network is already in use by interface qdbr7"),
        "{}",
        err.stderr
    );
    assert!(!d.has_link("qdbr8"), "nothing half-configured");
    virsh(&uri, &["net-undefine", "overlap"]).ok();
    let same_bridge = write_xml(
        &dir,
        "samebr",
        "<network><name>samebr</name><bridge name='qdbr7'/></network>",
    );
    let err = virsh(&uri, &["net-define", same_bridge.to_str().unwrap()]);
    assert!(
        err.fails().contains("bridge name 'qdbr7' already in use."),
        "{}",
        err.stderr
    );
    let outside = write_xml(
        &dir,
        "outside",
        "<network><name>outside</name><ip address='10.78.0.1' prefix='24'><dhcp><range start='10.79.0.2' end='10.79.0.9'/></dhcp></ip></network>",
    );
    let err = virsh(&uri, &["net-define", outside.to_str().unwrap()]);
    assert!(
        err.fails().contains("is not entirely within network"),
        "{}",
        err.stderr
    );

    // dnsmasq dies: the daemon starts a new one.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(20, "dnsmasq restarted", || {
        d.dnsmasq_pid("natnet").is_some_and(|p| p != first)
    });
    assert!(d.log().contains("dnsmasq exited; restarting"));

    // A daemon stop takes the network down; the next start autostarts it.
    drop(events);
    d.terminate();
    assert!(!d.has_link("qdbr7"));
    d.spawn();
    assert!(d.has_link("qdbr7"));
    assert!(d.dnsmasq_pid("natnet").is_some());
    let mut events = Watcher::spawn(
        Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(EVENTS_SCRIPT)
            .env("QEMUD_URI", &uri),
    );
    events.expect("REGISTERED", 30);

    virsh(&uri, &["net-destroy", "natnet"]).ok();
    events.expect("NETEVENT natnet STOPPED", 10);
    // Gone after: bridge, rules, dnsmasq.
    assert!(!d.has_link("qdbr7"));
    assert!(!d.nft().contains("qemud_qdbr7"));
    wait_until(10, "dnsmasq gone", || d.dnsmasq_pid("natnet").is_none());

    virsh(&uri, &["net-undefine", "natnet"]).ok();
    events.expect("NETEVENT natnet UNDEFINED", 10);
    let list = squash(virsh(&uri, &["net-list", "--all"]).ok());
    assert!(!list.contains("natnet"), "{list}");

    // A transient network through python3-libvirt.
    let script = r#"
import libvirt, os
c = libvirt.open(os.environ['QEMUD_URI'])
n = c.networkCreateXML("<network><name>tr</name><bridge name='qdtr'/><ip address='10.67.0.1' prefix='24'><dhcp><range start='10.67.0.2' end='10.67.0.9'/></dhcp></ip></network>")
assert n.isActive() == 1 and n.isPersistent() == 0
assert n.bridgeName() == 'qdtr'
assert c.networkLookupByUUIDString(n.UUIDString()).name() == 'tr'
names = [x.name() for x in c.listAllNetworks(libvirt.VIR_CONNECT_LIST_NETWORKS_TRANSIENT)]
assert names == ['tr'], names
assert 'tr' not in [x.name() for x in c.listAllNetworks(libvirt.VIR_CONNECT_LIST_NETWORKS_PERSISTENT)]
assert 'tr' in c.listNetworks() and 'default' in c.listDefinedNetworks()
assert n.DHCPLeases() == []
try:
    n.setAutostart(1)
    raise SystemExit('autostart of a transient network accepted')
except libvirt.libvirtError as e:
    assert e.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID, e
n.destroy()
try:
    c.networkLookupByName('tr')
    raise SystemExit('transient network still there')
except libvirt.libvirtError as e:
    assert e.get_error_code() == libvirt.VIR_ERR_NO_NETWORK, e
print('ok')
"#;
    assert_eq!(python(&uri, script).ok().trim(), "ok");
    events.expect("NETEVENT tr STARTED", 10);
    events.expect("NETEVENT tr STOPPED", 10);
    assert!(!d.has_link("qdtr"));

    // The same through qemuctl, with an isolated network.
    let iso = write_xml(
        &dir,
        "iso",
        "<network><name>iso</name><bridge name='qdiso'/><ip address='10.66.0.1' prefix='24'>\
         <dhcp><range start='10.66.0.10' end='10.66.0.20'/></dhcp></ip></network>",
    );
    qemuctl(&uri, &["net-define", iso.to_str().unwrap()]).ok();
    qemuctl(&uri, &["net-start", "iso"]).ok();
    let list: serde_json::Value =
        serde_json::from_str(qemuctl(&uri, &["--json", "net-list"]).ok()).unwrap();
    assert_eq!(list[0]["name"], "iso", "{list}");
    assert_eq!(list[0]["active"], true);
    let info: serde_json::Value =
        serde_json::from_str(qemuctl(&uri, &["--json", "net-info", "iso"]).ok()).unwrap();
    assert_eq!(info["bridge"], "qdiso", "{info}");
    assert!(qemuctl(&uri, &["net-dumpxml", "iso"])
        .ok()
        .contains("<bridge name='qdiso'"));
    let rules = d.nft();
    assert!(
        rules.contains("table inet qemud_qdiso") && !rules.contains("masquerade"),
        "{rules}"
    );
    let leases: serde_json::Value =
        serde_json::from_str(qemuctl(&uri, &["--json", "net-dhcp-leases", "iso"]).ok()).unwrap();
    assert_eq!(leases, serde_json::json!([]));
    qemuctl(&uri, &["net-destroy", "iso"]).ok();
    assert!(!d.has_link("qdiso"));
    qemuctl(&uri, &["net-undefine", "iso"]).ok();
    assert!(!qemuctl(&uri, &["net-list", "--all"]).ok().contains("iso"));
}

#[test]
fn guest_on_a_nat_network_gets_a_lease_and_pings_the_gateway() {
    let mut d = NsDaemon::start();
    let uri = d.uri();
    let dir = d.dir.path().to_path_buf();
    let net = write_xml(&dir, "natnet", NAT_NET);
    virsh(&uri, &["net-define", net.to_str().unwrap()]).ok();
    virsh(&uri, &["net-start", "natnet"]).ok();

    // A host bridge of the test's own for the second NIC.
    d.ns(&["ip", "link", "add", "qdtest", "type", "bridge"]);
    d.ns(&["ip", "addr", "add", "10.99.0.1/24", "dev", "qdtest"]);
    d.ns(&["ip", "link", "set", "qdtest", "up"]);
    let xml = guest_xml(&dir, "netguest", 256).replace(
        "<memballoon model='none'/>",
        "<interface type='network'><source network='natnet'/><mac address='52:54:00:12:34:56'/>\
         <model type='e1000'/></interface>\n\
         <interface type='bridge'><source bridge='qdtest'/><model type='e1000'/></interface>\n\
         <interface type='ethernet'><target dev='qdeth0'/><model type='e1000'/></interface>\n\
         <memballoon model='none'/>",
    );
    let path = write_xml(&dir, "netguest", &xml);
    virsh(&uri, &["define", path.to_str().unwrap()]).ok();
    // The MAC stays as written; a NIC without one gets a kept 52:54:00 one.
    assert!(virsh(&uri, &["dumpxml", "netguest"])
        .ok()
        .contains("52:54:00:12:34:56"));
    virsh(&uri, &["start", "netguest"]).ok();
    let dump = virsh(&uri, &["net-dumpxml", "natnet"]).ok().to_owned();
    assert!(dump.starts_with("<network connections='1'>"), "{dump}");

    let log = serial_log(&dir, "netguest");
    wait_until(240, "guest ping result", || {
        std::fs::read_to_string(&log)
            .map(|t| t.contains("QEMUD-GUEST-PING-"))
            .unwrap_or(false)
    });
    let serial = std::fs::read_to_string(&log).unwrap();
    assert!(
        serial.contains("QEMUD-GUEST-LEASE bound ip=10.77.0."),
        "{serial}"
    );
    assert!(serial.contains("QEMUD-GUEST-PING-OK 10.77.0.1"), "{serial}");

    let leases = squash(virsh(&uri, &["net-dhcp-leases", "natnet"]).ok());
    assert!(
        leases.contains("52:54:00:12:34:56 ipv4 10.77.0."),
        "{leases}"
    );
    let addr = squash(virsh(&uri, &["domifaddr", "netguest"]).ok());
    assert!(addr.contains("52:54:00:12:34:56 ipv4 10.77.0."), "{addr}");
    let leases = qemuctl(&uri, &["--json", "net-dhcp-leases", "natnet"]);
    let leases: serde_json::Value = serde_json::from_str(leases.ok()).unwrap();
    assert_eq!(leases[0]["mac"], "52:54:00:12:34:56", "{leases}");
    assert!(leases[0]["address"]
        .as_str()
        .unwrap()
        .starts_with("10.77.0."));

    // domiflist shows the taps; domifstat counts the guest's packets (its
    // DHCP and pings went out through the first NIC).
    let iflist = squash(virsh(&uri, &["domiflist", "netguest"]).ok());
    assert!(
        iflist.contains("network natnet e1000 52:54:00:12:34:56"),
        "{iflist}"
    );
    assert!(iflist.contains("bridge qdtest e1000 52:54:00:"), "{iflist}");
    let stat = |dev: &str, counter: &str| -> i64 {
        let out = virsh(&uri, &["domifstat", "netguest", dev]).ok().to_owned();
        out.lines()
            .find_map(|l| {
                let mut w = l.split_whitespace().skip(1);
                (w.next() == Some(counter)).then(|| w.next()?.parse().ok())?
            })
            .unwrap_or(-1)
    };
    assert!(stat("52:54:00:12:34:56", "tx_packets") >= 4);
    assert!(stat("52:54:00:12:34:56", "rx_packets") >= 4);
    // The bridge NIC gets what the host sends on the test bridge.
    let second = std::fs::read_to_string(&path).unwrap();
    assert!(second.contains("qdtest"));
    wait_until(30, "traffic on the bridge NIC", || {
        d.ns(&["ping", "-c", "1", "-W", "1", "-I", "qdtest", "10.99.0.2"]);
        let dump = virsh(&uri, &["dumpxml", "netguest"]).ok().to_owned();
        let mac = dump
            .split("<interface type='bridge'>")
            .nth(1)
            .and_then(|t| t.split("address='").nth(1))
            .map(|t| t[..17].to_owned())
            .unwrap_or_default();
        stat(&mac, "rx_packets") > 0
    });

    // The tap is plugged into the bridge while the guest runs, and goes
    // when it stops.
    let taps = d.ns(&["ip", "-o", "link", "show", "master", "qdbr7"]);
    let tap = taps
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .find(|n| n.starts_with("vnet"))
        .unwrap_or_else(|| panic!("no tap on the bridge: {taps}"))
        .to_owned();

    // A killed daemon takes the network back on restart: same bridge with
    // the guest's tap on it, rules, a new dnsmasq.
    let before = d.dnsmasq_pid("natnet");
    d.kill9();
    d.spawn();
    let list = squash(virsh(&uri, &["net-list"]).ok());
    assert!(list.contains("natnet active"), "{list}");
    let after = d.dnsmasq_pids();
    assert_eq!(after.len(), 1, "one dnsmasq: {after:?}");
    assert_ne!(Some(after[0]), before);
    assert!(d.nft().contains("table inet qemud_qdbr7"));
    assert!(d
        .ns(&["ip", "-o", "link", "show", "master", "qdbr7"])
        .contains(&tap));
    wait_until(30, "domain re-attached", || {
        virsh(&uri, &["domstate", "netguest"])
            .stdout
            .contains("running")
    });

    // Destroyed and started again under a running guest: its tap goes back
    // on the new bridge.
    virsh(&uri, &["net-destroy", "natnet"]).ok();
    virsh(&uri, &["net-start", "natnet"]).ok();
    wait_until(10, "tap plugged back", || {
        d.ns(&["ip", "-o", "link", "show", "master", "qdbr7"])
            .contains(&tap)
    });

    // The ethernet NIC's tap is on no bridge.
    assert!(d.has_link("qdeth0"));
    assert!(!d
        .ns(&["ip", "-o", "link", "show", "dev", "qdeth0"])
        .contains("master"));

    virsh(&uri, &["destroy", "netguest"]).ok();
    wait_until(20, "tap removed", || !d.has_link(&tap));
    wait_until(20, "ethernet tap removed", || !d.has_link("qdeth0"));

    // An ethernet NIC never takes over a link that is not a tap.
    let clash = tiny_xml("clash").replace(
        "<devices>",
        "<devices><interface type='ethernet'><target dev='qdtest'/></interface>",
    );
    let clash = write_xml(&dir, "clash", &clash);
    virsh(&uri, &["define", clash.to_str().unwrap()]).ok();
    let err = virsh(&uri, &["start", "clash"]);
    assert!(err.fails().contains("is not a tap"), "{}", err.stderr);
    assert!(d.has_link("qdtest"));
    // Nor does a network take over (or remove) a bridge it did not create.
    let taken = write_xml(
        &dir,
        "taken",
        "<network><name>taken</name><bridge name='qdtest'/><ip address='10.98.0.1' prefix='24'/></network>",
    );
    virsh(&uri, &["net-define", taken.to_str().unwrap()]).ok();
    let err = virsh(&uri, &["net-start", "taken"]);
    assert!(
        err.fails().contains("bridge name 'qdtest' already in use."),
        "{}",
        err.stderr
    );
    assert!(d
        .ns(&["ip", "-o", "addr", "show", "dev", "qdtest"])
        .contains("10.99.0.1/24"));

    // Stopping the daemon takes its networks down.
    d.terminate();
    wait_until(10, "dnsmasq gone with the daemon", || {
        d.dnsmasq_pid("natnet").is_none()
    });
    assert!(!d.has_link("qdbr7"));
    assert!(!d.nft().contains("qemud_qdbr7"));
}

#[test]
fn two_guests_on_an_isolated_network_reach_each_other_not_the_outside() {
    let d = NsDaemon::start();
    let uri = d.uri();
    let dir = d.dir.path().to_path_buf();
    // "Outside": a second namespace behind a veth, routed from the daemon's.
    let outside = Command::new("unshare")
        .args(["--net", "--", "sleep", "100000"])
        .spawn()
        .expect("spawn outside namespace");
    struct KillOnDrop(Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let outside = KillOnDrop(outside);
    let own = std::fs::read_link("/proc/self/ns/net").ok();
    wait_until(10, "outside namespace", || {
        std::fs::read_link(format!("/proc/{}/ns/net", outside.0.id())).ok() != own
    });
    let opid = outside.0.id().to_string();
    d.ns(&[
        "ip", "link", "add", "qdout", "type", "veth", "peer", "name", "qdpeer", "netns", &opid,
    ]);
    d.ns(&["ip", "addr", "add", "10.55.0.1/24", "dev", "qdout"]);
    d.ns(&["ip", "link", "set", "qdout", "up"]);
    let in_outside = |args: &[&str]| {
        Command::new("nsenter")
            .arg(format!("--net=/proc/{opid}/ns/net"))
            .arg("--")
            .args(args)
            .status()
            .expect("nsenter outside");
    };
    in_outside(&["ip", "addr", "add", "10.55.0.2/24", "dev", "qdpeer"]);
    in_outside(&["ip", "link", "set", "qdpeer", "up"]);
    in_outside(&["ip", "route", "add", "default", "via", "10.55.0.1"]);

    let net = write_xml(
        &dir,
        "iso",
        "<network><name>iso</name><bridge name='qdiso1'/>\
         <ip address='10.66.0.1' prefix='24'><dhcp>\
         <range start='10.66.0.100' end='10.66.0.120'/>\
         <host mac='52:54:00:66:00:11' ip='10.66.0.11'/>\
         <host mac='52:54:00:66:00:12' ip='10.66.0.12'/>\
         </dhcp></ip></network>",
    );
    virsh(&uri, &["net-define", net.to_str().unwrap()]).ok();
    virsh(&uri, &["net-start", "iso"]).ok();
    for (name, mac, peer) in [
        ("isoa", "52:54:00:66:00:11", "10.66.0.12"),
        ("isob", "52:54:00:66:00:12", "10.66.0.11"),
    ] {
        let xml = guest_xml(&dir, name, 256)
            .replace(
                "</cmdline>",
                &format!(" qemud.peer={peer} qemud.outside=10.55.0.2</cmdline>"),
            )
            .replace(
                "<memballoon model='none'/>",
                &format!(
                    "<interface type='network'><source network='iso'/><mac address='{mac}'/>\
                     <model type='e1000'/></interface>\n    <memballoon model='none'/>"
                ),
            );
        let path = write_xml(&dir, name, &xml);
        virsh(&uri, &["create", path.to_str().unwrap()]).ok();
    }
    for (name, peer) in [("isoa", "10.66.0.12"), ("isob", "10.66.0.11")] {
        let log = serial_log(&dir, name);
        wait_until(240, &format!("{name} done"), || {
            std::fs::read_to_string(&log)
                .map(|t| t.contains("QEMUD-GUEST-OUTSIDE-"))
                .unwrap_or(false)
        });
        let serial = std::fs::read_to_string(&log).unwrap();
        assert!(
            serial.contains(&format!("QEMUD-GUEST-PEER-OK {peer}")),
            "{serial}"
        );
        assert!(
            serial.contains("QEMUD-GUEST-OUTSIDE-UNREACHABLE 10.55.0.2"),
            "{serial}"
        );
    }
    let leases = squash(virsh(&uri, &["net-dhcp-leases", "iso"]).ok());
    assert!(
        leases.contains("52:54:00:66:00:11 ipv4 10.66.0.11/24"),
        "{leases}"
    );
    assert!(
        leases.contains("52:54:00:66:00:12 ipv4 10.66.0.12/24"),
        "{leases}"
    );
    // A network in use can be destroyed, as in libvirt.
    virsh(&uri, &["net-destroy", "iso"]).ok();
    assert!(!d.has_link("qdiso1"));
}

#[test]
fn missing_dnsmasq_fails_the_start_and_leaves_nothing() {
    let d = NsDaemon::start_with_env(vec![("QEMUD_DNSMASQ", "/nonexistent/dnsmasq".into())]);
    let uri = d.uri();
    let xml = write_xml(d.dir.path(), "natnet", NAT_NET);
    virsh(&uri, &["net-define", xml.to_str().unwrap()]).ok();
    let err = virsh(&uri, &["net-start", "natnet"]);
    assert!(
        err.fails().contains(
            "Cannot check dnsmasq binary /nonexistent/dnsmasq: No such file or directory"
        ),
        "{}",
        err.stderr
    );
    assert!(!d.has_link("qdbr7"));
    assert!(!d.nft().contains("qemud_qdbr7"));
    assert!(squash(virsh(&uri, &["net-list", "--all"]).ok()).contains("natnet inactive"));
}

#[test]
fn bench_network_phase() {
    let d = NsDaemon::start();
    let out = qemuctl(
        &d.uri(),
        &[
            "--json",
            "bench",
            "--calls",
            "20",
            "--connections",
            "1",
            "--connects",
            "1",
            "--domains",
            "1",
            "--lifecycles",
            "0",
            "--subscribers",
            "1",
            "--events",
            "1",
            "--networks",
            "3",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(out.ok()).expect("bench json");
    let start = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["phase"] == "network start (NAT, dnsmasq)")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(start["count"], 3);
    assert!(!d.has_link("qdbenchbr0"));
    assert!(!qemuctl(&d.uri(), &["net-list", "--all"])
        .ok()
        .contains("net"));
}
