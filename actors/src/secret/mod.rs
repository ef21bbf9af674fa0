//! The secret driver: secrets with values kept 0600 under the state directory.

use crate::rpc::Procedure;

/// This driver's rows of the procedure table.
pub fn procedures() -> Vec<Procedure> {
    Vec::new()
}
