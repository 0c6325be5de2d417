//! `[server] workers = auto`: how many CPUs this process may really use, with the reason.
//! Not the host's core count (nginx/unit#1042): the smallest of the cgroup CPU quota (v2
//! `cpu.max`, else v1 `cpu.cfs_quota_us`, the strictest of the process's cgroup and its
//! parents) rounded up, and the CPUs `sched_getaffinity` allows. Reads files only under a
//! root directory given by the caller (`/`, or a fake tree in tests); never fails.

use std::fmt;
use std::path::{Path, PathBuf};

/// Internal environment variable naming the directory [`crate::load`] reads the cgroup
/// files under instead of `/` (`proc/self/cgroup`, `proc/self/mountinfo`,
/// `sys/fs/cgroup/...`): end-to-end tests point the real binary at a fake tree with it.
pub const ENV_CPU_ROOT: &str = "GENRO_ASGI_INTERNAL_CPU_ROOT";

/// The CPUs this process may use, and how that was worked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuBudget {
    /// At least 1.
    pub cpus: usize,
    /// The facts behind `cpus`, e.g. `cgroup v2 cpu.max 200000/100000 at
    /// /sys/fs/cgroup/app; affinity 8 CPUs`.
    pub reason: String,
}

/// `2 (cgroup v2 cpu.max 200000/100000 at /sys/fs/cgroup/app; affinity 8 CPUs)`.
impl fmt::Display for CpuBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.cpus, self.reason)
    }
}

impl CpuBudget {
    /// Keeps `cpus` within a key's range, saying so when it had to.
    pub(crate) fn clamp(mut self, min: usize, max: usize) -> Self {
        if self.cpus > max {
            self.reason
                .push_str(&format!("; {} capped at the maximum {max}", self.cpus));
        }
        self.cpus = self.cpus.clamp(min, max);
        self
    }
}

/// The budget of the calling process, reading the cgroup files under `root` (`/` outside
/// tests) and asking the kernel for its affinity mask.
pub fn detect(root: &Path) -> CpuBudget {
    let parallelism = std::thread::available_parallelism().map_err(|e| e.to_string());
    budget(root, affinity(), parallelism.map(|n| n.get()))
}

/// The number of CPUs in the calling thread's affinity mask (the process's cpuset).
fn affinity() -> Result<usize, String> {
    // SAFETY: `cpu_set_t` is a plain bit array, valid when zeroed; the kernel writes at most
    // `size_of::<cpu_set_t>()` bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: pid 0 is the calling thread; `set` is a valid, writable `cpu_set_t` of `size`.
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        // EINVAL when the kernel's mask is wider than 1024 CPUs.
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: `set` was filled by the kernel above.
    Ok(unsafe { libc::CPU_COUNT(&set) } as usize)
}

