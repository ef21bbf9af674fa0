//! Issue 11: data streams (console, screenshot), QEMU monitor passthrough
//! and its events, with unmodified virsh (under tmux, as a person runs it),
//! python3-libvirt and raw frames.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use qemud_tests::*;

/// A tmux session of its own server (socket in the test's directory).
struct Tmux {
    socket: String,
    name: String,
}

impl Tmux {
    /// Runs `command` in a new detached session; when it exits the pane
    /// prints a marker and stays, so its last words can be read.
    fn start(dir: &std::path::Path, name: &str, command: &str) -> Tmux {
        let t = Tmux {
            socket: dir.join("tmux.sock").to_string_lossy().into_owned(),
            name: name.to_owned(),
        };
        let wrapped = format!("{command}; echo SESSION-ENDED-$?; sleep 600");
        t.run(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "160",
            "-y",
            "50",
            &wrapped,
        ]);
        t
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-J", "-S", "-200", "-t", &self.name])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.name];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    #[track_caller]
    fn expect(&self, needle: &str, secs: u64) {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.screen();
            if s.contains(needle) {
                return;
            }
            assert!(Instant::now() < until, "no {needle:?} on screen:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}

#[test]
fn serial_console_with_python_and_virsh_and_takeover() {
    let d = Daemon::start();
    let uri = d.uri();
    let dir = d.dir.path();
    let x = write_xml(dir, "con", &guest_xml(dir, "con", 256));
    virsh(&uri, &["define", x.to_str().unwrap()]).ok();
    virsh(&uri, &["start", "con", "--paused"]).ok();

    // python3-libvirt: the console shows the boot from its start, a command
    // typed into the guest's shell runs, finish closes it cleanly.
    let script = r#"
import libvirt, os, sys, time
c = libvirt.open(os.environ['QEMUD_URI'])
dom = c.lookupByName('con')
st = c.newStream(0)
dom.openConsole(None, st, 0)
# A second, polite opener is refused while this one holds the console.
st2 = c.newStream(0)
try:
    dom.openConsole(None, st2, 0)
    print('SECOND-OPEN-ALLOWED')
except libvirt.libvirtError as e:
    print('BUSY:', e.get_error_code(), e.get_error_message())
dom.resume()
seen = b''
def until(marker, secs):
    global seen
    end = time.time() + secs
    while marker not in seen:
        if time.time() > end:
            print('TIMEOUT waiting for', marker, seen[-400:]); sys.exit(1)
        seen += st.recv(4096)
until(b'QEMUD-GUEST-READY', 120)
print('BOOT-SEEN')
time.sleep(0.5)
st.send(b'echo py-$((6*7))\n')
until(b'py-42', 30)
print('COMMAND-RAN')
st.finish()
print('FINISHED')
"#;
    let r = python(&uri, script);
    let out = r.ok();
    assert!(
        out.contains("BUSY: 9 operation failed: Active console session exists for this domain"),
        "{out}"
    );
    assert!(
        out.contains("BOOT-SEEN") && out.contains("COMMAND-RAN") && out.contains("FINISHED"),
        "{out}"
    );
    // QEMU's log of the port kept recording while the console was open.
    let log = std::fs::read_to_string(serial_log(dir, "con")).unwrap();
    assert!(log.contains("py-42"), "{log}");

    // Unmodified virsh console in a terminal.
    let first = Tmux::start(dir, "first", &format!("virsh -c {uri} console con"));
    first.expect("Escape character is ^]", 20);
    // The shell prints a prompt on Enter.
    std::thread::sleep(Duration::from_millis(300));
    first.keys(&["echo vsh-$((7*6))", "Enter"]);
    first.expect("vsh-42", 30);

    // A second virsh takes the console over; the first sees it closed.
    let second = Tmux::start_on(
        &first,
        "second",
        &format!("virsh -c {uri} console con --force"),
    );
    second.expect("Escape character is ^]", 20);
    first.expect("SESSION-ENDED", 20);
    second.keys(&["echo two-$((5*5))", "Enter"]);
    second.expect("two-25", 30);
    // Ctrl-] detaches.
    second.keys(&["C-]"]);
    second.expect("SESSION-ENDED-0", 20);

    // The console is free again, and other clients never noticed.
    let r = python(
        &uri,
        "import libvirt, os\nc = libvirt.open(os.environ['QEMUD_URI'])\n\
         st = c.newStream(0)\nc.lookupByName('con').openConsole('serial0', st, 0)\n\
         st.abort()\nprint('REOPENED')\n",
    );
    assert!(r.ok().contains("REOPENED"));
    let err = virsh(&uri, &["console", "con", "nosuchdev"])
        .fails()
        .to_owned();
    assert!(
        err.contains("cannot find character device nosuchdev") || err.contains("TTY"),
        "{err}"
    );

    // Destroying the domain ends an open console: the client sees EOF.
    let script = r#"
import libvirt, os, threading, time
c = libvirt.open(os.environ['QEMUD_URI'])
dom = c.lookupByName('con')
st = c.newStream(0)
dom.openConsole(None, st, 0)
c2 = libvirt.open(os.environ['QEMUD_URI'])
threading.Timer(1.0, lambda: c2.lookupByName('con').destroy()).start()
end = time.time() + 30
while time.time() < end:
    b = st.recv(4096)
    if b == b'':
        print('EOF'); break
st.finish()
print('DONE')
"#;
    let out = python(&uri, script).ok().to_owned();
    assert!(out.contains("EOF") && out.contains("DONE"), "{out}");
    virsh(&uri, &["list", "--all"]).ok();
}

impl Tmux {
    /// Another session on the same tmux server.
    fn start_on(other: &Tmux, name: &str, command: &str) -> Tmux {
        let t = Tmux {
            socket: other.socket.clone(),
            name: name.to_owned(),
        };
        let wrapped = format!("{command}; echo SESSION-ENDED-$?; sleep 600");
        t.run(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "160",
            "-y",
            "50",
            &wrapped,
        ]);
        t
    }
}

fn graphics_xml(name: &str) -> String {
    format!(
        "<domain type='{}'><name>{name}</name><memory unit='MiB'>64</memory>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os>\
         <devices><graphics type='vnc' autoport='yes' listen='127.0.0.1'/>\
         <memballoon model='none'/></devices></domain>",
        domain_type()
    )
}

/// XDR of a `remote_nonnull_domain` with the name and UUID virsh reports.
fn xdr_domain(uri: &str, name: &str) -> Vec<u8> {
    let uuid = virsh(uri, &["domuuid", name]).ok().trim().replace('-', "");
    let mut v = Vec::new();
    v.extend_from_slice(&(name.len() as u32).to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v.resize(v.len() + (4 - name.len() % 4) % 4, 0);
    for i in 0..16 {
        v.push(u8::from_str_radix(&uuid[2 * i..2 * i + 2], 16).unwrap());
    }
    v.extend_from_slice(&(-1i32).to_be_bytes());
    v
}

/// A STREAM frame from the client.
fn stream_frame(procedure: i32, serial: u32, status: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((28 + body.len()) as u32).to_be_bytes());
    for w in [REMOTE_PROGRAM, 1, procedure as u32, 3, serial, status] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v.extend_from_slice(body);
    v
}

#[test]
fn screenshot_keys_monitor_passthrough_and_stream_rules() {
    let d = Daemon::start();
    let uri = d.uri();
    let dir = d.dir.path();
    let x = write_xml(dir, "gfx", &graphics_xml("gfx"));
    virsh(&uri, &["define", x.to_str().unwrap()]).ok();
    virsh(&uri, &["start", "gfx"]).ok();

    // virsh screenshot writes a valid image, named after the MIME type.
    let shot = dir.join("shot");
    let out = virsh_full(&uri, &["screenshot", "gfx", shot.to_str().unwrap()])
        .ok()
        .to_owned();
    assert!(out.contains("Screenshot saved to"), "{out}");
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    virsh(&uri, &["send-key", "gfx", "KEY_A"]).ok();
    virsh(&uri, &["send-key", "gfx", "--codeset", "xt", "0x1e"]).ok();
    let out = virsh(&uri, &["domcontrol", "gfx"]).ok().to_owned();
    assert_eq!(out.trim(), "ok");

    // A VNC client connection handed over as a descriptor (virt-manager's
    // way to the graphical console).
    let script = r#"
import libvirt, os, socket
c = libvirt.open(os.environ['QEMUD_URI'])
fd = c.lookupByName('gfx').openGraphicsFD(0, 0)
s = socket.socket(fileno=fd)
s.settimeout(10)
print('GREETING', s.recv(12))
s.close()
print('ALIVE', c.lookupByName('gfx').isActive())
"#;
    let out = python(&uri, script).ok().to_owned();
    assert!(out.contains("GREETING b'RFB 003.00"), "{out}");
    assert!(out.contains("ALIVE 1"), "{out}");

    // Monitor passthrough, QMP and HMP.
    let out = virsh(
        &uri,
        &[
            "qemu-monitor-command",
            "gfx",
            r#"{"execute":"query-status"}"#,
        ],
    )
    .ok()
    .to_owned();
    assert!(out.contains(r#""status":"running""#), "{out}");
    let out = virsh(
        &uri,
        &["qemu-monitor-command", "gfx", "--hmp", "info status"],
    )
    .ok()
    .to_owned();
    assert!(out.contains("VM status: running"), "{out}");
    let out = virsh(
        &uri,
        &[
            "qemu-monitor-command",
            "gfx",
            r#"{"execute":"no-such-command"}"#,
        ],
    )
    .ok()
    .to_owned();
    assert!(out.contains("CommandNotFound"), "{out}");
    let log = std::fs::read_to_string(d.state_dir().join("log").join("gfx.log")).unwrap();
    assert_eq!(
        log.matches("is tainted: custom-monitor").count(),
        1,
        "{log}"
    );
    // Read-only clients are refused.
    let err = virsh(
        &d.uri_ro(),
        &["qemu-monitor-command", "gfx", "--hmp", "info status"],
    )
    .fails()
    .to_owned();
    assert!(
        err.contains("read only access prevents virDomainQemuMonitorCommand"),
        "{err}"
    );
    let err = virsh(&d.uri_ro(), &["screenshot", "gfx", "/dev/null"])
        .fails()
        .to_owned();
    assert!(err.contains("read only access prevents"), "{err}");
    // No agent: libvirt's error, at once.
    let t = Instant::now();
    let err = virsh(
        &uri,
        &["qemu-agent-command", "gfx", r#"{"execute":"guest-ping"}"#],
    )
    .fails()
    .to_owned();
    assert!(err.contains("QEMU guest agent is not configured"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));

    // Raw QMP events: a STOP on suspend.
    let mut w = Watcher::spawn(Command::new("virsh").args([
        "-c",
        &uri,
        "qemu-monitor-event",
        "gfx",
        "--loop",
    ]));
    let mut named = Watcher::spawn(Command::new("virsh").args([
        "-c",
        &uri,
        "qemu-monitor-event",
        "gfx",
        "--event",
        "resume",
        "--no-case",
        "--loop",
    ]));
    std::thread::sleep(Duration::from_millis(700));
    virsh(&uri, &["suspend", "gfx"]).ok();
    w.expect("event STOP at", 10);
    virsh(&uri, &["resume", "gfx"]).ok();
    w.expect("event RESUME at", 10);
    let l = named.expect("event RESUME", 10);
    assert!(l.contains("for domain 'gfx'"), "{l}");
    assert!(
        !named.seen.iter().any(|l| l.contains("STOP")),
        "{:?}",
        named.seen
    );

    // The stream rules, frame by frame: a screenshot stream, then packets
    // for no stream and data after finish are ignored, and the connection
    // goes on serving.
    let mut s = UnixStream::connect(d.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&call_frame(REMOTE_PROGRAM, 1, 1, &[0; 8]))
        .unwrap();
    assert_eq!(read_packet(&mut s).status, 0);
    // A packet for a serial no stream has, before anything was opened.
    s.write_all(&stream_frame(211, 77, 2, b"junk")).unwrap();
    let mut body = xdr_domain(&uri, "gfx");
    body.extend_from_slice(&[0; 8]); // screen 0, flags 0
    s.write_all(&call_frame(REMOTE_PROGRAM, 211, 5, &body))
        .unwrap();
    let reply = read_packet(&mut s);
    assert_eq!(
        (reply.kind, reply.serial, reply.status),
        (1, 5, 0),
        "{reply:?}"
    );
    assert!(String::from_utf8_lossy(&reply.body).contains("image/png"));
    let mut image = Vec::new();
    loop {
        let p = read_packet(&mut s);
        assert_eq!((p.kind, p.serial, p.procedure), (3, 5, 211), "{p:?}");
        assert_eq!(p.status, 2, "CONTINUE");
        assert!(p.body.len() <= 262_120);
        if p.body.is_empty() {
            break;
        }
        image.extend_from_slice(&p.body);
    }
    assert_eq!(&image[..4], b"\x89PNG");
    // Finish handshake: the daemon confirms with an empty OK.
    s.write_all(&stream_frame(211, 5, 0, &[])).unwrap();
    let p = read_packet(&mut s);
    assert_eq!(
        (p.kind, p.serial, p.status, p.body.len()),
        (3, 5, 0, 0),
        "{p:?}"
    );
    // Data and a second finish after the stream ended: ignored.
    s.write_all(&stream_frame(211, 5, 2, b"late data")).unwrap();
    s.write_all(&stream_frame(211, 5, 0, &[])).unwrap();
    s.write_all(&stream_frame(211, 999, 1, &[])).unwrap();
    // Abort of a live stream: confirmed with OK, nothing more.
    s.write_all(&call_frame(REMOTE_PROGRAM, 211, 6, &body))
        .unwrap();
    assert_eq!(read_packet(&mut s).serial, 6);
    s.write_all(&stream_frame(211, 6, 1, &[])).unwrap();
    // CONNECT_GET_LIB_VERSION still answers, after whatever the aborted
    // stream had already queued.
    s.write_all(&call_frame(REMOTE_PROGRAM, 157, 8, &[]))
        .unwrap();
    loop {
        let p = read_packet(&mut s);
        if p.kind == 1 {
            assert_eq!((p.serial, p.status), (8, 0), "{p:?}");
            break;
        }
        assert_eq!((p.kind, p.serial), (3, 6), "{p:?}");
    }
    virsh(&uri, &["destroy", "gfx"]).ok();
}

#[test]
fn qemuctl_streams_passthrough_and_bench_phases() {
    let d = Daemon::start();
    let uri = d.uri();
    let dir = d.dir.path();
    let x = write_xml(dir, "qc", &graphics_xml("qc"));
    virsh(&uri, &["define", x.to_str().unwrap()]).ok();
    virsh(&uri, &["start", "qc"]).ok();
    let file = dir.join("qc.png");
    let out = qemuctl(
        &uri,
        &["--json", "screenshot", "qc", file.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_str(out.ok()).expect("json");
    assert_eq!(v["mime"], "image/png");
    assert_eq!(&std::fs::read(&file).unwrap()[..4], b"\x89PNG");
    qemuctl(&uri, &["send-key", "qc", "KEY_A", "KEY_ENTER"]).ok();
    let out = qemuctl(
        &uri,
        &[
            "--json",
            "qemu-monitor-command",
            "qc",
            r#"{"execute":"query-status"}"#,
        ],
    );
    let v: serde_json::Value = serde_json::from_str(out.ok()).expect("json");
    assert_eq!(v["result"]["return"]["status"], "running");
    let out = qemuctl(
        &uri,
        &["qemu-monitor-command", "qc", "--hmp", "info status"],
    );
    assert!(out.ok().contains("VM status: running"));
    let err = qemuctl(
        &uri,
        &["qemu-agent-command", "qc", r#"{"execute":"guest-ping"}"#],
    );
    assert!(
        err.fails().contains("QEMU guest agent is not configured")
            || err.stdout.contains("not configured")
    );
    virsh(&uri, &["destroy", "qc"]).ok();

    // Bench: screenshot latency. The console throughput phase boots the
    // test guest (--console-kernel/--console-initrd); too slow for CI under
    // TCG, it is run by hand.
    let out = qemuctl(
        &uri,
        &[
            "--json",
            "bench",
            "--calls",
            "50",
            "--connections",
            "2",
            "--connects",
            "2",
            "--domains",
            "2",
            "--lifecycles",
            "0",
            "--subscribers",
            "1",
            "--events",
            "1",
            "--domain-type",
            domain_type(),
            "--screenshots",
            "3",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(out.ok()).expect("bench json");
    let rows = v["results"].as_array().unwrap();
    let shot = rows
        .iter()
        .find(|r| r["phase"] == "screenshot")
        .expect("screenshot row");
    assert_eq!(shot["count"], 3);
    eprintln!("screenshot: {shot}");
}
