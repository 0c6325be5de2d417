//! `--reload` (`[reload]`): watches the app's files and asks the executor for a reload
//! once changes have stopped for `delay`.
//!
//! Each directory under the watched roots gets its own (non-recursive) inotify watch, so
//! ignored trees (`.venv`, `.git`) cost nothing: not one watch, not one event. New
//! directories are watched as they appear. When inotify cannot be used (no instance or
//! watch left, `fs.inotify.max_user_*`), the files that count are polled once a second
//! (their nanosecond mtime, size and inode), and the log says so. With inotify, nothing
//! runs while nothing changes.

use crate::executor::Event;
use genro_config::Config;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The most directories watched; the rest is not, and the log says so.
const MAX_DIRS: usize = 20_000;
/// The most changed paths a reload's log line names.
const NAMED: usize = 3;
/// How often directories are polled when inotify cannot be used.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// The raw events waiting for the debounce; past it the changes count as "many".
const RAW_QUEUE: usize = 1024;

/// A `[reload]` setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// A glob does not parse.
    #[error("[reload] {key} = {pattern:?}: not a glob pattern: {why}")]
    Pattern {
        /// `include` or `exclude`.
        key: &'static str,
        /// The pattern.
        pattern: String,
        /// What the parser said.
        why: glob::PatternError,
    },
    /// A watched directory does not exist.
    #[error("[reload] dirs: {0} is not a directory")]
    NotADirectory(PathBuf),
    /// Neither inotify nor polling could start.
    #[error("[reload]: cannot watch files: {0}")]
    Notify(#[from] notify::Error),
}

/// Which paths count.
#[derive(Debug)]
pub struct Filter {
    roots: Vec<PathBuf>,
    include: Vec<glob::Pattern>,
    exclude: Vec<glob::Pattern>,
}

fn patterns(key: &'static str, list: &[String]) -> Result<Vec<glob::Pattern>, WatchError> {
    list.iter()
        .map(|pattern| {
            glob::Pattern::new(pattern).map_err(|why| WatchError::Pattern {
                key,
                pattern: pattern.clone(),
                why,
            })
        })
        .collect()
}

impl Filter {
    /// The filter `[reload]` describes; checks the patterns and directories.
    pub fn new(config: &Config) -> Result<Self, WatchError> {
        let app_dir = &config.application.app_dir;
        let mut roots: Vec<PathBuf> = config
            .reload
            .dirs
            .iter()
            .map(|dir| app_dir.join(dir))
            .collect();
        if roots.is_empty() {
            roots.push(app_dir.clone());
        }
        for root in &mut roots {
            *root = std::fs::canonicalize(&*root)
                .ok()
                .filter(|dir| dir.is_dir())
                .ok_or_else(|| WatchError::NotADirectory(root.clone()))?;
        }
        Ok(Filter {
            roots,
            include: patterns("include", &config.reload.include)?,
            exclude: patterns("exclude", &config.reload.exclude)?,
        })
    }

    /// `path` under the root it belongs to.
    fn relative<'a>(&self, path: &'a Path) -> Option<&'a Path> {
        self.roots
            .iter()
            .find_map(|root| path.strip_prefix(root).ok())
    }

    /// Whether `path` (under a root) is ignored: its name or a directory above it matches
    /// an `exclude` pattern.
    fn ignored(&self, path: &Path) -> bool {
        let Some(relative) = self.relative(path) else {
            return true;
        };
        relative.components().any(|part| {
            let name = part.as_os_str().to_string_lossy();
            self.exclude.iter().any(|p| p.matches(&name))
        })
    }

    /// Whether a change to the file `path` reloads.
    fn reloads(&self, path: &Path) -> bool {
        if self.ignored(path) {
            return false;
        }
        let (Some(relative), Some(name)) = (self.relative(path), path.file_name()) else {
            return false;
        };
        let name = name.to_string_lossy();
        self.include.iter().any(|p| {
            if p.as_str().contains('/') {
                p.matches_path(relative)
            } else {
                p.matches(&name)
            }
        })
    }
}

/// The changes gathered for one reload.
#[derive(Debug, Default)]
pub struct Changes {
    /// The first few changed paths.
    named: Vec<PathBuf>,
    /// The distinct paths that changed (up to [`MAX_COUNTED`]).
    seen: HashSet<PathBuf>,
    /// Events were dropped or merged (a flood, a kernel queue overflow): more changed
    /// than counted.
    overflowed: bool,
}