/// The pure part of [`detect`]: cgroup files under `root`, plus the affinity count (or why
/// it is unknown) and `std::thread::available_parallelism` as the last resort.
pub fn budget(
    root: &Path,
    affinity: Result<usize, String>,
    parallelism: Result<usize, String>,
) -> CpuBudget {
    let (limit, mut reason) = cgroup_limit(root);
    let set = match (affinity, parallelism) {
        (Ok(n), _) if n > 0 => {
            reason.push(format!("affinity {n} CPU{}", plural(n)));
            n
        }
        (affinity, Ok(n)) if n > 0 => {
            let why = affinity.err().unwrap_or_else(|| "an empty set".into());
            reason.push(format!(
                "sched_getaffinity: {why}; available_parallelism {n} CPU{}",
                plural(n)
            ));
            n
        }
        (affinity, parallelism) => {
            let why = affinity.err().unwrap_or_else(|| "an empty set".into());
            let also = parallelism.err().unwrap_or_else(|| "0".into());
            reason.push(format!(
                "sched_getaffinity: {why}; available_parallelism: {also}; assuming 1 CPU"
            ));
            1
        }
    };
    let cpus = limit.map_or(set, |limit| limit.min(set)).max(1);
    CpuBudget {
        cpus,
        reason: reason.join("; "),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// A CPU bandwidth limit: `quota` µs of CPU time every `period` µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quota {
    quota: u64,
    period: u64,
}

impl Quota {
    /// Whole CPUs, rounded up: 1.5 CPUs of quota is 2 workers, 0.5 is 1. A worker also
    /// waits on I/O, so two workers sharing 1.5 CPUs use all of them where one would leave
    /// a third idle; the CFS throttling this risks is bounded by the quota itself. The
    /// JVM (`ceil(quota / period)`) and .NET (`Environment.ProcessorCount`) round up too;
    /// Go's automaxprocs rounds down, for GOMAXPROCS threads that spin on the CPU.
    fn cpus(&self) -> usize {
        usize::try_from(self.quota.div_ceil(self.period)).unwrap_or(usize::MAX)
    }

    fn is_stricter_than(&self, other: &Quota) -> bool {
        u128::from(self.quota) * u128::from(other.period)
            < u128::from(other.quota) * u128::from(self.period)
    }

    fn describe(&self) -> String {
        let text = format!("{}/{}", self.quota, self.period);
        if self.quota % self.period == 0 {
            text
        } else {
            let cpus = self.quota as f64 / self.period as f64;
            format!("{text} ({cpus:.2} CPUs, rounded up)")
        }
    }
}

/// Which cgroup hierarchy a limit file belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

impl Version {
    fn file_names(self) -> &'static str {
        match self {
            Version::V1 => "cpu.cfs_quota_us/cpu.cfs_period_us",
            Version::V2 => "cpu.max",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Version::V1 => "cgroup v1",
            Version::V2 => "cgroup v2",
        }
    }
}

/// What one cgroup directory's limit files say.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reading {
    /// No limit file here (the root cgroup has none).
    Absent,
    /// `max` or `-1`.
    Unlimited,
    Limited(Quota),
    /// A file that cannot be read or parsed.
    Odd(String),
}

/// The cgroup CPU limit in whole CPUs (`None`: none found), and the sentences saying how.
/// cgroup v2 first; v1 when the v2 hierarchy has no `cpu.max` (v1, or the hybrid layout
/// where the cpu controller stays on v1).
fn cgroup_limit(root: &Path) -> (Option<usize>, Vec<String>) {
    let membership = read(root, "proc/self/cgroup");
    let mountinfo = read(root, "proc/self/mountinfo");
    let membership = match membership {
        Ok(text) => text,
        Err(err) => {
            return (
                None,
                vec![format!(
                    "no cgroup CPU limit read ({}: {err})",
                    root.join("proc/self/cgroup").display()
                )],
            )
        }
    };
    let mounts = mountinfo
        .as_deref()
        .map(parse_mountinfo)
        .unwrap_or_default();
    let mut notes = Vec::new();
    for version in [Version::V2, Version::V1] {
        let Some(dir) = cgroup_dir(root, &membership, &mounts, version) else {
            continue;
        };
        match walk_up(&dir, version) {
            Walk::NoFiles => continue,
            Walk::Found {
                strictest,
                odd,
                leaf,
            } => {
                notes.extend(odd);
                return match strictest {
                    Some((quota, at)) => {
                        notes.push(format!(
                            "{} {} {} at {}",
                            version.name(),
                            version.file_names(),
                            quota.describe(),
                            at.display()
                        ));
                        (Some(quota.cpus()), notes)
                    }
                    None => {
                        notes.push(format!(
                            "{}: no CPU limit ({} from {} up)",
                            version.name(),
                            version.file_names(),
                            leaf.display()
                        ));
                        (None, notes)
                    }
                };
            }
        }
    }
    notes.push("no cgroup CPU limit found".into());
    (None, notes)
}

enum Walk {
    /// No limit file at any level: this hierarchy does not carry the cpu controller.
    NoFiles,
    Found {
        /// The strictest limit and the directory holding it.
        strictest: Option<(Quota, PathBuf)>,
        /// Files that could not be used (ignored, and said).
        odd: Vec<String>,
        /// Where the walk started.
        leaf: PathBuf,
    },
}

