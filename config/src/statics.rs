//! `[static]`: the mounts, parsed from the section's lists. One parser serves the merge
//! (which reports a bad entry with its key and source, and keeps the lists in their
//! normal form) and the worker (which opens the directories).

use crate::model::Static;
use std::path::{Component, Path, PathBuf};

/// The longest `max_age` accepted: ten years (caches cap lifetimes well below that).
pub const MAX_AGE_MAX: u64 = 10 * 365 * 86_400;

/// One mount and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The URL prefix: `/` and segments, without a trailing `/` (`/` alone mounts the root).
    pub prefix: String,
    /// The directory (absolute once merged: a relative one is under `application.app_dir`).
    pub dir: PathBuf,
    /// Misses get 404 (and other methods 405) instead of going on to the app.
    pub exclusive: bool,
    /// `Cache-Control: public, max-age=N` (0: `no-cache`); `None`: no `Cache-Control`.
    pub max_age: Option<u64>,
    /// `Cache-Control` also says `immutable`.
    pub immutable: bool,
    /// Symbolic links may lead outside `dir`.
    pub follow_symlinks: bool,
}

/// A `[static]` entry that cannot be used: which key, which entry, what would do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[static] {key} = {entry:?}: expected {expected}")]
pub struct StaticError {
    /// The key (`mounts`, `exclusive`, ...).
    pub key: &'static str,
    /// The list entry at fault.
    pub entry: String,
    /// What would have been accepted.
    pub expected: String,
}

const PREFIX_FORM: &str = "a URL path starting with '/', without empty, '.' or '..' segments, '%', '=', '?', '#', '\\\\' or spaces";

/// The normal form of a mount prefix (`/static/` -> `/static`), or `None` if `text` is
/// not one (see [`PREFIX_FORM`]). Prefixes are compared with a request path's
/// percent-decoded segments, so they hold no percent-encoding themselves.
pub fn prefix(text: &str) -> Option<String> {
    let body = text.trim().strip_prefix('/')?;
    if body.starts_with('/') {
        return None;
    }
    let body = body.strip_suffix('/').unwrap_or(body);
    if body.is_empty() {
        return Some("/".into());
    }
    let valid = |segment: &str| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|b| b >= 0x80 || b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;:@".contains(&b))
    };
    body.split('/').all(valid).then(|| format!("/{body}"))
}

/// Which of a [`Mount`]'s switches a key sets.
type Flag = fn(&mut Mount) -> &mut bool;

/// Removes `.` components without touching the filesystem.
fn tidy(path: PathBuf) -> PathBuf {
    path.components()
        .filter(|c| *c != Component::CurDir)
        .collect()
}