/// The most distinct changed paths counted for one reload; beyond, "many".
const MAX_COUNTED: usize = 10_000;

impl Changes {
    fn add(&mut self, path: PathBuf) {
        if self.seen.len() >= MAX_COUNTED {
            self.overflowed = true;
            return;
        }
        if self.named.len() < NAMED && !self.seen.contains(&path) {
            self.named.push(path.clone());
        }
        self.seen.insert(path);
    }

    fn is_empty(&self) -> bool {
        self.seen.is_empty() && !self.overflowed
    }

    /// "a.py changed", "a.py, b.py and 3 more file(s) changed".
    pub fn describe(&self) -> String {
        let names: Vec<String> = self.named.iter().map(|p| p.display().to_string()).collect();
        let more = self.seen.len().saturating_sub(self.named.len());
        let mut text = names.join(", ");
        if self.overflowed {
            text.push_str(if text.is_empty() {
                "many files"
            } else {
                " and many more files"
            });
        } else if more > 0 {
            text.push_str(&format!(" and {more} more file(s)"));
        }
        format!("{text} changed")
    }
}

/// The directories under `root` (itself included) that are not ignored, depth first, at
/// most `limit`; symbolic links are not followed (no loops, no trees outside the roots).
fn dirs_under(filter: &Filter, root: &Path, limit: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if found.len() >= limit {
            break;
        }
        stack.extend(subdirs(filter, &dir));
        found.push(dir);
    }
    found
}

/// The directories directly in `dir` that are not ignored (symbolic links not followed).
fn subdirs(filter: &Filter, dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .map(|entry| entry.path())
        .filter(|path| !filter.ignored(path))
        .collect()
}

/// Where changes come from.
enum Source {
    /// One inotify watch per directory.
    Inotify(notify::RecommendedWatcher),
    /// A thread that compares the watched files' metadata every [`POLL_EVERY`] and feeds
    /// the differences in as events (it finds new directories itself).
    Poll,
}

/// Whether an event can matter: a change (not an open or a read) to a file that counts,
/// a directory that appeared, or the kernel's word that events were lost. Filtered on
/// the watcher's thread, so that opens and reads of other files (an app serving its
/// templates) neither fill the queue nor hold the debounce open.
fn matters(filter: &Filter, event: &notify::Result<notify::Event>) -> bool {
    let Ok(event) = event else {
        return true;
    };
    if event.need_rescan() {
        return true;
    }
    let change = matches!(
        event.kind,
        EventKind::Create(_)
            | EventKind::Modify(_)
            | EventKind::Remove(_)
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    );
    let appears = matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_));
    change
        && event
            .paths
            .iter()
            .any(|path| filter.reloads(path) || (appears && !filter.ignored(path) && path.is_dir()))
}

/// The watcher and what it watches.
struct Watching {
    source: Source,
    filter: Arc<Filter>,
    /// The directories watched (inotify) or found (polling).
    dirs: HashSet<PathBuf>,
    full: bool,
}

impl Watching {
    /// Watches every root of `filter` from `source`.
    fn new(source: Source, filter: Arc<Filter>) -> Result<Self, notify::Error> {
        let mut watching = Watching {
            source,
            filter: filter.clone(),
            dirs: HashSet::new(),
            full: false,
        };
        for root in &filter.roots {
            watching.add_tree(root, None)?;
        }
        Ok(watching)
    }

