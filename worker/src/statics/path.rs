//! Which mount a request path falls under, and the file name below it. The path's
//! segments are percent-decoded one at a time (so `/%73tatic` is under `/static`, and an
//! encoded `/` never separates segments), and every name a file server must not follow is
//! refused: dot segments raw or encoded (`..`, `%2e%2e`), encoded slashes (`%2f`), NUL,
//! backslashes, empty segments (`//`, a trailing `/`), names starting with `.` (dotfiles,
//! which also covers `.` and `..`) and invalid percent-encoding. What is left is a
//! relative name of plain segments, which cannot climb out of the mount's directory by
//! itself; symbolic links are the opener's business (`open.rs`).

use std::borrow::Cow;

/// A mount's prefix as decoded segments (`/` alone: none).
pub(crate) type Prefix = Vec<Vec<u8>>;

/// Splits a normal-form prefix (`genro_config::statics::prefix`) into its segments.
pub(crate) fn prefix_segments(prefix: &str) -> Prefix {
    (prefix.split('/'))
        .filter(|s| !s.is_empty())
        .map(|s| s.as_bytes().to_vec())
        .collect()
}

/// What a request path comes to under the mounts.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Under no mount.
    Outside,
    /// Under the mount at this index, at a name that is not a file's: the mount itself, an
    /// empty segment or a refused one.
    Refused(usize),
    /// Under the mount at this index: the file's name, relative, segments joined by `/`.
    File(usize, Vec<u8>),
}

/// The mount (the first of `prefixes` that matches: list them longest first) and file
/// name of the origin-form `path` (`uri.path()`, still percent-encoded).
pub(crate) fn lookup(prefixes: &[Prefix], path: &str) -> Lookup {
    let Some(rest) = path.strip_prefix('/') else {
        return Lookup::Outside;
    };
    let segments: Vec<&str> = rest.split('/').collect();
    for (index, prefix) in prefixes.iter().enumerate() {
        if prefix.len() > segments.len() {
            continue;
        }
        let (head, tail) = segments.split_at(prefix.len());
        let under = (prefix.iter().zip(head))
            .all(|(want, got)| decode(got).is_some_and(|got| *got == **want));
        if under {
            return match name(tail) {
                Some(name) => Lookup::File(index, name),
                None => Lookup::Refused(index),
            };
        }
    }
    // What the app would be handed: the whole path decoded (an encoded `/` separates
    // there) and, as frameworks that merge slashes see it, without empty segments. A path
    // under a mount only that way (`/static%2Fx`, `//static/x`) names no file here, but
    // an exclusive mount must still keep it from the app.
    if let Some(decoded) = decode(rest) {
        let segments: Vec<&[u8]> = (decoded.split(|b| *b == b'/'))
            .filter(|s| !s.is_empty())
            .collect();
        for (index, prefix) in prefixes.iter().enumerate() {
            let under = prefix.len() <= segments.len()
                && (prefix.iter().zip(&segments)).all(|(want, got)| want.as_slice() == *got);
            if under {
                return Lookup::Refused(index);
            }
        }
    }
    Lookup::Outside
}

/// The relative file name of `segments`, or `None` if one of them is refused.
fn name(segments: &[&str]) -> Option<Vec<u8>> {
    if segments.is_empty() {
        return None;
    }
    let mut name = Vec::with_capacity(segments.iter().map(|s| s.len() + 1).sum());
    for segment in segments {
        let segment = decode(segment)?;
        let refused = segment.is_empty()
            || segment[0] == b'.'
            || segment.iter().any(|b| matches!(b, b'/' | b'\\' | 0));
        if refused {
            return None;
        }
        if !name.is_empty() {
            name.push(b'/');
        }
        name.extend_from_slice(&segment);
    }
    Some(name)
}

