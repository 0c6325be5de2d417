//! The log file of a process: opened once, appended to by every log line, and reopened
//! at the same path on SIGUSR1 (after logrotate moved it away).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

#[derive(Debug)]
struct Open {
    path: PathBuf,
    file: File,
}

/// The process's log file (none until [`open`] is called).
static CURRENT: OnceLock<Mutex<Open>> = OnceLock::new();

fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn current() -> Option<MutexGuard<'static, Open>> {
    // A panic while writing a line cannot leave the handle inconsistent.
    CURRENT.get().map(crate::sync::lock)
}

/// Opens `path` for appending as the process's log file.
pub fn open(path: &Path) -> std::io::Result<()> {
    let file = append(path)?;
    let open = Open {
        path: path.to_owned(),
        file,
    };
    // Already open only in tests that initialise twice: the first stays.
    let _ = CURRENT.set(Mutex::new(open));
    Ok(())
}

/// Reopens the log file at its path; `Ok(false)` when logging goes to stderr.
pub fn reopen() -> std::io::Result<bool> {
    let Some(mut open) = current() else {
        return Ok(false);
    };
    open.file = append(&open.path)?;
    Ok(true)
}

/// A writer for one log line: the file if one is open (locked for the line), else stderr.
#[derive(Debug)]
pub struct LineWriter(Target);

#[derive(Debug)]
enum Target {
    File(MutexGuard<'static, Open>),
    Stderr(std::io::Stderr),
}

/// Returns the writer for the next line.
pub fn line() -> LineWriter {
    LineWriter(match current() {
        Some(open) => Target::File(open),
        None => Target::Stderr(std::io::stderr()),
    })
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.0 {
            Target::File(open) => open.file.write(buf),
            Target::Stderr(err) => err.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.0 {
            Target::File(open) => open.file.flush(),
            Target::Stderr(err) => err.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopen_follows_the_path_after_a_rename() {
        let dir = std::env::temp_dir().join(format!("genro-logfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.log");
        open(&path).unwrap();
        writeln!(line(), "one").unwrap();
        std::fs::rename(&path, dir.join("a.log.1")).unwrap();
        writeln!(line(), "two").unwrap();
        assert!(reopen().unwrap());
        writeln!(line(), "three").unwrap();
        let old = std::fs::read_to_string(dir.join("a.log.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(old, "one\ntwo\n");
        assert_eq!(new, "three\n");
    }
}
