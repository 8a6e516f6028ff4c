//! Where `fd=` option values come from: the fds a QMP connection passed (`getfd`) and the
//! fds inherited at start-up (QEMU's `monitor_fd_param`).

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

use netdevd_qmp::QmpError;

/// The fds one QMP connection holds (QEMU's per-monitor fd list).
#[derive(Default)]
pub struct Monitor {
    /// Fds that came with the latest message that carried any, not yet taken by `getfd`.
    pub pending: Vec<OwnedFd>,
    /// Fds kept by `getfd`, by name.
    pub named: BTreeMap<String, OwnedFd>,
}

/// Resolves `fd=` option values: a number is an fd inherited at start-up, anything else a
/// name kept by the calling monitor's `getfd` (QEMU's `monitor_fd_param`).
pub trait FdSource {
    /// Check that the value names an fd, without taking it.
    fn check_fd(&mut self, param: &str) -> Result<(), QmpError>;
    /// Take the fd (a named one leaves the monitor's table).
    fn take_fd(&mut self, param: &str) -> Result<OwnedFd, QmpError>;
}

fn fd_number(param: &str) -> Option<Result<i32, QmpError>> {
    if !param.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    Some(
        param
            .parse::<i32>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| QmpError::generic(format!("Invalid file descriptor number '{param}'"))),
    )
}

fn inherited(n: i32) -> Result<(), QmpError> {
    if netdevd_sys::inherited_fd_available(n) {
        Ok(())
    } else {
        Err(QmpError::generic(format!(
            "Invalid file descriptor number '{n}'"
        )))
    }
}

impl FdSource for Option<&mut Monitor> {
    fn check_fd(&mut self, param: &str) -> Result<(), QmpError> {
        if let Some(n) = fd_number(param) {
            return inherited(n?);
        }
        match self {
            Some(m) if m.named.contains_key(param) => Ok(()),
            _ => Err(QmpError::generic(format!(
                "File descriptor named '{param}' has not been found"
            ))),
        }
    }

    fn take_fd(&mut self, param: &str) -> Result<OwnedFd, QmpError> {
        if let Some(n) = fd_number(param) {
            let n = n?;
            return netdevd_sys::claim_inherited_fd(n)
                .map_err(|_| QmpError::generic(format!("Invalid file descriptor number '{n}'")));
        }
        self.as_mut()
            .and_then(|m| m.named.remove(param))
            .ok_or_else(|| {
                QmpError::generic(format!(
                    "File descriptor named '{param}' has not been found"
                ))
            })
    }
}