impl Static {
    /// The mounts with their settings; relative directories are joined to `app_dir`.
    /// Checks the form of every entry, that no prefix is mounted twice, and that every
    /// prefix the other keys name is mounted (once per key). Does not look at the
    /// filesystem.
    pub fn mounts(&self, app_dir: &Path) -> Result<Vec<Mount>, StaticError> {
        let mut mounts: Vec<Mount> = Vec::new();
        for entry in &self.mounts {
            let bad = |expected: String| StaticError {
                key: "mounts",
                entry: entry.clone(),
                expected,
            };
            let form = || {
                bad(format!(
                    "PREFIX=DIRECTORY (e.g. /static=/srv/app/static), PREFIX {PREFIX_FORM}"
                ))
            };
            let (text, dir) = entry.split_once('=').ok_or_else(form)?;
            let prefix = prefix(text).ok_or_else(form)?;
            let dir = dir.trim();
            if dir.is_empty() {
                return Err(form());
            }
            if mounts.iter().any(|m| m.prefix == prefix) {
                return Err(bad(format!(
                    "each prefix mounted once ({prefix} is mounted twice)"
                )));
            }
            mounts.push(Mount {
                prefix,
                dir: tidy(app_dir.join(dir)),
                exclusive: false,
                max_age: None,
                immutable: false,
                follow_symlinks: false,
            });
        }
        let flags: [(&'static str, &Vec<String>, Flag); 3] = [
            ("exclusive", &self.exclusive, |m| &mut m.exclusive),
            ("immutable", &self.immutable, |m| &mut m.immutable),
            ("follow_symlinks", &self.follow_symlinks, |m| {
                &mut m.follow_symlinks
            }),
        ];
        for (key, list, flag) in flags {
            for entry in list {
                let mount = mounted(&mut mounts, key, entry, entry)?;
                let flag = flag(mount);
                if *flag {
                    return Err(StaticError {
                        key,
                        entry: entry.clone(),
                        expected: "each prefix once".into(),
                    });
                }
                *flag = true;
            }
        }
        for entry in &self.max_age {
            let bad = |expected: String| StaticError {
                key: "max_age",
                entry: entry.clone(),
                expected,
            };
            let form = || {
                bad(format!("PREFIX=SECONDS (e.g. /static=3600), SECONDS a whole number up to {MAX_AGE_MAX}"))
            };
            let (text, secs) = entry.split_once('=').ok_or_else(form)?;
            let secs = secs
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| *s <= MAX_AGE_MAX)
                .ok_or_else(form)?;
            let mount = mounted(&mut mounts, "max_age", entry, text)?;
            if mount.max_age.replace(secs).is_some() {
                return Err(bad("each prefix once".into()));
            }
        }
        if let Some(mount) = mounts.iter().find(|m| m.immutable && m.max_age.is_none()) {
            return Err(StaticError {
                key: "immutable",
                entry: mount.prefix.clone(),
                expected: format!(
                    "a mount with a max_age too (add {}=31536000 to [static] max_age)",
                    mount.prefix
                ),
            });
        }
        Ok(mounts)
    }

    /// The settings of `mounts` in their normal text form: what `check` shows and what
    /// the workers are given.
    pub fn normalised(mounts: &[Mount], precompressed: bool) -> Static {
        let prefixes = |keep: fn(&Mount) -> bool| {
            (mounts.iter())
                .filter(|m| keep(m))
                .map(|m| m.prefix.clone())
                .collect()
        };
        Static {
            mounts: (mounts.iter())
                .map(|m| format!("{}={}", m.prefix, m.dir.display()))
                .collect(),
            exclusive: prefixes(|m| m.exclusive),
            max_age: (mounts.iter())
                .filter_map(|m| m.max_age.map(|secs| format!("{}={secs}", m.prefix)))
                .collect(),
            immutable: prefixes(|m| m.immutable),
            follow_symlinks: prefixes(|m| m.follow_symlinks),
            precompressed,
        }
    }
}

