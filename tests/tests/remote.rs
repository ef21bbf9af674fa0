//! Issue 5: TCP and TLS listeners, client certificate checks, read-only
//! clients, client limits and keepalive.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use qemud_tests::*;

fn tls_uri(port: u16, pki: &std::path::Path) -> String {
    format!(
        "qemu+tls://localhost:{port}/system?pkipath={}",
        pki.display()
    )
}

#[test]
fn virsh_over_tls_with_client_certificates() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::generate(work.path());
    let port = free_port();
    let d = daemon_with_settings(&format!(
        "{}tls_allowed_dn_list = [\"C=GB,O=qemud-test,CN=*\"]\n",
        pki.settings(&format!("127.0.0.1:{port}"))
    ));
    let uri = tls_uri(port, &pki.client_dir("client"));

    virsh(&uri, &["list", "--all"]).ok();
    let x = write_xml(d.dir.path(), "tlsvm", &tiny_xml("tlsvm"));
    virsh(&uri, &["define", x.to_str().unwrap()]).ok();
    virsh(&uri, &["start", "tlsvm"]).ok();
    assert!(squash(virsh(&uri, &["list"]).ok()).contains("tlsvm running"));
    virsh(&uri, &["destroy", "tlsvm"]).ok();
    assert!(
        d.log().contains("DN=C=GB,O=qemud-test,CN=client1"),
        "peer DN not logged"
    );

    // A certificate from another CA is refused by the daemon. (virsh
    // would not even send it: libvirt's client checks its own certificate
    // first, and GnuTLS offers none the server's CA list does not name.)
    let r = python(
        &uri,
        &format!(
            r#"
import socket, ssl
ctx = ssl.create_default_context(cafile="{ca}")
ctx.load_cert_chain("{dir}/strangercert.pem", "{dir}/strangerkey.pem")
s = socket.create_connection(("127.0.0.1", {port}), timeout=10)
try:
    t = ctx.wrap_socket(s, server_hostname="localhost")
    print("accepted" if t.recv(1) == b"\x01" else "closed")
except ssl.SSLError as e:
    print(e)
"#,
            ca = pki.dir.join("cacert.pem").display(),
            dir = pki.dir.display(),
        ),
    );
    let out = r.ok().trim().to_owned();
    assert!(
        out.contains("ALERT_UNKNOWN_CA") || out.contains("unknown ca"),
        "{out}"
    );
    assert!(
        d.log()
            .contains("TLS handshake failed: invalid peer certificate: UnknownIssuer"),
        "{}",
        d.log()
    );
    // A DN outside the allow-list is refused after the handshake: no
    // go-ahead byte.
    let outsider = tls_uri(port, &pki.client_dir("outsider"));
    let err = virsh(&outsider, &["list"]);
    assert!(
        err.fails().contains("Unable to read TLS confirmation"),
        "{}",
        err.stderr
    );
    let refusal = d
        .log()
        .lines()
        .find(|l| l.contains("client certificate DN is not in tls_allowed_dn_list"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(refusal.contains("CN=outsider"), "{}", d.log());
    // No client certificate at all: the handshake never yields the go-ahead byte.
    let r = python(
        &uri,
        &format!(
            r#"
import socket, ssl
ctx = ssl.create_default_context(cafile="{ca}")
s = socket.create_connection(("127.0.0.1", {port}), timeout=10)
try:
    t = ctx.wrap_socket(s, server_hostname="localhost")
    b = t.recv(1)
    print("refused" if b != b"\x01" else "accepted")
except (ssl.SSLError, ConnectionError, OSError):
    print("refused")
"#,
            ca = pki.dir.join("cacert.pem").display()
        ),
    );
    assert_eq!(r.ok().trim(), "refused");
    // The legitimate client still works.
    virsh(&uri, &["undefine", "tlsvm"]).ok();
}

#[test]
fn qemuctl_lifecycle_over_tls() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::generate(work.path());
    let port = free_port();
    let d = daemon_with_settings(&pki.settings(&format!("127.0.0.1:{port}")));
    let uri = tls_uri(port, &pki.client_dir("client"));
    qemuctl_lifecycle(&uri, d.dir.path(), "t");
    let stranger = tls_uri(port, &pki.client_dir("stranger"));
    let err = qemuctl(&stranger, &["list"]);
    assert!(
        err.fails().contains("received fatal alert: UnknownCA"),
        "{}",
        err.stderr
    );
}

