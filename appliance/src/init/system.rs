//! The syscall shell of init: mounts, the console, kernel modules, block
//! devices, the clock. Safe wrappers from `nix` only.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::kmod::{ModuleInitFlags, finit_module};
use nix::mount::{MsFlags, mount};
use nix::time::{ClockId, clock_settime};

use super::InitError;
use super::modules::{self, ModuleDeps};

/// Mounts the kernel's file systems: devtmpfs, proc, sysfs.
pub(super) fn mount_kernel_filesystems() -> Result<(), InitError> {
    for (fstype, target) in [("devtmpfs", "/dev"), ("proc", "/proc"), ("sysfs", "/sys")] {
        mount_fs(
            fstype,
            target,
            fstype,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            None,
        )?;
    }
    Ok(())
}

/// Mounts `source` on `target` (made if missing); an already mounted
/// target (`EBUSY`) is fine.
pub(super) fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), InitError> {
    let _ = fs::create_dir_all(target);
    match mount(Some(source), target, Some(fstype), flags, data) {
        Ok(()) | Err(nix::Error::EBUSY) => Ok(()),
        Err(source_err) => Err(InitError::Mount {
            target: target.into(),
            fstype: fstype.into(),
            source: source_err,
        }),
    }
}

/// Points stdin, stdout and stderr at `/dev/console`: the kernel found no
/// console node in the initramfs, so it opened none.
pub(super) fn attach_console() {
    if let Ok(console) = File::options().read(true).write(true).open("/dev/console") {
        let _ = nix::unistd::dup2_stdin(&console);
        let _ = nix::unistd::dup2_stdout(&console);
        let _ = nix::unistd::dup2_stderr(&console);
    }
}

/// Loads the modules `dir/modules.load` names, with their dependencies
/// from `dir/modules.dep`, in dependency order. A module that fails is
/// reported and skipped: the rest may still bring the appliance up.
pub(super) fn load_modules(dir: &Path) -> Result<usize, InitError> {
    let read = |name: &str| {
        fs::read_to_string(dir.join(name)).map_err(|source| InitError::Io {
            what: dir.join(name),
            source,
        })
    };
    let deps = ModuleDeps::parse(&read("modules.dep")?);
    let wanted = read("modules.load")?;
    let order = deps.load_order(modules::wanted(&wanted))?;
    let mut loaded = 0;
    for path in &order {
        let file = dir.join(path);
        let ko = match File::open(&file) {
            Ok(ko) => ko,
            Err(err) => {
                eprintln!("moat init: module {}: {err}", file.display());
                continue;
            }
        };
        match finit_module(&ko, c"", ModuleInitFlags::empty()) {
            Ok(()) => loaded += 1,
            Err(nix::Error::EEXIST) => {}
            Err(err) => eprintln!("moat init: module {}: {err}", file.display()),
        }
    }
    Ok(loaded)
}

/// The block device holding partition `number` of the first disk that has
/// it, waiting up to `wait` for drivers to find the disks.
pub(super) fn partition(number: u32, wait: Duration) -> Result<PathBuf, InitError> {
    let deadline = crate::clock::now() + wait;
    loop {
        let mut found: Vec<String> = fs::read_dir("/sys/class/block")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| {
                fs::read_to_string(entry.path().join("partition"))
                    .is_ok_and(|text| text.trim() == number.to_string())
            })
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        found.sort();
        if let Some(name) = found.first() {
            let node = PathBuf::from("/dev").join(name);
            if node.exists() {
                return Ok(node);
            }
        }
        if crate::clock::now() >= deadline {
            return Err(InitError::NoPartition(number));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `moat.KEY=VALUE` parameter of the kernel command line.
pub(super) fn cmdline_param(key: &str) -> Option<String> {
    let cmdline = fs::read_to_string("/proc/cmdline").ok()?;
    cmdline
        .split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
}

/// Sets the wall clock to `unix_ms`.
pub(super) fn set_clock(unix_ms: u64) -> Result<(), nix::Error> {
    clock_settime(
        ClockId::CLOCK_REALTIME,
        Duration::from_millis(unix_ms).into(),
    )
}

/// Writes `contents` to `path` atomically: temp file, fsync, rename.
pub(super) fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), InitError> {
    let io = |source| InitError::Io {
        what: path.to_owned(),
        source,
    };
    let temp = path.with_extension("tmp");
    let mut file = File::create(&temp).map_err(io)?;
    std::io::Write::write_all(&mut file, contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&temp, path).map_err(io)?;
    if let Some(dir) = path.parent().and_then(|dir| File::open(dir).ok()) {
        let _ = dir.sync_all();
    }
    Ok(())
}
