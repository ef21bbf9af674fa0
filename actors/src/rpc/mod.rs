//! The RPC layer: one [`connection::Connection`] actor per client, the
//! procedure [`table`] every driver folder contributes rows to, and the
//! procedures that concern the connection itself ([`connect`]).

pub mod connect;
pub mod connection;
pub mod fdpass;
pub mod stream;
pub mod table;
pub mod wire;

pub use table::{Access, Call, Handler, Procedure};