/// Reads the limit of `dir` and of every parent up to the hierarchy's mount point (`dir`'s
/// topmost ancestor handed in as the end of the walk): a parent's limit caps its children.
fn walk_up(dir: &CgroupDir, version: Version) -> Walk {
    let mut strictest: Option<(Quota, PathBuf)> = None;
    let mut odd = Vec::new();
    let mut any = false;
    let mut at = dir.leaf.clone();
    loop {
        match read_limit(&at, version) {
            Reading::Absent => {}
            Reading::Unlimited => any = true,
            Reading::Limited(quota) => {
                any = true;
                if strictest
                    .as_ref()
                    .is_none_or(|(s, _)| quota.is_stricter_than(s))
                {
                    strictest = Some((quota, at.clone()));
                }
            }
            Reading::Odd(what) => {
                any = true;
                odd.push(format!(
                    "{} {} at {}: {what}, ignored",
                    version.name(),
                    version.file_names(),
                    at.display()
                ));
            }
        }
        if at == dir.mount || !at.pop() || !at.starts_with(&dir.mount) {
            break;
        }
    }
    if any {
        Walk::Found {
            strictest,
            odd,
            leaf: dir.leaf.clone(),
        }
    } else {
        Walk::NoFiles
    }
}

fn read_limit(dir: &Path, version: Version) -> Reading {
    match version {
        Version::V2 => match std::fs::read_to_string(dir.join("cpu.max")) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Reading::Absent,
            Err(err) => Reading::Odd(err.to_string()),
            Ok(text) => parse_cpu_max(&text),
        },
        Version::V1 => {
            let quota = std::fs::read_to_string(dir.join("cpu.cfs_quota_us"));
            let period = std::fs::read_to_string(dir.join("cpu.cfs_period_us"));
            match (quota, period) {
                (Err(err), _) if err.kind() == std::io::ErrorKind::NotFound => Reading::Absent,
                (Err(err), _) | (_, Err(err)) => Reading::Odd(err.to_string()),
                (Ok(quota), Ok(period)) => parse_cfs(&quota, &period),
            }
        }
    }
}

/// cgroup v2 `cpu.max`: `max 100000` (no limit) or `<quota> <period>` in µs.
fn parse_cpu_max(text: &str) -> Reading {
    let fields: Vec<&str> = text.split_whitespace().collect();
    match fields.as_slice() {
        ["max"] | ["max", _] => Reading::Unlimited,
        [quota, period] => match (quota.parse::<u64>(), period.parse::<u64>()) {
            (Ok(quota), Ok(period)) if quota > 0 && period > 0 => {
                Reading::Limited(Quota { quota, period })
            }
            _ => Reading::Odd(format!("unexpected content {:?}", text.trim())),
        },
        _ => Reading::Odd(format!("unexpected content {:?}", text.trim())),
    }
}

/// cgroup v1 `cpu.cfs_quota_us` (`-1`: no limit) and `cpu.cfs_period_us`, in µs.
fn parse_cfs(quota: &str, period: &str) -> Reading {
    match (quota.trim().parse::<i64>(), period.trim().parse::<u64>()) {
        (Ok(-1), Ok(_)) => Reading::Unlimited,
        (Ok(quota), Ok(period)) if quota > 0 && period > 0 => Reading::Limited(Quota {
            quota: quota.unsigned_abs(),
            period,
        }),
        _ => Reading::Odd(format!(
            "unexpected content {:?} / {:?}",
            quota.trim(),
            period.trim()
        )),
    }
}

/// One line of `/proc/self/mountinfo` that mounts a cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    /// The cgroup path mounted there (`/` unless a sub-tree is bind-mounted).
    root: String,
    /// Where (absolute, in the real file system).
    point: String,
    version: Version,
    /// Mount options naming the v1 controllers (`rw,cpu,cpuacct`).
    options: Vec<String>,
}

