//! The domain driver: the [`registry::Registry`] actor owns every domain and
//! is the single writer of the lock-free [`index`]; one [`qemu::QemuVm`]
//! actor supervises each running QEMU over [`qmp`]; [`cmdline`] turns a
//! definition into QEMU's arguments; [`store`] persists definitions and
//! live records. [`procedures`] holds the table rows.

pub mod agent;
pub mod cgroup;
pub mod cmdline;
pub mod console;
pub mod display;
pub mod index;
pub mod procedures;
pub mod qemu;
pub mod qmp;
pub mod registry;
pub mod stats;
pub mod store;
pub mod tuning;
