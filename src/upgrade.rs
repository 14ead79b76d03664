//! Zero-downtime upgrades: hand every listening socket to a new process, by name, and stop
//! accepting only once that process says it is ready (Unix).
//!
//! The sockets travel over a Unix socket with `SCM_RIGHTS` (rustix's safe `sendmsg`), not
//! as inherited descriptors: giving a child descriptors at fixed numbers needs a `pre_exec`
//! hook, which is `unsafe`, and turning a descriptor number back into a socket in the child
//! is `unsafe` too, while a received `SCM_RIGHTS` descriptor arrives as an `OwnedFd`. The
//! same channel carries the names (one per socket) and, back, the new process's readiness.
//! The child finds the channel through `BERTH_UPGRADE=<parent pid>:<path>`; it ignores the
//! variable unless its parent is that pid (a grandchild that inherited it stays out).
//!
//! The sockets are shared, not re-bound: while both processes hold a listening socket, the
//! kernel queues connects on it and either may accept them, so from the moment the new
//! process accepts until the old one stops, no connect is refused; the old one then closes
//! only its own descriptor (and leaves a Unix socket's file in place).
//!
//! Session ticket keys travel over the same channel, as one more socket under a reserved
//! name (`berth/tls-ticket-keys`): the read end of a socket pair the old process wrote the keys
//! into. So the keys are never on disk, in the environment or in argv, and a new process
//! of an older berth, which knows nothing of them, just closes that socket with the
//! handed-over sockets nobody took.
//!
//! The parent's side runs on a thread of its own (blocking I/O with timeouts), so it needs
//! no reactor and works on any runtime.
//!
//! This file holds the handover itself, both processes' sides of the channel; `start.rs`
//! runs an upgrade from the old process's side (claim it, hand over, then drain or serve
//! on), and `tickets.rs` carries the TLS ticket keys (feature `tls`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The environment variable that tells a new process where its listeners wait.
pub(crate) const ENV: &str = "BERTH_UPGRADE";
/// The first line of a handover.
const HELLO: &str = "berth-upgrade 1";
/// How many sockets one handover carries at most (Linux takes 253 per message).
pub(crate) const MAX_LISTENERS: usize = 200;
/// The reserved name of the socket that carries the TLS ticket keys.
pub(crate) const TICKET_KEYS: &str = "berth/tls-ticket-keys";
/// How often the parent looks whether the child has exited while it waits.
const POLL: Duration = Duration::from_millis(50);

mod start;
#[cfg(feature = "tls")]
mod tickets;

pub use crate::error::UpgradeError;
pub(crate) use start::{hand_over_too, serving, start};
#[cfg(feature = "tls")]
pub(crate) use tickets::import as inherited_ticket_keys;

/// What a successful upgrade did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Upgraded {
    /// The new process.
    pub pid: u32,
    /// The listeners it took over, by name.
    pub listeners: Vec<String>,
}

/// The program path as this process started, and its arguments: what an upgrade starts by
/// default. Resolved early, because once a deploy replaces the file, `current_exe` names
/// the deleted one.
pub(crate) fn remember_program() {
    program();
}

fn program() -> &'static Option<PathBuf> {
    static PROGRAM: OnceLock<Option<PathBuf>> = OnceLock::new();
    PROGRAM.get_or_init(|| std::env::current_exe().ok())
}

/// The command an upgrade runs by default: this program, from the path it was started
/// from, with the same arguments.
pub(crate) fn default_command() -> Result<Command, UpgradeError> {
    let path = program().clone().ok_or_else(|| UpgradeError::Spawn {
        program: "this program".into(),
        source: io::Error::new(io::ErrorKind::NotFound, "its path is unknown"),
    })?;
    let mut command = Command::new(path);
    command.args(std::env::args_os().skip(1).collect::<Vec<OsString>>());
    Ok(command)
}

// --- the new process's side ---------------------------------------------------------------

/// The channel to the process this one replaces: once every listener is adopted or bound
/// and accepting, [`ready`](Self::ready) lets it stop.
#[derive(Debug)]
pub(crate) struct Inherited {
    channel: UnixStream,
}

impl Inherited {
    /// Tells the old process that every listener is adopted or bound and accepting. The
    /// handed-over sockets nobody took are closed now.
    pub(crate) fn ready(mut self) -> io::Result<()> {
        handed().sockets.clear();
        writeln!(self.channel, "ready {}", std::process::id())?;
        self.channel.flush()
    }
}