/// `36 25 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct`
/// (optional fields sit between the mount options and the ` - ` separator).
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let version = match right.next()? {
                "cgroup2" => Version::V2,
                "cgroup" => Version::V1,
                _ => return None,
            };
            let options = right.nth(1).unwrap_or("").split(',').map(String::from);
            Some(Mount {
                root: unescape(left.get(3)?),
                point: unescape(left.get(4)?),
                version,
                options: options.collect(),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as octal escapes (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The process's cgroup directory in one hierarchy, and that hierarchy's mount point.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupDir {
    leaf: PathBuf,
    mount: PathBuf,
}

/// Finds the process's cgroup (`0::/path` for v2, `N:cpu,cpuacct:/path` for v1 in
/// `/proc/self/cgroup`) under the hierarchy's mount point; without a mountinfo line the
/// usual places are assumed (`/sys/fs/cgroup`, `/sys/fs/cgroup/<controllers>`).
fn cgroup_dir(
    root: &Path,
    membership: &str,
    mounts: &[Mount],
    version: Version,
) -> Option<CgroupDir> {
    let (controllers, path) = membership.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let wanted = match version {
            Version::V2 => id == "0" && controllers.is_empty(),
            Version::V1 => controllers.split(',').any(|c| c == "cpu"),
        };
        wanted.then_some((controllers, path))
    })?;
    let mount = mounts.iter().find(|m| {
        m.version == version
            && (version == Version::V2 || m.options.iter().any(|o| o == "cpu"))
            && is_within(path, &m.root)
    });
    let (mount_point, relative) = match mount {
        Some(m) => (m.point.clone(), relative_to(path, &m.root)),
        None => {
            let default = match version {
                Version::V2 => "/sys/fs/cgroup".to_string(),
                Version::V1 => format!("/sys/fs/cgroup/{controllers}"),
            };
            (default, relative_to(path, "/"))
        }
    };
    let mount = root.join(mount_point.trim_start_matches('/'));
    let leaf = match relative {
        Some(relative) if !relative.trim_matches('/').is_empty() => {
            mount.join(relative.trim_start_matches('/'))
        }
        // The mount point itself; or, outside the mounted sub-tree (`/../..` after a
        // cgroup namespace move), the closest cgroup this process can see.
        _ => mount.clone(),
    };
    Some(CgroupDir { leaf, mount })
}

/// Whether cgroup `path` is `root` or below it.
fn is_within(path: &str, root: &str) -> bool {
    relative_to(path, root).is_some()
}

/// `path` relative to `root` (both cgroup paths); `None` when it is not below it or climbs
/// out with `..`.
fn relative_to(path: &str, root: &str) -> Option<String> {
    if path.split('/').any(|part| part == "..") {
        return None;
    }
    let root = root.trim_end_matches('/');
    let rest = path.strip_prefix(root)?;
    (rest.is_empty() || rest.starts_with('/')).then(|| rest.to_string())
}

fn read(root: &Path, file: &str) -> std::io::Result<String> {
    std::fs::read_to_string(root.join(file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fake root directory holding the given files; removed on drop.
    struct FakeRoot(PathBuf);

    impl FakeRoot {
        fn new(files: &[(&str, &str)]) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "genro-cpus-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            for (path, text) in files {
                let path = dir.join(path);
                std::fs::create_dir_all(path.parent().expect("files have a folder"))
                    .expect("create the fake tree");
                std::fs::write(&path, text).expect("write a fake file");
            }
            std::fs::create_dir_all(&dir).expect("create the fake root");
            FakeRoot(dir)
        }

        fn budget(&self, affinity: Result<usize, String>) -> CpuBudget {
            budget(&self.0, affinity, Ok(64))
        }

        /// The reason with the fake root's path written as `<root>`.
        fn reason(&self, budget: &CpuBudget) -> String {
            budget
                .reason
                .replace(&self.0.display().to_string(), "<root>")
        }
    }

    impl Drop for FakeRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const V2_MOUNTS: &str = "25 30 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n\
        22 30 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n";

    const V1_MOUNTS: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
        32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct\n\
        34 31 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
        41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";

    const V1_CGROUP: &str = "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n0::/docker/abc\n";

    #[test]
    fn cgroup_v2_limited() {
        let root = FakeRoot::new(&[
            ("proc/self/cgroup", "0::/app.slice/web.service\n"),
            ("proc/self/mountinfo", V2_MOUNTS),
            (
                "sys/fs/cgroup/app.slice/web.service/cpu.max",
                "200000 100000\n",
            ),
            ("sys/fs/cgroup/app.slice/cpu.max", "max 100000\n"),
        ]);
        let got = root.budget(Ok(8));
        assert_eq!(got.cpus, 2);
        assert_eq!(
            root.reason(&got),
            "cgroup v2 cpu.max 200000/100000 at <root>/sys/fs/cgroup/app.slice/web.service; affinity 8 CPUs"
        );
    }

    #[test]
    fn cgroup_v2_unlimited() {
        let root = FakeRoot::new(&[
            ("proc/self/cgroup", "0::/app.slice/web.service\n"),
            ("proc/self/mountinfo", V2_MOUNTS),
            (
                "sys/fs/cgroup/app.slice/web.service/cpu.max",
                "max 100000\n",
            ),
            ("sys/fs/cgroup/app.slice/cpu.max", "max 100000\n"),
        ]);
        let got = root.budget(Ok(8));
        assert_eq!(got.cpus, 8);
        assert_eq!(
            root.reason(&got),
            "cgroup v2: no CPU limit (cpu.max from <root>/sys/fs/cgroup/app.slice/web.service up); affinity 8 CPUs"
        );
    }

    #[test]
    fn cgroup_v2_parent_stricter_than_child() {
        // A pod's limit (Kubernetes: kubepods.slice/.../pod<uid>) caps its container's.
        let root = FakeRoot::new(&[
            ("proc/self/cgroup", "0::/kubepods/pod1/ctr\n"),
            ("proc/self/mountinfo", V2_MOUNTS),
            ("sys/fs/cgroup/kubepods/pod1/ctr/cpu.max", "400000 100000\n"),
            ("sys/fs/cgroup/kubepods/pod1/cpu.max", "150000 100000\n"),
            ("sys/fs/cgroup/kubepods/cpu.max", "max 100000\n"),
        ]);
        let got = root.budget(Ok(8));
        assert_eq!(got.cpus, 2, "1.5 CPUs round up to 2");
        assert_eq!(
            root.reason(&got),
            "cgroup v2 cpu.max 150000/100000 (1.50 CPUs, rounded up) at <root>/sys/fs/cgroup/kubepods/pod1; affinity 8 CPUs"
        );
    }

    #[test]
    fn cgroup_v2_in_a_namespace_and_fractions() {
        // A container with its own cgroup namespace sees its cgroup as `/`, at the mount.
        let cases = [
            ("50000 100000", 1),
            ("100000 100000", 1),
            ("100001 100000", 2),
            ("250000 100000", 3),
            ("1000 1000", 1),
        ];
        for (cpu_max, want) in cases {
            let root = FakeRoot::new(&[
                ("proc/self/cgroup", "0::/\n"),
                ("proc/self/mountinfo", V2_MOUNTS),
                ("sys/fs/cgroup/cpu.max", cpu_max),
            ]);
            assert_eq!(root.budget(Ok(8)).cpus, want, "{cpu_max}");
        }
    }

    #[test]
    fn cgroup_v1_quota_set() {
        let root = FakeRoot::new(&[
            ("proc/self/cgroup", V1_CGROUP),
            ("proc/self/mountinfo", V1_MOUNTS),
            (
                "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us",
                "300000\n",
            ),
            (
                "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us",
                "100000\n",
            ),
            ("sys/fs/cgroup/cpu,cpuacct/docker/cpu.cfs_quota_us", "-1\n"),
            (
                "sys/fs/cgroup/cpu,cpuacct/docker/cpu.cfs_period_us",
                "100000\n",
            ),
        ]);
        let got = root.budget(Ok(16));
        assert_eq!(got.cpus, 3);
        assert_eq!(
            root.reason(&got),
            "cgroup v1 cpu.cfs_quota_us/cpu.cfs_period_us 300000/100000 at <root>/sys/fs/cgroup/cpu,cpuacct/docker/abc; affinity 16 CPUs"
        );
    }

    #[test]
    fn cgroup_v1_no_quota() {
        let root = FakeRoot::new(&[
            ("proc/self/cgroup", V1_CGROUP),
            ("proc/self/mountinfo", V1_MOUNTS),
            (
                "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us",
                "-1\n",
            ),
            (
                "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us",
                "100000\n",
            ),
        ]);
        let got = root.budget(Ok(4));
        assert_eq!(got.cpus, 4);
        assert_eq!(
            root.reason(&got),
            "cgroup v1: no CPU limit (cpu.cfs_quota_us/cpu.cfs_period_us from <root>/sys/fs/cgroup/cpu,cpuacct/docker/abc up); affinity 4 CPUs"
        );
    }

    #[test]
    fn cgroup_v1_bind_mounted_sub_tree_and_no_mountinfo() {
        // Docker without a cgroup namespace bind-mounts the container's own cgroup at the
        // hierarchy's mount point: the mount's root is the cgroup path.
        let bind =
            "32 31 0:29 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro - cgroup cgroup rw,cpu,cpuacct\n";
        let root = FakeRoot::new(&[
            ("proc/self/cgroup", V1_CGROUP),
            ("proc/self/mountinfo", bind),
            ("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "50000\n"),
            ("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n"),
        ]);
        assert_eq!(root.budget(Ok(4)).cpus, 1, "0.5 CPU is still one worker");
        // Without mountinfo, the usual /sys/fs/cgroup/<controllers> place.
        let root = FakeRoot::new(&[
            ("proc/self/cgroup", V1_CGROUP),
            (
                "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us",
                "200000\n",
            ),
            (
                "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us",
                "100000\n",
            ),
        ]);
        assert_eq!(root.budget(Ok(4)).cpus, 2);
    }

    #[test]
    fn hybrid_layout_reads_the_v1_cpu_controller() {
        // systemd's hybrid layout: a v2 hierarchy without controllers at
        // /sys/fs/cgroup/unified, the cpu controller on v1.
        let root = FakeRoot::new(&[
            ("proc/self/cgroup", V1_CGROUP),
            ("proc/self/mountinfo", V1_MOUNTS),
            ("sys/fs/cgroup/unified/docker/abc/cgroup.procs", "1\n"),
            (
                "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us",
                "100000\n",
            ),
            (
                "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us",
                "100000\n",
            ),
        ]);
        assert_eq!(root.budget(Ok(4)).cpus, 1);
    }

    #[test]
    fn no_cgroup_files_at_all() {
        let root = FakeRoot::new(&[]);
        let got = root.budget(Ok(6));
        assert_eq!(got.cpus, 6);
        assert_eq!(
            root.reason(&got),
            "no cgroup CPU limit read (<root>/proc/self/cgroup: No such file or directory (os error 2)); affinity 6 CPUs"
        );
        // A cgroup file but no limit files anywhere (the host's root cgroup).
        let root = FakeRoot::new(&[
            ("proc/self/cgroup", "0::/\n"),
            ("proc/self/mountinfo", V2_MOUNTS),
        ]);
        let got = root.budget(Ok(6));
        assert_eq!(
            (got.cpus, root.reason(&got).as_str()),
            (6, "no cgroup CPU limit found; affinity 6 CPUs")
        );
    }

    #[test]
    fn garbage_is_ignored_and_said() {
        let cases = [
            ("cpu.max", "lots\n"),
            ("cpu.max", "-5 100000\n"),
            ("cpu.max", "100000 0\n"),
            ("cpu.max", "100000 100000 7\n"),
            ("cpu.max", ""),
        ];
        for (file, text) in cases {
            let root = FakeRoot::new(&[
                ("proc/self/cgroup", "0::/svc\n"),
                ("proc/self/mountinfo", V2_MOUNTS),
                (&format!("sys/fs/cgroup/svc/{file}"), text),
            ]);
            let got = root.budget(Ok(3));
            assert_eq!(got.cpus, 3, "{text:?}");
            assert!(
                root.reason(&got).starts_with(
                    "cgroup v2 cpu.max at <root>/sys/fs/cgroup/svc: unexpected content"
                ),
                "{}",
                got.reason
            );
            assert!(got.reason.ends_with("; affinity 3 CPUs"), "{}", got.reason);
        }
        // A garbage child does not hide its parent's limit.
        let root = FakeRoot::new(&[
            ("proc/self/cgroup", "0::/a/b\n"),
            ("proc/self/mountinfo", V2_MOUNTS),
            ("sys/fs/cgroup/a/b/cpu.max", "\u{0}\u{1}garbage"),
            ("sys/fs/cgroup/a/cpu.max", "100000 100000"),
        ]);
        assert_eq!(root.budget(Ok(3)).cpus, 1);
        // Garbage in the files that locate the cgroup.
        let root = FakeRoot::new(&[
            ("proc/self/cgroup", "\u{0}garbage:::\nmore garbage"),
            ("proc/self/mountinfo", "x - y\n - \n\n"),
        ]);
        let got = root.budget(Ok(3));
        assert_eq!(
            (got.cpus, root.reason(&got).as_str()),
            (3, "no cgroup CPU limit found; affinity 3 CPUs")
        );
        // v1 quota without a readable period.
        let root = FakeRoot::new(&[
            ("proc/self/cgroup", V1_CGROUP),
            ("proc/self/mountinfo", V1_MOUNTS),
            (
                "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us",
                "100000\n",
            ),
            (
                "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us",
                "soon\n",
            ),
        ]);
        let got = root.budget(Ok(3));
        assert_eq!(got.cpus, 3);
        assert!(got
            .reason
            .contains("unexpected content \"100000\" / \"soon\", ignored"));
    }

    #[test]
    fn affinity_smaller_than_quota() {
        let root = FakeRoot::new(&[
            ("proc/self/cgroup", "0::/\n"),
            ("proc/self/mountinfo", V2_MOUNTS),
            ("sys/fs/cgroup/cpu.max", "800000 100000\n"),
        ]);
        let got = root.budget(Ok(2));
        assert_eq!(got.cpus, 2);
        assert_eq!(
            root.reason(&got),
            "cgroup v2 cpu.max 800000/100000 at <root>/sys/fs/cgroup; affinity 2 CPUs"
        );
    }

    #[test]
    fn affinity_unknown_falls_back_to_available_parallelism_then_1() {
        let root = FakeRoot::new(&[]);
        let got = budget(&root.0, Err("Invalid argument".into()), Ok(5));
        assert_eq!(got.cpus, 5);
        assert!(
            got.reason
                .ends_with("; sched_getaffinity: Invalid argument; available_parallelism 5 CPUs"),
            "{}",
            got.reason
        );
        let got = budget(&root.0, Err("Invalid argument".into()), Err("gone".into()));
        assert_eq!(got.cpus, 1);
        assert!(
            got.reason.ends_with(
                "; sched_getaffinity: Invalid argument; available_parallelism: gone; assuming 1 CPU"
            ),
            "{}",
            got.reason
        );
    }

    #[test]
    fn clamped_to_the_key_range() {
        let big = CpuBudget {
            cpus: 1024,
            reason: "affinity 1024 CPUs".into(),
        };
        assert_eq!(
            big.clamp(1, 512).to_string(),
            "512 (affinity 1024 CPUs; 1024 capped at the maximum 512)"
        );
    }

    #[test]
    fn mountinfo_escapes() {
        let mounts = parse_mountinfo(
            "40 31 0:37 / /sys/fs/cgroup/my\\040cpu rw shared:1 master:2 - cgroup cgroup rw,cpu\n",
        );
        assert_eq!(
            mounts,
            vec![Mount {
                root: "/".into(),
                point: "/sys/fs/cgroup/my cpu".into(),
                version: Version::V1,
                options: vec!["rw".into(), "cpu".into()],
            }]
        );
    }

    #[test]
    fn this_machine() {
        // Whatever the host is, detection answers with at least one CPU and a reason.
        let got = detect(Path::new("/"));
        assert!(got.cpus >= 1, "{got}");
        assert!(got.reason.contains("affinity"), "{got}");
    }
}
