//! Issue 2: hostile or broken input never takes the daemon down, never makes
//! it allocate much, and leaves other clients untouched.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use qemud_tests::*;

const REMOTE: u32 = REMOTE_PROGRAM;

fn connect(d: &Daemon) -> UnixStream {
    let s = UnixStream::connect(d.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads one reply: (procedure, serial, status, body).
fn read_reply(s: &mut UnixStream) -> (i32, u32, i32, Vec<u8>) {
    let p = read_packet(s);
    (p.procedure, p.serial, p.status, p.body)
}

/// Error code of a `remote_error` body.
fn error_code(body: &[u8]) -> i32 {
    i32::from_be_bytes(body[0..4].try_into().unwrap())
}

fn open(s: &mut UnixStream) {
    // CONNECT_OPEN with name NULL, flags 0.
    s.write_all(&call_frame(REMOTE, 1, 1, &[0, 0, 0, 0, 0, 0, 0, 0]))
        .unwrap();
    let (_, serial, status, _) = read_reply(s);
    assert_eq!((serial, status), (1, 0));
}

fn closed(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

fn still_serving(d: &Daemon) {
    virsh(&d.uri(), &["list", "--all"]).ok();
}

#[test]
fn unknown_procedure_gets_an_error_and_connection_stays() {
    let d = Daemon::start();
    let mut s = connect(&d);
    open(&mut s);
    // Not a libvirt procedure at all: libvirt's "unknown procedure".
    s.write_all(&call_frame(REMOTE, 9999, 7, &[])).unwrap();
    let (proc_, serial, status, body) = read_reply(&mut s);
    assert_eq!((proc_, serial, status), (9999, 7, 1));
    assert_eq!(error_code(&body), 39, "VIR_ERR_RPC");
    // A libvirt procedure qemud does not implement (SEV launch security):
    // what a driver without it answers.
    s.write_all(&call_frame(REMOTE, 396, 9, &[])).unwrap();
    let (proc_, serial, status, body) = read_reply(&mut s);
    assert_eq!((proc_, serial, status), (396, 9, 1));
    assert_eq!(error_code(&body), 3, "VIR_ERR_NO_SUPPORT");
    // Same connection still works: CONNECT_GET_LIB_VERSION.
    s.write_all(&call_frame(REMOTE, 157, 8, &[])).unwrap();
    let (_, serial, status, body) = read_reply(&mut s);
    assert_eq!((serial, status), (8, 0));
    assert_eq!(body, 9_000_000u64.to_be_bytes());
}

#[test]
fn unknown_program_gets_error_reply() {
    let d = Daemon::start();
    let mut s = connect(&d);
    s.write_all(&call_frame(0x1234_5678, 1, 3, &[])).unwrap();
    let (_, serial, status, body) = read_reply(&mut s);
    assert_eq!((serial, status), (3, 1));
    assert_eq!(error_code(&body), 39, "VIR_ERR_RPC");
    open(&mut s);
}

#[test]
fn second_open_is_refused() {
    let d = Daemon::start();
    let mut s = connect(&d);
    open(&mut s);
    s.write_all(&call_frame(REMOTE, 1, 2, &[0, 0, 0, 0, 0, 0, 0, 0]))
        .unwrap();
    let (_, serial, status, body) = read_reply(&mut s);
    assert_eq!((serial, status), (2, 1));
    assert_eq!(
        error_code(&body),
        1,
        "VIR_ERR_INTERNAL_ERROR: connection already open"
    );
}

#[test]
fn calls_before_open_are_refused() {
    let d = Daemon::start();
    let mut s = connect(&d);
    s.write_all(&call_frame(REMOTE, 273, 2, &[0, 0, 0, 1, 0, 0, 0, 0]))
        .unwrap();
    let (_, _, status, body) = read_reply(&mut s);
    assert_eq!(status, 1);
    assert_eq!(
        error_code(&body),
        1,
        "VIR_ERR_INTERNAL_ERROR: connection not open"
    );
}

#[test]
fn huge_string_length_is_a_decode_error_not_an_allocation() {
    let d = Daemon::start();
    let mut s = connect(&d);
    open(&mut s);
    // DOMAIN_LOOKUP_BY_NAME with a string claiming 4 GiB.
    s.write_all(&call_frame(
        REMOTE,
        23,
        5,
        &[0xff, 0xff, 0xff, 0xff, b'a', b'b', 0, 0],
    ))
    .unwrap();
    let (_, serial, status, body) = read_reply(&mut s);
    assert_eq!((serial, status), (5, 1));
    assert_eq!(error_code(&body), 39, "VIR_ERR_RPC");
    // A string longer than the message, too.
    s.write_all(&call_frame(REMOTE, 23, 6, &[0, 0, 1, 0, b'a', b'b', 0, 0]))
        .unwrap();
    let (_, serial, status, _) = read_reply(&mut s);
    assert_eq!((serial, status), (6, 1));
    still_serving(&d);
}

#[test]
fn bad_lengths_close_only_that_connection() {
    let d = Daemon::start();
    let mut bystander = connect(&d);
    open(&mut bystander);
    for len in [0u32, 4, 27, 16 * 1024 * 1024 + 5, u32::MAX] {
        let mut s = connect(&d);
        s.write_all(&len.to_be_bytes()).unwrap();
        s.write_all(&[0u8; 32]).unwrap();
        assert!(closed(&mut s), "length {len} did not close the connection");
    }
    // Truncated frame then hang-up.
    {
        let mut s = connect(&d);
        let f = call_frame(REMOTE, 157, 1, &[]);
        s.write_all(&f[..10]).unwrap();
    }
    // The daemon's memory stayed small after a 4 GiB length claim.
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .map(|c| c.contains("qemud") && c.contains(d.dir.path().to_str().unwrap()))
                .unwrap_or(false)
        })
        .expect("daemon pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(rss_kib < 200 * 1024, "daemon RSS {rss_kib} KiB");
    // The bystander is unaffected.
    bystander
        .write_all(&call_frame(REMOTE, 157, 9, &[]))
        .unwrap();
    let (_, serial, status, _) = read_reply(&mut bystander);
    assert_eq!((serial, status), (9, 0));
    still_serving(&d);
}

#[test]
fn keepalive_ping_gets_pong() {
    let d = Daemon::start();
    let mut s = connect(&d);
    let mut ping = call_frame(KEEPALIVE_PROGRAM, 1, 0, &[]);
    ping[16..20].copy_from_slice(&2i32.to_be_bytes()); // MESSAGE
    s.write_all(&ping).unwrap();
    let (proc_, serial, status, body) = read_reply(&mut s);
    assert_eq!((proc_, serial, status), (2, 0, 0));
    assert!(body.is_empty());
}

/// Reads packets until the reply with `serial`, skipping event messages.
fn read_reply_for(s: &mut UnixStream, serial: u32) -> (i32, i32) {
    loop {
        let p = read_packet(s);
        if p.kind == 1 && p.serial == serial {
            return (p.procedure, p.status);
        }
    }
}

/// Random argument bodies for every procedure number: each call gets its
/// own reply (success or a libvirt error), the daemon never falls over.
#[test]
fn random_bodies_for_every_procedure() {
    let d = Daemon::start();
    let mut s = connect(&d);
    open(&mut s);
    // xorshift: deterministic, so a failure reproduces.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut serial = 100;
    let mut calls = 0;
    for procedure in 3..=400 {
        for round in 0..8 {
            let len = (next() % 96) as usize;
            let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 1 && body.len() >= 4 {
                // Plausible small length words exercise deeper decoding.
                body[..4].copy_from_slice(&((next() % 40) as u32).to_be_bytes());
            }
            serial += 1;
            s.write_all(&call_frame(REMOTE, procedure, serial, &body))
                .unwrap();
            let (p, _status) = read_reply_for(&mut s, serial);
            assert_eq!(p, procedure);
            calls += 1;
        }
    }
    assert_eq!(calls, 398 * 8);
    still_serving(&d);
    assert!(!d.log().contains("panicked"), "{}", d.log());
}