    /// Watches `dir` and the directories below it that are not ignored (those already
    /// watched are skipped); with `changes`, the files that count in the new directories
    /// are changes too (a package moved or checked out into the tree).
    fn add_tree(
        &mut self,
        dir: &Path,
        mut changes: Option<&mut Changes>,
    ) -> Result<(), notify::Error> {
        // Each directory is listed after its watch is in place, so a subdirectory made
        // meanwhile is either listed or reported by the watch.
        let mut stack = vec![dir.to_path_buf()];
        while let Some(dir) = stack.pop() {
            if !self.dirs.contains(&dir) {
                if self.dirs.len() >= MAX_DIRS {
                    if !self.full {
                        self.full = true;
                        tracing::warn!("reload: {MAX_DIRS} directories watched; the others are not (narrow [reload] dirs or add to [reload] exclude)");
                    }
                    return Ok(());
                }
                if let Source::Inotify(watcher) = &mut self.source {
                    match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                        Ok(()) => {}
                        // Gone already (a temporary directory): nothing to watch.
                        Err(notify::Error {
                            kind: notify::ErrorKind::PathNotFound,
                            ..
                        }) => continue,
                        Err(err) => return Err(err),
                    }
                }
                if let Some(changes) = changes.as_deref_mut() {
                    for file in files_in(&self.filter, &dir) {
                        changes.add(file);
                    }
                }
                self.dirs.insert(dir.clone());
            }
            stack.extend(subdirs(&self.filter, &dir));
        }
        Ok(())
    }

    /// Takes one raw event: watches a new directory, adds a changed file that counts.
    fn take(&mut self, event: notify::Result<notify::Event>, changes: &mut Changes) {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                tracing::warn!("reload: watching files: {err}");
                return;
            }
        };
        if event.need_rescan() {
            // The kernel's queue overflowed: events (and new directories) were lost.
            changes.overflowed = true;
            for root in self.filter.roots.clone() {
                if let Err(err) = self.add_tree(&root, None) {
                    tracing::warn!("reload: cannot watch {}: {err}", root.display());
                }
            }
            return;
        }
        for path in event.paths {
            if matches!(self.source, Source::Inotify(_))
                && matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_))
                && !self.filter.ignored(&path)
                && path.is_dir()
            {
                if let Err(err) = self.add_tree(&path, Some(changes)) {
                    tracing::warn!("reload: cannot watch {}: {err}", path.display());
                }
            } else if self.filter.reloads(&path) {
                changes.add(path);
            }
        }
    }
}

/// The files directly in `dir` that count.
fn files_in(filter: &Filter, dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
        .map(|entry| entry.path())
        .filter(|path| filter.reloads(path))
        .collect()
}

/// What a file's change is told by when polling: nanosecond mtime, size and inode (a
/// save in the same second as the last poll, or a rename over the file, is seen).
type Stamp = (Option<std::time::SystemTime>, u64, u64);

/// The files that count under `filter`'s roots, with their stamps.
fn poll_scan(filter: &Filter) -> HashMap<PathBuf, Stamp> {
    use std::os::unix::fs::MetadataExt;
    let mut files = HashMap::new();
    for root in &filter.roots {
        for dir in dirs_under(filter, root, MAX_DIRS) {
            for path in files_in(filter, &dir) {
                if let Ok(meta) = std::fs::metadata(&path) {
                    files.insert(path, (meta.modified().ok(), meta.len(), meta.ino()));
                }
            }
        }
    }
    files
}

/// Polls `filter`'s files every [`POLL_EVERY`] on a thread of its own, sending what
/// changed to `send` until it returns false.
fn poll(
    filter: Arc<Filter>,
    send: impl Fn(notify::Result<notify::Event>) -> bool + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("genro-reload-poll".into())
        .spawn(move || {
            let mut before = poll_scan(&filter);
            loop {
                std::thread::sleep(POLL_EVERY);
                let now = poll_scan(&filter);
                let kind = EventKind::Modify(notify::event::ModifyKind::Any);
                let changed = now
                    .iter()
                    .filter(|(path, stamp)| before.get(*path) != Some(stamp))
                    .map(|(path, _)| path)
                    .chain(before.keys().filter(|path| !now.contains_key(*path)));
                for path in changed {
                    if !send(Ok(notify::Event::new(kind).add_path(path.clone()))) {
                        return;
                    }
                }
                before = now;
            }
        })
        .map(drop)
}

/// Raw events between the watcher (or poller) and the gathering thread.
type Raw = notify::Result<notify::Event>;