/// The mount whose prefix `text` names, for `key`'s `entry`.
fn mounted<'a>(
    mounts: &'a mut [Mount],
    key: &'static str,
    entry: &str,
    text: &str,
) -> Result<&'a mut Mount, StaticError> {
    let bad = |expected: String| StaticError {
        key,
        entry: entry.to_string(),
        expected,
    };
    let Some(prefix) = prefix(text) else {
        return Err(bad(format!("a mount prefix, {PREFIX_FORM}")));
    };
    let known: Vec<String> = mounts.iter().map(|m| m.prefix.clone()).collect();
    mounts
        .iter_mut()
        .find(|m| m.prefix == prefix)
        .ok_or_else(|| {
            bad(format!(
                "the prefix of a [static] mounts entry ({prefix} is not mounted; mounted: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(mounts: &[&str]) -> Static {
        Static {
            mounts: mounts.iter().map(|s| s.to_string()).collect(),
            exclusive: vec![],
            max_age: vec![],
            immutable: vec![],
            follow_symlinks: vec![],
            precompressed: true,
        }
    }

    #[test]
    fn prefixes_are_normalised_or_refused() {
        let cases = [
            ("/static", Some("/static")),
            ("/static/", Some("/static")),
            (" /a/b ", Some("/a/b")),
            ("/", Some("/")),
            ("/.well-known", Some("/.well-known")),
            ("static", None),
            ("", None),
            ("//", None),
            ("/a//b", None),
            ("/a/../b", None),
            ("/a/./b", None),
            ("/a%2fb", None),
            ("/a b", None),
            ("/a?b", None),
            ("/a\\b", None),
            ("/a=b", None),
        ];
        for (text, want) in cases {
            assert_eq!(prefix(text).as_deref(), want, "{text:?}");
        }
    }

    #[test]
    fn mounts_with_their_settings() {
        let mut s = section(&["/static/=assets", "/media=/srv/media", "/=./public"]);
        s.exclusive = vec!["/media/".into()];
        s.max_age = vec!["/static=31536000".into(), "/=0".into()];
        s.immutable = vec!["/static".into()];
        s.follow_symlinks = vec!["/".into()];
        let mounts = s.mounts(Path::new("/app")).expect("valid");
        let got: Vec<_> = mounts
            .iter()
            .map(|m| {
                (
                    m.prefix.as_str(),
                    m.dir.to_str().unwrap_or(""),
                    m.exclusive,
                    m.max_age,
                    m.immutable,
                    m.follow_symlinks,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("/static", "/app/assets", false, Some(31536000), true, false),
                ("/media", "/srv/media", true, None, false, false),
                ("/", "/app/public", false, Some(0), false, true),
            ]
        );
        let normal = Static::normalised(&mounts, false);
        assert_eq!(
            normal.mounts,
            ["/static=/app/assets", "/media=/srv/media", "/=/app/public"]
        );
        assert_eq!(normal.max_age, ["/static=31536000", "/=0"]);
        assert_eq!(normal.mounts(Path::new("/elsewhere")), Ok(mounts));
    }

    #[test]
    fn bad_entries_name_their_key() {
        type Edit = fn(&mut Static);
        let cases: &[(&[&str], Edit, &str)] = &[
            (&["static=/x"], |_| {}, "[static] mounts = \"static=/x\": expected PREFIX=DIRECTORY"),
            (&["/static"], |_| {}, "[static] mounts = \"/static\": expected PREFIX=DIRECTORY"),
            (&["/static="], |_| {}, "[static] mounts = \"/static=\": expected PREFIX=DIRECTORY"),
            (&["/s=/a", "/s/=/b"], |_| {}, "[static] mounts = \"/s/=/b\": expected each prefix mounted once (/s is mounted twice)"),
            (&["/s=/a"], |s| s.exclusive = vec!["/t".into()], "[static] exclusive = \"/t\": expected the prefix of a [static] mounts entry (/t is not mounted; mounted: /s)"),
            (&["/s=/a"], |s| s.exclusive = vec!["/s".into(), "/s/".into()], "[static] exclusive = \"/s/\": expected each prefix once"),
            (&["/s=/a"], |s| s.follow_symlinks = vec!["s".into()], "[static] follow_symlinks = \"s\": expected a mount prefix"),
            (&["/s=/a"], |s| s.max_age = vec!["/s".into()], "[static] max_age = \"/s\": expected PREFIX=SECONDS"),
            (&["/s=/a"], |s| s.max_age = vec!["/s=-1".into()], "[static] max_age = \"/s=-1\": expected PREFIX=SECONDS"),
            (&["/s=/a"], |s| s.max_age = vec!["/s=999999999999".into()], "[static] max_age = \"/s=999999999999\": expected PREFIX=SECONDS"),
            (&[], |s| s.max_age = vec!["/s=1".into()], "[static] max_age = \"/s=1\": expected the prefix of a [static] mounts entry (/s is not mounted; mounted: none)"),
            (&["/s=/a"], |s| s.immutable = vec!["/s".into()], "[static] immutable = \"/s\": expected a mount with a max_age too"),
        ];
        for (mounts, edit, want) in cases {
            let mut s = section(mounts);
            edit(&mut s);
            let err = s.mounts(Path::new("/app")).expect_err(want).to_string();
            assert!(err.starts_with(want), "{err}\nwanted: {want}");
        }
    }
}