#[test]
fn tcp_only_when_enabled() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let uri = format!("qemu+tcp://127.0.0.1:{port}/system");
    {
        // Not enabled: nothing listens.
        let _d = Daemon::start();
        let err = virsh(&uri, &["list"]);
        assert!(err.fails().contains("Connection refused"), "{}", err.stderr);
    }
    {
        // Enabled without auth_tcp = "none": the daemon refuses to start.
        let cfg = format!("listen_tcp = true\ntcp_addr = \"{addr}\"\n");
        let scratch = tempfile::tempdir().unwrap();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), cfg).unwrap();
        let out = Command::new(binary("qemud"))
            .args([
                "--config",
                file.path().to_str().unwrap(),
                "--run-dir",
                scratch.path().join("run").to_str().unwrap(),
                "--state-dir",
                scratch.path().join("state").to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("auth_tcp"));
    }
    let d = daemon_with_settings(&format!(
        "listen_tcp = true\ntcp_addr = \"{addr}\"\nauth_tcp = \"none\"\n"
    ));
    virsh(&uri, &["list", "--all"]).ok();
    let x = write_xml(d.dir.path(), "tcpvm", &tiny_xml("tcpvm"));
    virsh(&uri, &["define", x.to_str().unwrap()]).ok();
    virsh(&uri, &["start", "tcpvm"]).ok();
    virsh(&uri, &["destroy", "tcpvm"]).ok();
}

#[test]
fn read_only_clients_can_look_but_not_touch() {
    let d = Daemon::start();
    let x = write_xml(d.dir.path(), "look", &tiny_xml("look"));
    virsh(&d.uri(), &["define", x.to_str().unwrap()]).ok();
    let ro = d.uri_ro();
    virsh(&ro, &["list", "--all"]).ok();
    assert!(virsh(&ro, &["dominfo", "look"])
        .ok()
        .contains("Name:           look"));
    virsh(&ro, &["dumpxml", "look"]).ok();
    for args in [
        vec!["start", "look"],
        vec!["define", x.to_str().unwrap()],
        vec!["undefine", "look"],
    ] {
        let err = virsh(&ro, &args);
        assert!(
            err.fails()
                .contains("operation forbidden: read only access prevents"),
            "{args:?}: {}",
            err.stderr
        );
    }
    virsh(&d.uri(), &["start", "look"]).ok();
    for args in [
        vec!["destroy", "look"],
        vec!["suspend", "look"],
        vec!["shutdown", "look"],
    ] {
        let err = virsh(&ro, &args);
        assert!(
            err.fails().contains("operation forbidden"),
            "{args:?}: {}",
            err.stderr
        );
    }
    assert_eq!(virsh(&ro, &["domstate", "look"]).ok().trim(), "running");
    virsh(&d.uri(), &["destroy", "look"]).ok();
}

/// A client that got a place: connected, and its CONNECT_OPEN answered.
fn admitted_client(d: &Daemon) -> Option<UnixStream> {
    let mut s = UnixStream::connect(d.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&call_frame(REMOTE_PROGRAM, 1, 1, &[0, 0, 0, 0, 0, 0, 0, 0]))
        .ok()?;
    let p = try_read_packet(&mut s)?;
    assert_eq!(p.status, 0);
    Some(s)
}

#[test]
fn max_clients_plus_one_is_refused_cleanly() {
    let d = daemon_with_settings("max_clients = 3\n");
    // The harness's start-up probe may still hold a place for a moment:
    // a client turned away for it simply tries again.
    let mut held: Vec<UnixStream> = Vec::new();
    wait_until(10, "three clients admitted", || {
        if let Some(s) = admitted_client(&d) {
            held.push(s);
        }
        held.len() == 3
    });
    let mut extra = UnixStream::connect(d.socket()).unwrap();
    unix_closed_by_peer(&mut extra, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("extra client was not dropped: {e}\n{}", d.log()));
    // The others keep working: CONNECT_GET_LIB_VERSION on each.
    for s in held.iter_mut() {
        s.write_all(&call_frame(REMOTE_PROGRAM, 157, 2, &[]))
            .unwrap();
        let p = read_packet(s);
        assert_eq!((p.procedure, p.status), (157, 0));
    }
    assert!(d.log().contains("too many active clients"));
    // A place frees up when a client leaves.
    held.pop();
    wait_until(10, "a freed place", || {
        virsh_within(10, &d.uri(), &["list"]).status.success()
    });
}

