//! Opening a file below a mount's directory without leaving it. The directory is opened
//! once (`O_PATH`) when the worker starts, and every file relative to that descriptor:
//! with `openat2(2)` and `RESOLVE_BENEATH` (Linux 5.6+), the kernel refuses any
//! resolution that would leave the directory, `..` or a symbolic link alike; links that
//! stay inside are followed. Where the kernel (or a seccomp filter) refuses `openat2`, the
//! file is opened with `openat` and its real path (`/proc/self/fd/N`) must be under the
//! directory's. A `follow_symlinks` mount opens with `openat` alone: its names hold no
//! `..` (`path.rs`), so only a link can lead out, which that mount allows.
//!
//! Files are opened `O_NONBLOCK` (a FIFO under the directory must not block the opener)
//! and must be regular files: a directory, a device or a FIFO is "not a file here".

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The kernel refused `openat2` once (ENOSYS, or EPERM from a seccomp filter): use the
/// fallback from then on.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Flags every file is opened with.
const FLAGS: libc::c_int = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;

/// A mount's directory, held open.
#[derive(Debug)]
pub(crate) struct Root {
    dir: OwnedFd,
    /// Its real path (symbolic links resolved), for the fallback's check.
    real: PathBuf,
    follow_symlinks: bool,
}

/// A regular file opened under a [`Root`], with what its response needs of its metadata.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) file: File,
    pub(crate) len: u64,
    /// Modification time: seconds and nanoseconds since the epoch.
    pub(crate) mtime: (i64, i64),
}

/// Why a name has no file to serve.
#[derive(Debug)]
pub(crate) enum Miss {
    /// No regular file there, or one the mount may not reach (a link out of it, a
    /// permission refused): the same answer as a missing file.
    Absent,
    /// Something else went wrong (descriptors exhausted, an I/O error): a server error.
    Failed(io::Error),
}

impl Root {
    /// Opens the directory `dir`.
    pub(crate) fn open(dir: &Path, follow_symlinks: bool) -> io::Result<Root> {
        let real = std::fs::canonicalize(dir)?;
        let path = CString::new(real.as_os_str().as_bytes())?;
        // SAFETY: `path` is a valid C string for the call.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Root {
            // SAFETY: `fd` was just opened and is owned by nothing else.
            dir: unsafe { OwnedFd::from_raw_fd(fd) },
            real,
            follow_symlinks,
        })
    }

    /// Opens `name` (a relative name from `path.rs`) for reading. Blocking, but only on
    /// metadata: the directory entries and the inode, usually cached.
    pub(crate) fn open_file(&self, name: &[u8]) -> Result<Opened, Miss> {
        let name = CString::new(name).map_err(|_| Miss::Absent)?;
        let fd = if self.follow_symlinks {
            self.openat(&name)
        } else if NO_OPENAT2.load(Ordering::Relaxed) {
            self.open_checked(&name)
        } else {
            match self.openat2(&name) {
                Err(err) if matches!(err.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
                    NO_OPENAT2.store(true, Ordering::Relaxed);
                    tracing::info!("openat2(2) is not available ({err}): static files are checked through /proc/self/fd after opening instead");
                    self.open_checked(&name)
                }
                other => other,
            }
        };
        let file = fd.map(File::from).map_err(classify)?;
        let meta = stat(&file).map_err(Miss::Failed)?;
        if meta.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Miss::Absent);
        }
        Ok(Opened {
            file,
            len: u64::try_from(meta.st_size).unwrap_or(0),
            mtime: (meta.st_mtime, meta.st_mtime_nsec),
        })
    }

    fn openat(&self, name: &CString) -> io::Result<OwnedFd> {
        // SAFETY: the directory descriptor is open; `name` is a valid C string.
        let fd = unsafe { libc::openat(self.dir.as_raw_fd(), name.as_ptr(), FLAGS) };
        owned(fd as libc::c_long)
    }

    fn openat2(&self, name: &CString) -> io::Result<OwnedFd> {
        // SAFETY: a zeroed open_how is valid (no flags); the fields are set below.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = FLAGS as u64;
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: the directory descriptor is open, `name` is a valid C string and `how`
        // a valid open_how of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.dir.as_raw_fd(),
                name.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        owned(fd)
    }

    /// The fallback without `openat2`: open, then refuse the file unless its real path is
    /// below the directory's. Checking what was opened (not the name before opening)
    /// leaves no window for a link swapped in between.
    fn open_checked(&self, name: &CString) -> io::Result<OwnedFd> {
        let fd = self.openat(name)?;
        let real = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        if real.starts_with(&self.real) && real != self.real {
            Ok(fd)
        } else {
            Err(io::Error::from_raw_os_error(libc::EXDEV))
        }
    }
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

