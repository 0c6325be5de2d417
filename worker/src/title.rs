//! The worker's process title (`genro-asgi: worker 0 [name]` in `ps`, `top`, `pgrep -f`).
//!
//! The supervisor cannot give it as argv[0]: CPython finds a virtualenv (and so its
//! `sys.prefix` and site-packages) from the path it was started as. So the worker starts
//! as `<venv>/bin/python -m genro_asgi_worker ... --title TITLE` and then writes the title
//! over its own argument area, the memory `/proc/<pid>/cmdline` reads (as setproctitle
//! does). The title is one of those arguments, so it always fits. The kernel's short name
//! (`comm`, 15 bytes) is set too.

/// Sets this process's title; a failure leaves the plain command line.
pub fn set(title: &str) -> std::io::Result<()> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let (start, end) = argument_area(&stat)
        .ok_or_else(|| std::io::Error::other("no argument area in /proc/self/stat"))?;
    let len = end.saturating_sub(start);
    if len == 0 {
        return Err(std::io::Error::other("empty argument area"));
    }
    let bytes = title.as_bytes();
    // Keep the area's last byte NUL: the kernel then shows exactly the area.
    let n = bytes.len().min(len - 1);
    // SAFETY: [start, end) is this process's own argument area, mapped and writable (the
    // initial stack), as the kernel reports it. CPython copied argv into its own strings
    // at start-up (sys.argv, sys.orig_argv) and reads the area no more. Rust's
    // `std::env::args()` and glibc's `program_invocation_name` still point into it and
    // would now read the title; nothing in the worker reads them.
    unsafe {
        let area = start as *mut u8;
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), area, n);
        std::ptr::write_bytes(area.add(n), 0, len - n);
    }
    let comm = std::ffi::CString::new(short_name(title)).unwrap_or_default();
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes, which
    // `comm` is.
    unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr()) };
    Ok(())
}

/// `arg_start` and `arg_end`: fields 48 and 49 of `/proc/<pid>/stat` (proc(5)), counted
/// after the command name, which may itself hold spaces and parentheses.
fn argument_area(stat: &str) -> Option<(usize, usize)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(48 - 3);
    let start = fields.next()?.parse().ok()?;
    let end = fields.next()?.parse().ok()?;
    Some((start, end))
}

/// `genro-asgi: worker 3 [shop]` -> `genro-worker-3` (the kernel keeps 15 bytes).
fn short_name(title: &str) -> String {
    let mut name = match title.split_whitespace().nth(2) {
        Some(slot) if title.contains(": worker ") => format!("genro-worker-{slot}"),
        _ => "genro-worker".to_owned(),
    };
    name.truncate(15);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_argument_area_after_an_odd_command_name() {
        // pid (comm) state ppid ... : 52 fields in all; fields 48 and 49 hold 1000 / 1064.
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[48 - 3] = "1000".into();
        fields[49 - 3] = "1064".into();
        let stat = format!("42 (a (b) c) {}", fields.join(" "));
        assert_eq!(argument_area(&stat), Some((1000, 1064)));
        assert_eq!(argument_area("42 (x) S 1"), None);
    }

    #[test]
    fn the_live_area_is_found() {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let (start, end) = argument_area(&stat).unwrap();
        let cmdline = std::fs::read("/proc/self/cmdline").unwrap();
        assert_eq!(end - start, cmdline.len());
    }

    #[test]
    fn short_names() {
        assert_eq!(short_name("genro-asgi: worker 3 [shop]"), "genro-worker-3");
        assert_eq!(short_name("genro-asgi: worker 12345"), "genro-worker-12");
        assert_eq!(short_name("something"), "genro-worker");
    }
}