#[test]
fn silent_client_is_dropped_after_keepalive() {
    let d = daemon_with_settings("keepalive_interval = 1\nkeepalive_count = 2\n");
    // A client that never asked for keepalive is never pinged nor dropped.
    let mut quiet = UnixStream::connect(d.socket()).unwrap();
    quiet
        .write_all(&call_frame(REMOTE_PROGRAM, 1, 1, &[0, 0, 0, 0, 0, 0, 0, 0]))
        .unwrap();
    quiet
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    assert_eq!(read_packet(&mut quiet).status, 0);
    // This one asks, as libvirt clients do before CONNECT_OPEN:
    // CONNECT_SUPPORTS_FEATURE(VIR_DRV_FEATURE_PROGRAM_KEEPALIVE = 10).
    let mut s = UnixStream::connect(d.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(&call_frame(REMOTE_PROGRAM, 60, 1, &[0, 0, 0, 10]))
        .unwrap();
    let p = read_packet(&mut s);
    assert_eq!((p.status, p.body.as_slice()), (0, &[0, 0, 0, 1][..]));
    s.write_all(&call_frame(REMOTE_PROGRAM, 1, 2, &[0, 0, 0, 0, 0, 0, 0, 0]))
        .unwrap();
    assert_eq!(read_packet(&mut s).status, 0);
    // Read (and ignore) pings until the daemon hangs up.
    let start = Instant::now();
    let mut pings = 0;
    while let Some(p) = try_read_packet(&mut s) {
        assert_eq!(p.program, KEEPALIVE_PROGRAM, "expected a keepalive PING");
        pings += 1;
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "client never dropped"
        );
    }
    assert_eq!(pings, 2);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "dropped too early: {waited:?}"
    );
    assert!(d.log().contains("stopped answering keepalives"));
    // The quiet client, silent all along, is still served.
    quiet
        .write_all(&call_frame(REMOTE_PROGRAM, 157, 2, &[]))
        .unwrap();
    let p = read_packet(&mut quiet);
    assert_eq!(
        p.program, REMOTE_PROGRAM,
        "no ping for a client that never asked"
    );
    assert_eq!(p.status, 0);
    // A client that answers pings stays: virsh idles through several
    // keepalive intervals and still gets the next event.
    let mut w =
        Watcher::spawn(Command::new("virsh").args(["-c", &d.uri(), "event", "--all", "--loop"]));
    std::thread::sleep(Duration::from_secs(5));
    let x = write_xml(d.dir.path(), "alive", &tiny_xml("alive"));
    virsh(&d.uri(), &["define", x.to_str().unwrap()]).ok();
    w.expect("event 'lifecycle' for domain 'alive': Defined Added", 10);
}

/// Issue 19: peers that connect to the TLS port and never handshake must
/// not lock local clients out. They wait under their own cap
/// (`max_anonymous_clients`), take no `max_clients` place, and are
/// dropped at the handshake deadline.
#[test]
fn unauthenticated_peers_do_not_lock_out_local_clients() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::generate(work.path());
    let port = free_port();
    let deadline = Duration::from_secs(6);
    let d = daemon_with_settings(&format!(
        "{}max_clients = 20\ntls_handshake_timeout_ms = {}\n",
        pki.settings(&format!("127.0.0.1:{port}")),
        deadline.as_millis()
    ));
    let connected = Instant::now();
    let mut idle: Vec<std::net::TcpStream> = (0..60)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // All 60 are accepted once 40 of them were turned away (20 may wait).
    wait_until(20, "the daemon to turn away the excess peers", || {
        d.log().matches("dropping connection").count() >= 40
    });
    // Exactly 20 are still open, waiting for their handshake.
    let waiting: Vec<&mut std::net::TcpStream> = idle
        .iter_mut()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            let open = matches!(s.peek(&mut b),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
            s.set_nonblocking(false).unwrap();
            open
        })
        .collect();
    assert!(
        connected.elapsed() < deadline,
        "too slow to tell waiting peers from refused ones"
    );
    assert_eq!(
        waiting.len(),
        20,
        "peers allowed to wait for their handshake"
    );
    // Meanwhile local clients get in at once, read-write and read-only.
    for uri in [d.uri(), d.uri_ro()] {
        let start = Instant::now();
        let out = virsh_within(20, &uri, &["list", "--all"]);
        assert!(
            out.status.success(),
            "local client locked out: {}\n{}",
            out.stderr,
            d.log()
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "local client waited {:?}",
            start.elapsed()
        );
    }
    // The waiting ones are dropped at the deadline, not before it and not
    // much after it.
    for s in waiting {
        let left = (deadline + Duration::from_secs(10)).saturating_sub(connected.elapsed());
        tcp_closed_by_peer(s, left).unwrap();
    }
    assert!(
        connected.elapsed() >= deadline - Duration::from_millis(500),
        "dropped before the deadline"
    );
    assert!(d.log().contains("TLS handshake timed out"), "{}", d.log());
    // A real TLS client gets in once they are gone.
    let uri = tls_uri(port, &pki.client_dir("client"));
    virsh_within(30, &uri, &["list"]).ok();
}
