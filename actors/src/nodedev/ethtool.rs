//! Offload features of a network device, read with the SIOCETHTOOL ioctl
//! as libvirt's `virNetDevGetFeatures` does (reading needs no privilege).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SIOCETHTOOL: libc::c_ulong = 0x8946;

const ETHTOOL_GRXCSUM: u32 = 0x14;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_GSG: u32 = 0x18;
const ETHTOOL_GTSO: u32 = 0x1e;
const ETHTOOL_GGSO: u32 = 0x23;
const ETHTOOL_GFLAGS: u32 = 0x25;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_GFEATURES: u32 = 0x3a;
/// The kernel's feature bit libvirt reads as `txudptnl`
/// (NETIF_F_GSO_UDP_TUNNEL), in the first block of ETHTOOL_GFEATURES.
const TX_UDP_TNL_BIT: u32 = 25;

const ETH_FLAG_TXVLAN: u32 = 1 << 7;
const ETH_FLAG_RXVLAN: u32 = 1 << 8;
const ETH_FLAG_LRO: u32 = 1 << 15;
const ETH_FLAG_NTUPLE: u32 = 1 << 27;
const ETH_FLAG_RXHASH: u32 = 1 << 28;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` member of its union.
#[repr(C)]
struct IfreqData {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// `struct ethtool_gfeatures` with the two blocks libvirt asks for.
#[repr(C)]
struct EthtoolGfeatures {
    cmd: u32,
    size: u32,
    /// available, requested, active, never_changed per block.
    blocks: [[u32; 4]; 2],
}

/// Sends one ethtool request whose buffer is `buf`.
fn ethtool<T>(sock: &OwnedFd, ifname: &str, buf: &mut T) -> bool {
    let bytes = ifname.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return false;
    }
    let mut req = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: (buf as *mut T).cast(),
        _pad: [0; 16],
    };
    for (dst, &src) in req.name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq whose data pointer refers to `buf`,
    // which outlives the call and is sized for the command it carries; the
    // kernel writes only within it.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
    rc == 0
}

fn query(sock: &OwnedFd, ifname: &str, cmd: u32) -> Option<u32> {
    let mut value = EthtoolValue { cmd, data: 0 };
    ethtool(sock, ifname, &mut value).then_some(value.data)
}

/// The features libvirt reports, in its order (`virNetDevFeature`).
pub fn features(ifname: &str) -> Vec<&'static str> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Vec::new();
    }
    // SAFETY: `fd` is a fresh descriptor owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut out = Vec::new();
    for (cmd, name) in [
        (ETHTOOL_GRXCSUM, "rx"),
        (ETHTOOL_GTXCSUM, "tx"),
        (ETHTOOL_GSG, "sg"),
        (ETHTOOL_GTSO, "tso"),
        (ETHTOOL_GGSO, "gso"),
        (ETHTOOL_GGRO, "gro"),
    ] {
        if query(&sock, ifname, cmd).is_some_and(|v| v != 0) {
            out.push(name);
        }
    }
    if let Some(flags) = query(&sock, ifname, ETHTOOL_GFLAGS) {
        for (bit, name) in [
            (ETH_FLAG_LRO, "lro"),
            (ETH_FLAG_RXVLAN, "rxvlan"),
            (ETH_FLAG_TXVLAN, "txvlan"),
            (ETH_FLAG_NTUPLE, "ntuple"),
            (ETH_FLAG_RXHASH, "rxhash"),
        ] {
            if flags & bit != 0 {
                out.push(name);
            }
        }
    }
    let mut g = EthtoolGfeatures {
        cmd: ETHTOOL_GFEATURES,
        size: 2,
        blocks: [[0; 4]; 2],
    };
    if ethtool(&sock, ifname, &mut g) && g.blocks[0][2] & (1 << TX_UDP_TNL_BIT) != 0 {
        out.push("txudptnl");
    }
    out
}