/// Starts watching as `[reload]` says; changes arrive at the executor as
/// [`Event::FilesChanged`].
pub(crate) fn start(config: &Config, events: mpsc::Sender<Event>) -> Result<(), WatchError> {
    let filter = Arc::new(Filter::new(config)?);
    let (raw, raw_rx) = std::sync::mpsc::sync_channel::<Raw>(RAW_QUEUE);
    let overflowed = Arc::new(AtomicBool::new(false));
    // Passes on an event that matters; false once the gatherer is gone.
    let send = {
        let overflowed = overflowed.clone();
        let filter = filter.clone();
        move |event: Raw| {
            if !matters(&filter, &event) {
                return true;
            }
            match raw.try_send(event) {
                Ok(()) => true,
                Err(std::sync::mpsc::TrySendError::Full(_)) => {
                    overflowed.store(true, Ordering::Relaxed);
                    true
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => false,
            }
        }
    };
    let inotify = {
        let send = send.clone();
        notify::RecommendedWatcher::new(
            move |event| {
                send(event);
            },
            notify::Config::default(),
        )
        .and_then(|watcher| Watching::new(Source::Inotify(watcher), filter.clone()))
    };
    let watching = match inotify {
        Ok(watching) => watching,
        Err(err) => {
            tracing::warn!("reload: inotify cannot be used ({err}); polling the watched files every {}s instead", POLL_EVERY.as_secs());
            poll(filter.clone(), send).map_err(|err| WatchError::Notify(err.into()))?;
            Watching::new(Source::Poll, filter.clone())?
        }
    };
    let roots: Vec<String> = filter
        .roots
        .iter()
        .map(|r| r.display().to_string())
        .collect();
    tracing::info!(
        "reload: watching {} ({} directories, {}) for {:?}, ignoring {:?}",
        roots.join(", "),
        watching.dirs.len(),
        match watching.source {
            Source::Inotify(_) => "inotify",
            Source::Poll => "polling",
        },
        config.reload.include,
        config.reload.exclude,
    );
    let delay = config.reload.delay;
    // A thread of its own: walking a new tree (a `node_modules` appearing) must not hold
    // up the supervisor's loop.
    std::thread::Builder::new()
        .name("genro-reload".into())
        .spawn(move || gather(watching, raw_rx, overflowed, delay, events))
        .map_err(|err| WatchError::Notify(err.into()))?;
    Ok(())
}

/// Gathers changes until none came for `delay`, then sends them as one reload.
fn gather(
    mut watching: Watching,
    raw: std::sync::mpsc::Receiver<Raw>,
    overflowed: Arc<AtomicBool>,
    delay: Duration,
    events: mpsc::Sender<Event>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    loop {
        let Ok(first) = raw.recv() else {
            return;
        };
        let mut changes = Changes::default();
        watching.take(first, &mut changes);
        loop {
            match raw.recv_timeout(delay) {
                Ok(event) => watching.take(event, &mut changes),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        if overflowed.swap(false, Ordering::Relaxed) {
            changes.overflowed = true;
        }
        if !changes.is_empty() && events.blocking_send(Event::FilesChanged(changes)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(root: &Path, include: &[&str], exclude: &[&str]) -> Filter {
        let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Filter {
            roots: vec![root.to_path_buf()],
            include: patterns("include", &list(include)).expect("globs"),
            exclude: patterns("exclude", &list(exclude)).expect("globs"),
        }
    }

    #[test]
    fn includes_match_names_and_excludes_match_any_directory_above() {
        let root = Path::new("/srv/app");
        let f = filter(
            root,
            &["*.py", "templates/*.html"],
            &[".git", "__pycache__", ".venv"],
        );
        assert!(f.reloads(&root.join("main.py")));
        assert!(f.reloads(&root.join("pkg/sub/mod.py")));
        assert!(!f.reloads(&root.join("main.pyc")));
        assert!(!f.reloads(&root.join("pkg/__pycache__/mod.py")));
        assert!(!f.reloads(&root.join(".venv/lib/site.py")));
        assert!(f.reloads(&root.join("templates/index.html")));
        assert!(!f.reloads(&root.join("other/index.html")));
        assert!(
            !f.reloads(Path::new("/elsewhere/main.py")),
            "outside the roots"
        );
        assert!(f.ignored(&root.join(".git")));
        assert!(!f.ignored(&root.join("pkg")));
    }

    #[test]
    fn a_bad_glob_names_its_key() {
        let err = patterns("include", &["[".to_string()]).expect_err("unclosed class");
        let text = err.to_string();
        assert!(
            text.starts_with("[reload] include = \"[\": not a glob pattern"),
            "{text}"
        );
    }

    #[test]
    fn changes_name_the_first_files_and_count_the_rest() {
        let mut changes = Changes::default();
        assert!(changes.is_empty());
        for name in ["a.py", "b.py", "a.py", "c.py", "d.py", "e.py"] {
            changes.add(PathBuf::from(name));
        }
        assert_eq!(
            changes.describe(),
            "a.py, b.py, c.py and 2 more file(s) changed"
        );
        changes.overflowed = true;
        assert_eq!(
            changes.describe(),
            "a.py, b.py, c.py and many more files changed"
        );
    }
}
