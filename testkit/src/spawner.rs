//! Every child process of the kit is forked by one long-lived thread.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not
//! when the process does. Tests fork from short-lived threads (each `#[test]`
//! has its own thread, tokio's blocking pool retires idle threads), so a
//! `mariadbd` forked there would be SIGKILLed in the middle of a test. Forking
//! from one thread that lives as long as the process makes the signal mean
//! exactly "the test process is gone".

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::mpsc;

struct Request {
    cmd: Command,
    reply: mpsc::SyncSender<io::Result<Child>>,
}

static SPAWNER: OnceLock<io::Result<mpsc::Sender<Request>>> = OnceLock::new();

fn spawner() -> io::Result<&'static mpsc::Sender<Request>> {
    let slot = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || serve(rx))
            .map(|_| tx)
    });
    match slot {
        Ok(tx) => Ok(tx),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot start the spawner thread: {e}"),
        )),
    }
}

fn serve(rx: mpsc::Receiver<Request>) {
    // The sender lives in a static, so this loop ends only with the process.
    for Request { mut cmd, reply } in rx {
        let parent = std::process::id();
        // SAFETY: the closure runs between fork and exec and only calls
        // async-signal-safe functions (prctl, getppid).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl.
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::other("parent exited before exec"));
                }
                Ok(())
            });
        }
        let _ = reply.send(cmd.spawn());
    }
}

/// Spawns `cmd` from the spawner thread, with `PR_SET_PDEATHSIG = SIGKILL`.
pub(crate) fn spawn(cmd: Command) -> io::Result<Child> {
    let (reply, answer) = mpsc::sync_channel(1);
    spawner()?
        .send(Request { cmd, reply })
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("the spawner thread did not answer"))?
}

/// Sends `sig` to `pid`. Errors (the process is gone) are ignored: callers
/// hold the unreaped `Child`, so the pid cannot have been reused.
pub(crate) fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: plain syscall.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Whether a process with this pid exists (for sweeping leftovers of dead test runs).
pub(crate) fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Whether the test process runs as root (then `mariadbd` needs `--user=root`).
pub(crate) fn is_root() -> bool {
    // SAFETY: plain syscall.
    unsafe { libc::geteuid() == 0 }
}

/// The effective user id (names the kit's base directory).
pub(crate) fn euid() -> u32 {
    // SAFETY: plain syscall.
    unsafe { libc::geteuid() }
}