fn stat(file: &File) -> io::Result<libc::stat> {
    // SAFETY: a zeroed stat is valid for fstat to fill.
    let mut meta: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open and `meta` is writable.
    if unsafe { libc::fstat(file.as_raw_fd(), &mut meta) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(meta)
}

/// Which open errors mean "no file to serve here" (answered like a missing file) and
/// which are the server's trouble.
fn classify(err: io::Error) -> Miss {
    match err.raw_os_error() {
        Some(
            libc::ENOENT
            | libc::ENOTDIR
            | libc::EXDEV
            | libc::ELOOP
            | libc::ENAMETOOLONG
            | libc::EACCES
            | libc::EPERM
            | libc::ENXIO
            | libc::ENODEV
            | libc::EISDIR,
        ) => Miss::Absent,
        _ => Miss::Failed(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Tree(PathBuf);

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// root/{file.txt, sub/inner.txt, in -> sub/inner.txt, out -> ../secret.txt,
    /// abs -> /etc/hostname, subdir -> sub, fifo}, secret.txt beside root.
    fn tree(tag: &str) -> Tree {
        let base = std::env::temp_dir().join(format!("genro-static-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub")).expect("mkdir");
        std::fs::write(root.join("file.txt"), "file").expect("write");
        std::fs::write(root.join("sub/inner.txt"), "inner").expect("write");
        std::fs::write(base.join("secret.txt"), "secret").expect("write");
        symlink("sub/inner.txt", root.join("in")).expect("symlink");
        symlink("../secret.txt", root.join("out")).expect("symlink");
        symlink(base.join("secret.txt"), root.join("abs")).expect("symlink");
        symlink("sub", root.join("subdir")).expect("symlink");
        let fifo = CString::new(root.join("fifo").as_os_str().as_bytes()).expect("path");
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        Tree(base)
    }

    fn read(root: &Root, name: &str) -> Option<String> {
        match root.open_file(name.as_bytes()) {
            Ok(mut opened) => {
                let mut text = String::new();
                io::Read::read_to_string(&mut opened.file, &mut text).expect("read");
                assert_eq!(opened.len, text.len() as u64);
                Some(text)
            }
            Err(Miss::Absent) => None,
            Err(Miss::Failed(err)) => panic!("{name}: {err}"),
        }
    }

    fn check(root: &Root, follow: bool) {
        let cases = [
            ("file.txt", Some("file")),
            ("sub/inner.txt", Some("inner")),
            ("in", Some("inner")),
            ("subdir/inner.txt", Some("inner")),
            ("out", follow.then_some("secret")),
            ("abs", follow.then_some("secret")),
            ("sub", None),
            ("fifo", None),
            ("missing", None),
            ("file.txt/x", None),
        ];
        for (name, want) in cases {
            assert_eq!(
                read(root, name).as_deref(),
                want,
                "{name} (follow {follow})"
            );
        }
    }

    #[test]
    fn links_out_of_the_directory_are_refused_unless_followed() {
        let tree = tree("open");
        let dir = tree.0.join("root");
        check(&Root::open(&dir, false).expect("root"), false);
        check(&Root::open(&dir, true).expect("root"), true);
    }

    #[test]
    fn the_fallback_without_openat2_refuses_the_same_links() {
        let tree = tree("fallback");
        let root = Root::open(&tree.0.join("root"), false).expect("root");
        let open = |name: &str| {
            let name = CString::new(name).expect("name");
            root.open_checked(&name).map(|_| ()).map_err(classify)
        };
        for name in ["file.txt", "in", "sub/inner.txt", "subdir/inner.txt"] {
            assert!(open(name).is_ok(), "{name}");
        }
        for name in ["out", "abs", "missing"] {
            assert!(matches!(open(name), Err(Miss::Absent)), "{name}");
        }
    }

    #[test]
    fn a_root_reached_through_a_link_is_its_target() {
        let tree = tree("linked");
        symlink(tree.0.join("root"), tree.0.join("alias")).expect("symlink");
        let root = Root::open(&tree.0.join("alias"), false).expect("root");
        assert_eq!(read(&root, "in").as_deref(), Some("inner"));
        assert_eq!(read(&root, "out"), None);
    }
}
