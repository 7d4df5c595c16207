//! Where the binaries are, where instances live, and sweeping what dead test
//! runs left behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Once, OnceLock};

use crate::error::{Result, TestkitError, io_err};
use crate::spawner::{euid, pid_alive};

/// Environment variable: path of `mariadbd` (overrides the search).
pub const ENV_MARIADBD: &str = "TESTKIT_MARIADBD";
/// Environment variable: path of `mariadb-install-db` (overrides the search).
pub const ENV_INSTALL_DB: &str = "TESTKIT_INSTALL_DB";
/// Environment variable: base directory for instances (default `$TMPDIR/phx-testkit-<uid>`).
pub const ENV_DIR: &str = "TESTKIT_DIR";

/// The MariaDB programs the kit runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The server.
    pub mariadbd: PathBuf,
    /// The data-directory initializer.
    pub install_db: PathBuf,
}

const MARIADBD_PLACES: &[&str] = &[
    "/usr/sbin/mariadbd",
    "/usr/local/sbin/mariadbd",
    "/usr/libexec/mariadbd",
    "/usr/local/mysql/bin/mariadbd",
    "/usr/local/bin/mariadbd",
    "/opt/homebrew/bin/mariadbd",
];
const INSTALL_DB_PLACES: &[&str] = &[
    "/usr/bin/mariadb-install-db",
    "/usr/local/bin/mariadb-install-db",
    "/usr/local/mysql/scripts/mariadb-install-db",
    "/usr/local/mysql/bin/mariadb-install-db",
    "/opt/homebrew/bin/mariadb-install-db",
];

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn find(program: &'static str, env: &str, places: &[&str]) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        if is_executable(&p) {
            return Ok(p);
        }
        return Err(TestkitError::MissingBinary {
            program,
            looked: format!("{env}={}", p.display()),
        });
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(program);
            if is_executable(&p) {
                return Ok(p);
            }
        }
    }
    for place in places {
        let p = PathBuf::from(place);
        if is_executable(&p) {
            return Ok(p);
        }
    }
    Err(TestkitError::MissingBinary {
        program,
        looked: places.join(", "),
    })
}

/// Locates `mariadbd` and `mariadb-install-db`: `$TESTKIT_MARIADBD` /
/// `$TESTKIT_INSTALL_DB`, then PATH, then the usual install places
/// (`/usr/sbin/mariadbd`, `/usr/bin/mariadb-install-db`, ...).
///
/// Missing programs give [`TestkitError::MissingBinary`], whose message says
/// how to install them.
pub fn binaries() -> Result<Binaries> {
    static FOUND: OnceLock<Binaries> = OnceLock::new();
    if let Some(b) = FOUND.get() {
        return Ok(b.clone());
    }
    let b = Binaries {
        mariadbd: find("mariadbd", ENV_MARIADBD, MARIADBD_PLACES)?,
        install_db: find("mariadb-install-db", ENV_INSTALL_DB, INSTALL_DB_PLACES)?,
    };
    Ok(FOUND.get_or_init(|| b).clone())
}

/// Unix socket paths are limited to 107 bytes; the instance's socket is
/// `<base>/inst-<pid>-XXXXXX/mysqld.sock`, about 40 bytes more than `<base>`.
const MAX_BASE_LEN: usize = 64;

/// The kit's base directory (created on first use): `$TESTKIT_DIR`, else
/// `$TMPDIR/phx-testkit-<uid>` (or `/tmp/...` when `$TMPDIR` is too long for
/// a Unix socket path). The first call in a process also sweeps leftovers of
/// test processes that died without cleaning up (SIGKILL, abort).
pub fn base_dir() -> Result<PathBuf> {
    let base = match std::env::var_os(ENV_DIR) {
        Some(d) => PathBuf::from(d),
        None => {
            let name = format!("phx-testkit-{}", euid());
            let tmp = std::env::temp_dir().join(&name);
            if tmp.as_os_str().len() <= MAX_BASE_LEN {
                tmp
            } else {
                PathBuf::from("/tmp").join(name)
            }
        }
    };
    if base.as_os_str().len() > MAX_BASE_LEN {
        return Err(TestkitError::Config(format!(
            "base directory {} is too long for a Unix socket path (max {MAX_BASE_LEN} bytes); set {ENV_DIR}",
            base.display()
        )));
    }
    fs::create_dir_all(&base).map_err(io_err(format!("creating {}", base.display())))?;
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| sweep(&base));
    Ok(base)
}

