//! Where a resource lives on disk, and refusing paths that escape the data root.
//!
//! Every directory on the way to a session file must be a real directory (never a symlink) and the
//! file itself a regular file opened with `O_NOFOLLOW`, so no name can write outside the data root.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

use crate::error::CoreError;
use crate::resource::{ADOPTING_SUFFIX, INDEX_SUFFIX, RESERVED_SEGMENT, ResourceName};

/// The on-disk locations of one resource.
#[derive(Debug, Clone)]
pub struct ResourcePaths {
    /// The session file: `<root>/<name>`.
    pub data: PathBuf,
    /// Its entry index: `<root>/.fencepost/index/<name>.idx`.
    pub index: PathBuf,
    /// Where adoption writes the new index before renaming it over the old one.
    pub adopting: PathBuf,
}

/// The server's metadata directory inside the data root.
pub fn meta_dir(root: &Path) -> PathBuf {
    root.join(RESERVED_SEGMENT)
}

impl ResourcePaths {
    /// Paths of `name` under `root` (no I/O).
    pub fn new(root: &Path, name: &ResourceName) -> Self {
        let data = root.join(name.as_str());
        let indexes = meta_dir(root).join("index");
        let index = indexes.join(format!("{}{INDEX_SUFFIX}", name.as_str()));
        let adopting = indexes.join(format!("{}{ADOPTING_SUFFIX}", name.as_str()));
        Self {
            data,
            index,
            adopting,
        }
    }
}

fn unsafe_path(name: &ResourceName, reason: String) -> CoreError {
    CoreError::InvalidResource {
        name: name.as_str().to_owned(),
        reason,
    }
}

/// Where replay keeps, per generation, the logged lines it could not put back (see
/// [`super::replay`]): `.fencepost/held/`.
pub fn held_root(root: &Path) -> PathBuf {
    meta_dir(root).join("held")
}

/// Where replay keeps the logged lines of `name` that it could not put back:
/// `.fencepost/held/<generation>/<name>`.
pub fn held_path(root: &Path, generation: u64, name: &ResourceName) -> PathBuf {
    held_root(root)
        .join(generation.to_string())
        .join(name.as_str())
}