/// Percent-decodes one segment strictly: `%` must be followed by two hex digits.
fn decode(segment: &str) -> Option<Cow<'_, [u8]>> {
    let bytes = segment.as_bytes();
    if !bytes.contains(&b'%') {
        return Some(Cow::Borrowed(bytes));
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let high = hex(*bytes.get(at + 1)?)?;
            let low = hex(*bytes.get(at + 2)?)?;
            out.push(high << 4 | low);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    Some(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixes() -> Vec<Prefix> {
        ["/static/big", "/static", "/media", "/"]
            .iter()
            .map(|p| prefix_segments(p))
            .collect()
    }

    fn file(index: usize, name: &str) -> Lookup {
        Lookup::File(index, name.as_bytes().to_vec())
    }

    #[test]
    fn paths_to_mounts_and_names() {
        let cases = [
            ("/static/app.js", file(1, "app.js")),
            ("/static/css/site.css", file(1, "css/site.css")),
            ("/static/big/video.mp4", file(0, "video.mp4")),
            ("/static/bigger.js", file(1, "bigger.js")),
            ("/%73tatic/app.js", file(1, "app.js")),
            ("/static/a%20b.txt", file(1, "a b.txt")),
            ("/static/caf%C3%A9.txt", file(1, "café.txt")),
            ("/media/x", file(2, "x")),
            ("/mediax/y", file(3, "mediax/y")),
            ("/favicon.ico", file(3, "favicon.ico")),
            ("/static/..%2f/x", Lookup::Refused(1)),
            ("*", Lookup::Outside),
            ("", Lookup::Outside),
        ];
        for (path, want) in cases {
            assert_eq!(lookup(&prefixes(), path), want, "{path}");
        }
        let only_static = &prefixes()[1..2];
        assert_eq!(lookup(only_static, "/staticx/a"), Lookup::Outside);
        assert_eq!(lookup(only_static, "/"), Lookup::Outside);
        assert_eq!(lookup(only_static, "/other/static/a"), Lookup::Outside);
        // Under the mount only as the app would see the path: refused, never the app's
        // when the mount is exclusive.
        for path in [
            "/static%2Fa",
            "//static/a",
            "/%2Fstatic/a",
            "/static%2f",
            "///static",
        ] {
            assert_eq!(lookup(only_static, path), Lookup::Refused(0), "{path}");
        }
        assert_eq!(lookup(only_static, "/staticx%2Fa"), Lookup::Outside);
    }

    #[test]
    fn names_a_file_server_must_not_follow_are_refused() {
        let refused = [
            "/static",
            "/static/",
            "/static/dir/",
            "/static//etc/passwd",
            "/static/../secret",
            "/static/a/../../secret",
            "/static/%2e%2e/secret",
            "/static/%2E%2e/secret",
            "/static/.%2e/secret",
            "/static/%2e/x",
            "/static/./x",
            "/static/a%2fb",
            "/static/a%2F..%2F..%2Fetc",
            "/static/a%5c..%5csecret",
            "/static/a\\..\\secret",
            "/static/x%00.txt",
            "/static/.env",
            "/static/.git/config",
            "/static/x%zz",
            "/static/x%2",
            "/static/x%",
        ];
        for path in refused {
            assert_eq!(
                lookup(&prefixes()[1..2], path),
                Lookup::Refused(0),
                "{path}"
            );
        }
        // The root mount: the same names are refused there too.
        assert_eq!(
            lookup(&prefixes()[3..], "/../etc/passwd"),
            Lookup::Refused(0)
        );
        assert_eq!(lookup(&prefixes()[3..], "/"), Lookup::Refused(0));
    }

    /// A deterministic fuzz loop: paths assembled from the tricky pieces must never give a
    /// name that could leave the mount's directory, start at the root, or hold a byte a
    /// file name must not.
    #[test]
    fn no_assembled_path_gives_a_name_that_leaves_the_directory() {
        const PIECES: &[&str] = &[
            "/", "/", "..", ".", "%2e", "%2E", "%2f", "%2F", "%5c", "\\", "%00", "%", "%zz", "a",
            "b.txt", "static", "%73tatic", ".hidden", "~", "%c3%a9", ";", "%25",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let prefixes = prefixes();
        let mut files = 0;
        for _ in 0..200_000 {
            let mut path = String::from("/");
            for _ in 0..(next() % 8) {
                path.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
            }
            let Lookup::File(_, name) = lookup(&prefixes, &path) else {
                continue;
            };
            files += 1;
            assert!(!name.is_empty() && name[0] != b'/', "{path}");
            assert!(!name.iter().any(|b| matches!(b, b'\\' | 0)), "{path}");
            for segment in name.split(|b| *b == b'/') {
                assert!(!segment.is_empty() && segment[0] != b'.', "{path}");
            }
            let joined = std::path::Path::new("/srv/root").join(std::ffi::OsStr::new(
                &String::from_utf8_lossy(&name).into_owned(),
            ));
            assert!(
                (joined.components().skip(3)).all(|c| matches!(c, std::path::Component::Normal(_))),
                "{path}"
            );
        }
        assert!(files > 1000, "the loop must reach files too: {files}");
    }
}
