//! systemd's notification protocol (`sd_notify`), with std only: `READY=1` once serving,
//! `STOPPING=1` when a shutdown begins, `RELOADING=1` when an upgrade begins, `MAINPID=` and
//! `READY=1` when it ends, and `WATCHDOG=1` keep-alives while the event loop is healthy.
//! Without `NOTIFY_SOCKET` in the environment every message is skipped.

use std::io;
use std::path::Path;
use std::time::Duration;

/// Sends `message` (newline-separated `KEY=VALUE` lines) to `NOTIFY_SOCKET`. `Ok(false)`
/// when not started by systemd.
pub(crate) fn notify(message: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    let path = Path::new(&path);
    match path.as_os_str().as_encoded_bytes().strip_prefix(b"@") {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        Some(abstract_name) => {
            #[cfg(target_os = "android")]
            use std::os::android::net::SocketAddrExt;
            #[cfg(target_os = "linux")]
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
            socket.send_to_addr(message.as_bytes(), &addr)?;
        }
        _ => {
            socket.send_to(message.as_bytes(), path)?;
        }
    }
    Ok(true)
}

/// `RELOADING=1` with the monotonic clock in microseconds, as `Type=notify-reload` wants.
pub(crate) fn reloading() -> io::Result<bool> {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}\n"))
}

/// The watchdog interval systemd asks for (`WATCHDOG_USEC`), when it is meant for this
/// process: `WATCHDOG_PID` unset, ours, or our parent's (the process that upgraded to us
/// sets it to its own pid: systemd follows the main process through `MAINPID=`).
pub(crate) fn watchdog_interval() -> Option<Duration> {
    std::env::var_os("NOTIFY_SOCKET")?;
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        let pid: u32 = pid.trim().parse().ok()?;
        let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32);
        if pid != std::process::id() && pid != parent {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}
