//! Turning transparent huge pages off for the process (a file of its own, so that the setting,
//! which covers the whole process, reaches no other test under any test runner).

use tally_offline::{huge_pages_off, turn_off_huge_pages};

const REGION: usize = 8 << 20;

/// Maps `REGION` bytes aligned to 2 MiB, asks for huge pages as mimalloc does, touches every
/// byte, and returns the kilobytes of it the kernel backed with huge pages.
fn huge_kib_of_a_touched_region() -> u64 {
    // SAFETY: an anonymous private mapping of fresh memory, used only within this function and
    // unmapped at its end; the pointer arithmetic stays inside the mapping.
    unsafe {
        let mapped = libc::mmap(
            std::ptr::null_mut(),
            REGION * 2,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(
            mapped,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let aligned = ((mapped as usize + (2 << 20) - 1) & !((2 << 20) - 1)) as *mut u8;
        libc::madvise(aligned.cast(), REGION, libc::MADV_HUGEPAGE);
        std::ptr::write_bytes(aligned, 1, REGION);
        let huge = anon_huge_kib_at(aligned as usize);
        libc::munmap(mapped, REGION * 2);
        huge
    }
}

/// `AnonHugePages` of the mapping that starts at or holds `address`, from `/proc/self/smaps`.
fn anon_huge_kib_at(address: usize) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((start, end)) = range.split_once('-') {
                if let (Ok(start), Ok(end)) = (
                    usize::from_str_radix(start, 16),
                    usize::from_str_radix(end, 16),
                ) {
                    inside = (start..end).contains(&address);
                    continue;
                }
            }
        }
        if inside {
            if let Some(value) = line.strip_prefix("AnonHugePages:") {
                return value.trim().trim_end_matches("kB").trim().parse().unwrap();
            }
        }
    }
    panic!("no mapping holds {address:#x} in /proc/self/smaps");
}

/// After `turn_off_huge_pages` the kernel reads the setting back, `/proc/self/status` shows it,
/// and memory that asks for huge pages gets none; before it, on a kernel that has them to give,
/// the same memory got some (so the check above is not vacuous there).
#[test]
fn memory_that_asks_for_huge_pages_gets_none_once_they_are_turned_off() {
    let thp_mode =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let before = huge_kib_of_a_touched_region();
    if thp_mode.contains("[always]") || thp_mode.contains("[madvise]") {
        assert!(
            before > 0,
            "transparent huge pages are `{}` here, yet an advised, touched region got none before they were turned off",
            thp_mode.trim()
        );
    }
    assert!(!huge_pages_off());
    turn_off_huge_pages().unwrap();
    assert!(huge_pages_off());
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    assert!(
        status.lines().any(|line| line == "THP_enabled:\t0"),
        "no `THP_enabled: 0` in /proc/self/status:\n{status}"
    );
    assert_eq!(huge_kib_of_a_touched_region(), 0);
}
