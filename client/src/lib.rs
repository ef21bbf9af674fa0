//! A Rust client for libvirt's remote protocol: every transport libvirt
//! clients use (UNIX, TCP, TLS with client certificates, SSH), pipelined
//! calls on one connection, keepalive answers and a stream of events. It
//! talks to qemud and to libvirtd alike.

pub mod bench;
pub mod bench_stats;
pub mod client;
pub mod transport;

pub use client::{Client, ClientError, EventMessage, LifecycleEvent};
