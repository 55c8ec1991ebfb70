//! Free space of the filesystem holding the data directory.
//!
//! An append that fails half-way for want of space stops the engine for good (a failed
//! fdatasync cannot be retried safely), so the server watches free space and refuses commands
//! below a reserve instead: a refusal ends by itself once space is freed.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Space on one filesystem, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes an unprivileged process may still write.
    pub available: u64,
    /// The filesystem's size.
    pub total: u64,
}

/// The space of the filesystem holding `path`.
pub fn space(path: &Path) -> std::io::Result<DiskSpace> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("the path holds a NUL byte"))?;
    // statvfs has no wrapper in std; libc's is the thinnest correct one.
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `stats` is a valid place for the call to fill.
    let result = unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `stats`.
    let stats = unsafe { stats.assume_init() };
    // The field types differ between platforms (u32 on some 32-bit ones).
    #[allow(clippy::unnecessary_cast)]
    let fragment = stats.f_frsize as u64;
    #[allow(clippy::unnecessary_cast)]
    Ok(DiskSpace {
        available: (stats.f_bavail as u64).saturating_mul(fragment),
        total: (stats.f_blocks as u64).saturating_mul(fragment),
    })
}

/// Bytes for people: `512 B`, `3.2 MiB`, `41.0 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_directory_has_a_size() {
        let here = space(Path::new(".")).unwrap();
        assert!(here.total > 0);
        assert!(here.available <= here.total);
        assert!(space(Path::new("/no/such/dir")).is_err());
    }

    #[test]
    fn bytes_read_naturally() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024 + 200 * 1024), "3.2 MiB");
        assert_eq!(human_bytes(41 * 1024 * 1024 * 1024), "41.0 GiB");
    }
}
