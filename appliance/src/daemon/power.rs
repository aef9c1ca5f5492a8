//! Reboot and factory reset, which only the image can do: there the
//! daemon runs under Moat's init (PID 1), which reboots on SIGTERM and, at
//! the next boot, wipes `/data` when the daemon left it the request.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{Daemon, DaemonError};
use crate::init::SUPERVISED_VAR;
use crate::store::{Access, files};

/// How long the answer to the request has to leave before init stops
/// the daemon.
const GRACE: Duration = Duration::from_secs(1);

impl Daemon {
    /// Asks init to reboot the appliance, a second from now.
    pub fn reboot(&self) -> Result<(), DaemonError> {
        supervised("reboot")?;
        tracing::warn!("reboot asked from the control plane");
        reboot_soon();
        Ok(())
    }

    /// Asks init to wipe everything but the image at the next boot, and
    /// reboots a second from now.
    pub fn factory_reset(&self) -> Result<(), DaemonError> {
        supervised("factory reset")?;
        let request = b"asked from the control plane\n";
        self.data
            .write(files::FACTORY_RESET, request, Access::Public)?;
        tracing::warn!("factory reset asked from the control plane; rebooting");
        reboot_soon();
        Ok(())
    }
}

fn supervised(what: &'static str) -> Result<(), DaemonError> {
    match std::env::var_os(SUPERVISED_VAR) {
        Some(_) => Ok(()),
        None => Err(DaemonError::NotOnImage(what)),
    }
}

fn reboot_soon() {
    std::thread::spawn(|| {
        std::thread::sleep(GRACE);
        if let Err(err) = kill(Pid::from_raw(1), Signal::SIGTERM) {
            tracing::error!(error = %err, "init did not take the reboot signal");
        }
    });
}