/// What the process this one replaces handed over, process-wide.
#[derive(Default)]
struct Handed {
    /// Whether the handover was received (or found absent).
    loaded: bool,
    channel: Option<UnixStream>,
    sockets: BTreeMap<String, OwnedFd>,
}

static HANDED: Mutex<Handed> = Mutex::new(Handed {
    loaded: false,
    channel: None,
    sockets: BTreeMap::new(),
});

fn handed() -> std::sync::MutexGuard<'static, Handed> {
    crate::sync::lock(&HANDED)
}

/// Receives the handover, once per process, if an upgrade started this process.
fn load(handed: &mut Handed) -> io::Result<()> {
    if handed.loaded {
        return Ok(());
    }
    handed.loaded = true;
    let Some(value) = std::env::var_os(ENV) else {
        return Ok(());
    };
    let value = value.to_string_lossy().into_owned();
    let Some((parent, path)) = value.split_once(':') else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{ENV}={value:?} is not PID:PATH"),
        ));
    };
    if parent.parse::<u32>().ok() != Some(std::os::unix::process::parent_id()) {
        // Inherited from a process further up: not for us.
        return Ok(());
    }
    let channel = UnixStream::connect(path)?;
    channel.set_read_timeout(Some(Duration::from_secs(30)))?;
    let (names, fds) = receive(&channel)?;
    if names.len() != fds.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} names for {} sockets", names.len(), fds.len()),
        ));
    }
    handed.channel = Some(channel);
    handed.sockets = names.into_iter().zip(fds).collect();
    Ok(())
}

/// The handed-over listening sockets whose names `names` lists, and the channel to say
/// "ready" on, for the first server that binds in a process an upgrade started. `None`
/// when this process was not started by an upgrade (or another server took the channel).
pub(crate) fn inherit(
    names: &[String],
) -> io::Result<Option<(Inherited, BTreeMap<String, OwnedFd>)>> {
    let mut handed = handed();
    load(&mut handed)?;
    // The channel goes to the server whose sockets were handed over (another server in the
    // same process that binds first takes nothing).
    let theirs = handed.sockets.is_empty() || names.iter().any(|n| handed.sockets.contains_key(n));
    if !theirs {
        return Ok(None);
    }
    let Some(channel) = handed.channel.take() else {
        return Ok(None);
    };
    let listeners = names
        .iter()
        .filter_map(|name| Some((name.clone(), handed.sockets.remove(name)?)))
        .collect();
    Ok(Some((Inherited { channel }, listeners)))
}

/// A socket of your own (a metrics or admin port) that the process this one replaces
/// handed over under `name` (see [`ServerHandle::hand_over_too`](crate::ServerHandle::hand_over_too)):
/// serve it instead of binding the port again, which the old process still holds. Take it
/// before the server serves: sockets nobody took are closed then. `None` when this process
/// was not started by an upgrade, or nothing was handed over under that name.
///
/// ```no_run
/// # fn f() -> std::io::Result<()> {
/// let metrics = match berth::upgrade::take_socket("metrics")? {
///     Some(fd) => std::net::TcpListener::from(fd),
///     None => std::net::TcpListener::bind("127.0.0.1:9000")?,
/// };
/// # let _ = metrics; Ok(()) }
/// ```
pub fn take_socket(name: &str) -> io::Result<Option<OwnedFd>> {
    let mut handed = handed();
    load(&mut handed)?;
    Ok(handed.sockets.remove(name))
}

fn receive(channel: &UnixStream) -> io::Result<(Vec<String>, Vec<OwnedFd>)> {
    let mut payload = vec![0u8; 64 * 1024];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        channel,
        &mut [IoSliceMut::new(&mut payload)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    let text = String::from_utf8_lossy(&payload[..received.bytes]);
    let mut lines = text.lines();
    if lines.next() != Some(HELLO) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a berth upgrade handover",
        ));
    }
    Ok((lines.map(str::to_owned).collect(), fds))
}

// --- the old process's side ---------------------------------------------------------------