/// Name of the marker file that keeps a directory from being swept (`TESTKIT_KEEP`).
pub(crate) const KEEP_MARKER: &str = "KEEP";

/// The pid in a leftover's name: `inst-<pid>-...` or `<key>.build-<pid>`.
fn owner_pid(name: &str) -> Option<u32> {
    if let Some(rest) = name.strip_prefix("inst-") {
        return rest.split('-').next()?.parse().ok();
    }
    name.rsplit_once(".build-")?.1.parse().ok()
}

/// Removes instance and template-build directories whose process is dead.
fn sweep(base: &Path) {
    let me = std::process::id();
    for dir in [base.to_path_buf(), base.join("templates")] {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(owner_pid) else {
                continue;
            };
            let path = entry.path();
            if pid == me || pid_alive(pid) || path.join(KEEP_MARKER).exists() {
                continue;
            }
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// Reads the end of a file from `offset`: at most `lines` lines.
pub(crate) fn tail_from(path: &Path, offset: u64, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        // Read at most the last 64 KiB after the offset.
        let start = offset.max(len.saturating_sub(64 * 1024));
        if f.seek(SeekFrom::Start(start)).is_ok() {
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A file's length, 0 when it does not exist.
pub(crate) fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Copies a directory tree (the template data directory). Files are copied
/// sparsely: InnoDB's fresh redo log and system tablespace are almost all
/// zeros (3 MB of data in 50 MB of files), so this writes little.
pub(crate) fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            copy_sparse(&entry.path(), &target)?;
        }
    }
    Ok(())
}

fn copy_sparse(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    const CHUNK: usize = 64 * 1024;
    let mut src = fs::File::open(from)?;
    let meta = src.metadata()?;
    let mut dst = fs::File::create(to)?;
    let mut buf = vec![0u8; CHUNK];
    let mut len: u64 = 0;
    loop {
        let mut filled = 0;
        while filled < CHUNK {
            match src.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        let chunk = &buf[..filled];
        if chunk.iter().all(|&b| b == 0) {
            dst.seek(SeekFrom::Current(i64::try_from(filled).unwrap_or(i64::MAX)))?;
        } else {
            dst.write_all(chunk)?;
        }
        len += filled as u64;
        if filled < CHUNK {
            break;
        }
    }
    dst.set_len(len)?;
    fs::set_permissions(to, meta.permissions())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn sparse_copy_keeps_content_and_length() {
        #![allow(clippy::unwrap_used)]
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(src.join("sub")).unwrap();
        let mut data = vec![0u8; 300 * 1024];
        data[70_000] = 1;
        data[300 * 1024 - 1] = 2;
        std::fs::write(src.join("sub/a"), &data).unwrap();
        std::fs::write(src.join("zeros"), vec![0u8; 200 * 1024 + 5]).unwrap();
        std::fs::write(src.join("small"), b"hello").unwrap();
        super::copy_dir(&src, &dst).unwrap();
        assert_eq!(std::fs::read(dst.join("sub/a")).unwrap(), data);
        assert_eq!(
            std::fs::read(dst.join("zeros")).unwrap(),
            vec![0u8; 200 * 1024 + 5]
        );
        assert_eq!(std::fs::read(dst.join("small")).unwrap(), b"hello");
    }

    #[test]
    fn leftover_names() {
        assert_eq!(owner_pid("inst-1234-abcDEF"), Some(1234));
        assert_eq!(owner_pid("0123abcd.build-77"), Some(77));
        assert_eq!(owner_pid("ports"), None);
        assert_eq!(owner_pid("templates"), None);
        assert_eq!(owner_pid("0123abcd"), None);
    }
}