/// The files of lines held back for `name`, oldest generation first (a directory
/// `<generation>` or `<generation>.<suffix>` under `.fencepost/held/`). While there is one, the
/// resource refuses appends: its file lacks acknowledged lines. A file that cannot be examined
/// counts as present (the resource stays blocked rather than open to appends).
///
/// # Errors
/// `.fencepost/held/` cannot be listed.
pub fn held_back(root: &Path, name: &ResourceName) -> io::Result<Vec<PathBuf>> {
    let generations = match fs::read_dir(held_root(root)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for generation in generations {
        let generation = generation?;
        let path = generation.path().join(name.as_str());
        let present = match fs::symlink_metadata(&path) {
            Ok(_) => true,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ),
        };
        if present {
            let number = generation
                .file_name()
                .to_string_lossy()
                .split('.')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(u64::MAX);
            found.push((number, path));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

/// Moves `name`'s held-back lines from `.fencepost/held/` to
/// `.fencepost/held-adopted/<held dir>.<unix micros>/<name>`, once an operator accepted the file
/// without them (never over earlier ones). Returns where they went.
///
/// # Errors
/// The I/O error.
pub fn set_held_aside(root: &Path, name: &ResourceName) -> io::Result<Vec<PathBuf>> {
    let held = held_root(root);
    let stamp = crate::model::now_unix_micros();
    let mut moved = Vec::new();
    for from in held_back(root, name)? {
        let Some(from_dir) = from.parent() else {
            continue;
        };
        let Some(generation) = from
            .strip_prefix(&held)
            .ok()
            .and_then(|p| p.components().next())
        else {
            continue;
        };
        let to = meta_dir(root)
            .join("held-adopted")
            .join(format!(
                "{}.{stamp}",
                generation.as_os_str().to_string_lossy()
            ))
            .join(name.as_str());
        let to_dir = to.parent().expect("a file under held-adopted has a parent");
        create_dir_all_synced(to_dir)?;
        fs::rename(&from, &to)?;
        sync_dir(to_dir)?;
        sync_dir(from_dir)?;
        moved.push(to);
    }
    Ok(moved)
}

/// Checks the existing part of `name`'s path under `root`: every existing ancestor is a real
/// directory and an existing final component is a regular file. Creates nothing.
///
/// # Errors
/// [`CoreError::InvalidResource`] naming the segment that is a symlink, a file where a directory is
/// needed, or a special file; [`CoreError::StorageFailed`] on other I/O errors.
pub fn check(root: &Path, name: &ResourceName) -> Result<(), CoreError> {
    walk(root, name, false).map(|_| ())
}

/// Like [`check`], then creates missing directories. Returns the directories whose entries
/// changed (parents of what was created), to be fsync'd before the creation is relied upon.
///
/// # Errors
/// As [`check`].
pub fn create_parents(root: &Path, name: &ResourceName) -> Result<Vec<PathBuf>, CoreError> {
    walk(root, name, true)
}

fn walk(root: &Path, name: &ResourceName, create: bool) -> Result<Vec<PathBuf>, CoreError> {
    let segments: Vec<&str> = name.segments().collect();
    let mut dir = root.to_path_buf();
    let mut changed = Vec::new();
    let device = fs::metadata(root)
        .map_err(|e| io_error(name, root, &e))?
        .dev();
    for (i, seg) in segments.iter().enumerate() {
        let path = dir.join(seg);
        let last = i + 1 == segments.len();
        match fs::symlink_metadata(&path) {
            // A checkpoint makes the data dir's filesystem durable in one call: a session file
            // on another one (below a mount point) would not be.
            Ok(meta) if meta.dev() != device => {
                return Err(unsafe_path(
                    name,
                    format!(
                        "segment {} ({seg}) is on another filesystem than the data dir (a mount \
                         point); keep every session file on the data dir's filesystem",
                        i + 1
                    ),
                ));
            }
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(unsafe_path(
                    name,
                    format!(
                        "segment {} ({seg}) is a symbolic link on disk; fencepost never follows links",
                        i + 1
                    ),
                ));
            }
            Ok(meta) if last && !meta.is_file() => {
                return Err(unsafe_path(
                    name,
                    format!(
                        "segment {} ({seg}) exists on disk and is not a regular file",
                        i + 1
                    ),
                ));
            }
            Ok(meta) if !last && !meta.is_dir() => {
                return Err(unsafe_path(
                    name,
                    format!(
                        "segment {} ({seg}) exists on disk and is not a directory",
                        i + 1
                    ),
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !create || last {
                    return Ok(changed);
                }
                match fs::create_dir(&path) {
                    Ok(()) => changed.push(dir.clone()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_error(name, &path, &e)),
                }
            }
            Err(e) => return Err(io_error(name, &path, &e)),
        }
        dir = path;
    }
    Ok(changed)
}

/// Opens (optionally creating) the regular file `path` under `root` without following any
/// symlink on the way, without leaving `root`'s filesystem and without blocking on a FIFO, and
/// checks that it is a regular file.
///
/// # Errors
/// [`CoreError::InvalidResource`] if it is or passes a link, crosses a mount point, or is not a
/// regular file; [`CoreError::StorageFailed`].
pub fn open_regular(
    root: &Path,
    name: &ResourceName,
    path: &Path,
    create: bool,
    append: bool,
) -> Result<Option<File>, CoreError> {
    let file = match open_beneath(root, path, create, append) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(unsafe_path(
                name,
                format!(
                    "{} is a symbolic link or has one on its way; fencepost never follows links",
                    path.display()
                ),
            ));
        }
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            return Err(unsafe_path(
                name,
                format!(
                    "{} is below a mount point; keep every session file on the data dir's \
                     filesystem",
                    path.display()
                ),
            ));
        }
        Err(e) => return Err(io_error(name, path, &e)),
    };
    let meta = file.metadata().map_err(|e| io_error(name, path, &e))?;
    if !meta.is_file() {
        return Err(unsafe_path(
            name,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(Some(file))
}

/// Set when `openat2` with the resolve flags is not available (kernels before 5.6, or a seccomp
/// filter that refuses it): see [`probe_openat2`].
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// The resolution [`open_beneath`] asks the kernel for.
fn beneath() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV
}

/// Finds out once, on `root`, whether `openat2` with the resolve flags works here; where it does
/// not, opens fall back to `O_NOFOLLOW` on the last component (logged once). Decided here rather
/// than on a failed open, where EPERM can also mean an immutable file.
pub fn probe_openat2(root: &Path) {
    let probe = File::open(root).map_err(|_| Errno::EIO).and_then(|dir| {
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(beneath());
        openat2(&dir, ".", how)
    });
    match probe {
        Ok(_) => NO_OPENAT2.store(false, Ordering::Relaxed),
        Err(e @ (Errno::ENOSYS | Errno::EPERM | Errno::EINVAL)) => {
            tracing::warn!(error = %e, "openat2 is not available: session files are opened with O_NOFOLLOW on the last component only, so a directory swapped for a link while a file is opened is not caught");
            NO_OPENAT2.store(true, Ordering::Relaxed);
        }
        Err(_) => {}
    }
}

/// Opens `path`, which lies under `root`, with `openat2` from `root` and the kernel's guarantee
/// that no component is a link, leaves `root` or crosses a mount: so a directory swapped for a
/// link between the path check ([`check`]) and this open cannot send the open elsewhere. Where
/// `openat2` is missing ([`probe_openat2`]), a plain open that refuses a link only as the last
/// component.
fn open_beneath(root: &Path, path: &Path, create: bool, append: bool) -> io::Result<File> {
    let mut flags = OFlag::O_RDWR | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW;
    if append {
        flags |= OFlag::O_APPEND;
    }
    if create {
        flags |= OFlag::O_CREAT;
    }
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let relative = path
            .strip_prefix(root)
            .map_err(|_| io::Error::other(format!("{} is outside the data dir", path.display())))?;
        let dir = File::open(root)?;
        // openat2 refuses a mode without O_CREAT.
        let mode = if create {
            Mode::from_bits_truncate(0o644)
        } else {
            Mode::empty()
        };
        let how = OpenHow::new().flags(flags).mode(mode).resolve(beneath());
        return match openat2(&dir, relative, how) {
            Ok(fd) => Ok(File::from(fd)),
            Err(Errno::ENOSYS) => {
                NO_OPENAT2.store(true, Ordering::Relaxed);
                open_beneath(root, path, create, append)
            }
            Err(e) => Err(e.into()),
        };
    }
    let mut opts = OpenOptions::new();
    opts.read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .mode(0o644);
    if append {
        opts.append(true);
    } else {
        opts.write(true);
    }
    if create {
        opts.create(true);
    }
    opts.open(path)
}

/// Creates `dir` and its missing parents, and fsyncs each parent whose entries changed.
///
/// # Errors
/// The I/O error.
pub fn create_dir_all_synced(dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// fsyncs a directory so that entries created in it survive power loss.
///
/// # Errors
/// The I/O error.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A storage error naming the path.
pub fn io_error(name: &ResourceName, path: &Path, e: &io::Error) -> CoreError {
    CoreError::StorageFailed {
        resource: name.as_str().to_owned(),
        detail: format!("{}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_and_files_on_the_path_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("evil")).unwrap();
        fs::write(root.path().join("plain"), b"x").unwrap();
        for bad in ["evil/s.jsonl", "plain/s.jsonl", "evil"] {
            let name = ResourceName::parse(bad).unwrap();
            let err = create_parents(root.path(), &name).unwrap_err();
            assert_eq!(err.reason(), "INVALID_RESOURCE", "{bad}: {err}");
        }
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_open_never_follows_a_link_anywhere_on_the_path() {
        // As if a directory was swapped for a link after the path was checked.
        let root = tempfile::tempdir().unwrap();
        probe_openat2(root.path());
        if NO_OPENAT2.load(Ordering::Relaxed) {
            eprintln!("skipped: openat2 is not available on this kernel");
            return;
        }
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("swapped")).unwrap();
        let name = ResourceName::parse("swapped/s.jsonl").unwrap();
        let path = root.path().join("swapped/s.jsonl");
        for create in [true, false] {
            let err = open_regular(root.path(), &name, &path, create, false).unwrap_err();
            assert_eq!(err.reason(), "INVALID_RESOURCE", "{err}");
            assert!(err.to_string().contains("symbolic link"), "{err}");
        }
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        // A real directory on the way is fine.
        fs::create_dir(root.path().join("real")).unwrap();
        let name = ResourceName::parse("real/s.jsonl").unwrap();
        let path = root.path().join("real/s.jsonl");
        assert!(
            open_regular(root.path(), &name, &path, false, false)
                .unwrap()
                .is_none()
        );
        assert!(
            open_regular(root.path(), &name, &path, true, false)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn missing_directories_are_created_and_reported() {
        let root = tempfile::tempdir().unwrap();
        let name = ResourceName::parse("a/b/c.jsonl").unwrap();
        let changed = create_parents(root.path(), &name).unwrap();
        assert_eq!(
            changed,
            vec![root.path().to_path_buf(), root.path().join("a")]
        );
        assert!(root.path().join("a/b").is_dir());
        assert!(!root.path().join("a/b/c.jsonl").exists());
    }
}