/// Starts `command` with the handover channel announced, hands it `listeners`, and waits
/// (at most `timeout`) until it says it is ready. On failure the child is killed and
/// reaped. Blocking: run it on a thread of its own.
pub(crate) fn hand_over(
    mut command: Command,
    listeners: &[(String, OwnedFd)],
    timeout: Duration,
) -> Result<(u32, Child), UpgradeError> {
    let deadline = Instant::now() + timeout;
    let dir = Channel::new().map_err(UpgradeError::Channel)?;
    command.env(
        ENV,
        format!("{}:{}", std::process::id(), dir.socket().display()),
    );
    // systemd's watchdog follows the main process: the new one answers for this one (it
    // accepts a WATCHDOG_PID of its parent), generation after generation.
    if std::env::var_os("WATCHDOG_PID").is_some() {
        command.env("WATCHDOG_PID", std::process::id().to_string());
    }
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .spawn()
        .map_err(|source| UpgradeError::Spawn { program, source })?;
    match talk(&dir, &mut child, listeners, deadline, timeout) {
        Ok(pid) => Ok((pid, child)),
        Err(e) => {
            stop_child(child);
            Err(e)
        }
    }
}

/// Kills and reaps a new process that must not serve.
pub(crate) fn stop_child(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn talk(
    dir: &Channel,
    child: &mut Child,
    listeners: &[(String, OwnedFd)],
    deadline: Instant,
    timeout: Duration,
) -> Result<u32, UpgradeError> {
    let exited = |child: &mut Child| -> Result<(), UpgradeError> {
        match child.try_wait() {
            Ok(Some(status)) => Err(UpgradeError::Exited(status.to_string())),
            Ok(None) => Ok(()),
            Err(e) => Err(UpgradeError::Channel(e)),
        }
    };
    // Wait for the child to connect, looking every POLL whether it died.
    let stream = loop {
        exited(child)?;
        if Instant::now() >= deadline {
            return Err(UpgradeError::Timeout(timeout));
        }
        match dir.listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if waited(&e) => {}
            Err(e) => return Err(UpgradeError::Channel(e)),
        }
    };
    send(&stream, listeners).map_err(UpgradeError::Channel)?;
    stream
        .set_read_timeout(Some(POLL))
        .map_err(UpgradeError::Channel)?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        match reader.read_line(&mut line) {
            Ok(0) => {
                // It closed the channel without a word: it failed, or is failing.
                let _ = wait_briefly(child);
                exited(child)?;
                return Err(UpgradeError::Exited(
                    "it closed the handover channel before it was ready".into(),
                ));
            }
            Ok(_) if line.ends_with('\n') => {
                let pid = line
                    .trim()
                    .strip_prefix("ready ")
                    .and_then(|pid| pid.parse().ok())
                    .ok_or_else(|| {
                        UpgradeError::Channel(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("unexpected message {line:?}"),
                        ))
                    })?;
                return Ok(pid);
            }
            Ok(_) => {}
            Err(e) if waited(&e) => {}
            Err(e) => return Err(UpgradeError::Channel(e)),
        }
        exited(child)?;
        if Instant::now() >= deadline {
            return Err(UpgradeError::Timeout(timeout));
        }
    }
}

/// Whether `e` only says that a timed wait ran out (or was interrupted): wait again.
fn waited(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Waits a moment for a child that closed its end to exit, so its status can be reported.
fn wait_briefly(child: &mut Child) -> io::Result<()> {
    let until = Instant::now() + Duration::from_secs(1);
    while child.try_wait()?.is_none() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn send(stream: &UnixStream, listeners: &[(String, OwnedFd)]) -> io::Result<()> {
    let mut text = String::from(HELLO);
    for (name, _) in listeners {
        text.push('\n');
        text.push_str(name);
    }
    let fds: Vec<_> = listeners.iter().map(|(_, fd)| fd.as_fd()).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("too many listeners for one handover"));
    }
    let sent = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(text.as_bytes())],
        &mut control,
        SendFlags::empty(),
    )?;
    if sent != text.len() {
        return Err(io::Error::other("the handover message was cut short"));
    }
    Ok(())
}

/// A private directory holding the handover socket; removed with it.
struct Channel {
    dir: PathBuf,
    listener: UnixListener,
}

impl Channel {
    fn new() -> io::Result<Channel> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        // A name nobody can guess and squat (another local user could make upgrades fail),
        // created fresh, private.
        let dir = loop {
            use std::hash::BuildHasher as _;
            let random = std::collections::hash_map::RandomState::new()
                .hash_one((std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
            let dir = std::env::temp_dir().join(format!("berth-upgrade-{random:016x}"));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        };
        let listener = UnixListener::bind(dir.join("s"))?;
        // Accept with a timeout, so the wait can look whether the child died.
        socket2::SockRef::from(&listener).set_read_timeout(Some(POLL))?;
        Ok(Channel { dir, listener })
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("s")
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Checks a name for a socket handed over: not empty, one line of printable text, not
/// reserved.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(char::is_control) && name != TICKET_KEYS
}
