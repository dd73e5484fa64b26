//! Memory figures from the operating system, on Linux, macOS and Windows: the machine's installed and
//! available memory (the pre-flight check and the Model page's fit), and this process's resident and peak
//! resident memory (training metrics, benchmarks). `None` where the system does not say.

/// Installed physical memory, in bytes.
pub fn installed() -> Option<u64> {
    os::installed()
}

/// Memory the system can give this process now without swapping, in bytes (Linux's MemAvailable; on
/// macOS free, inactive and purgeable pages; on Windows the available physical memory).
pub fn available() -> Option<u64> {
    os::available()
}

/// This process's resident memory now (its working set on Windows), in bytes.
pub fn resident() -> Option<u64> {
    os::resident()
}

/// The most resident memory this process has held so far, in bytes (on Linux, since the last reset
/// through /proc/self/clear_refs).
pub fn peak_resident() -> Option<u64> {
    os::peak_resident()
}

/// Let glibc's allocator keep freed memory for the next allocation instead of handing it back to the
/// system at once. A training step allocates and frees tens of megabytes per layer, and with glibc's
/// defaults much of that returns to the kernel only to be faulted in and zeroed again on the next
/// allocation: a seventh of the step's CPU time went to page faults and zeroing. With buffers under
/// 64 MiB served from the heap and up to 1 GiB of free heap kept, a SmolLM2 step ran 12% faster
/// (`loft bench-train`, 4 × 256 × 2, r=16: 130–133 → 147–149 tokens/s) for 2% more peak memory;
/// larger buffers (the logits) still come from and go back to the system directly. Call once, early;
/// [`release_free_memory`] gives the kept memory back when a job ends.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only changes allocator parameters; both values are in range for glibc.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        });
    }
}

/// Hand freed heap memory that [`tune_allocator`] kept back to the system: after a training run or
/// an evaluation, so an idle window does not hold a step's worth of memory.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; no live allocation moves.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A `Key:   123 kB` line of a /proc file, in bytes.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn proc_field_bytes(text: &str, key: &str) -> Option<u64> {
    let rest = text
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?;
    let mut words = rest.split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

#[cfg(target_os = "linux")]
mod os {
    use super::proc_field_bytes;

    fn read(path: &str, key: &str) -> Option<u64> {
        proc_field_bytes(&std::fs::read_to_string(path).ok()?, key)
    }

    pub fn installed() -> Option<u64> {
        read("/proc/meminfo", "MemTotal")
    }

    pub fn available() -> Option<u64> {
        read("/proc/meminfo", "MemAvailable")
    }

    pub fn resident() -> Option<u64> {
        read("/proc/self/status", "VmRSS")
    }

    pub fn peak_resident() -> Option<u64> {
        read("/proc/self/status", "VmHWM")
    }
}

#[cfg(target_os = "macos")]
mod os {
    // libc marks the Mach calls deprecated in favour of the mach2 crate; they are stable system calls.
    #![allow(deprecated)]

    use std::mem::{size_of, MaybeUninit};
    use std::sync::OnceLock;

    fn page_size() -> Option<u64> {
        // SAFETY: sysconf has no preconditions.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(size).ok().filter(|s| *s > 0)
    }

    pub fn installed() -> Option<u64> {
        let mut bytes: u64 = 0;
        let mut len = size_of::<u64>();
        // SAFETY: the name is NUL-terminated and `len` is the size of the buffer `bytes`.
        let rc = unsafe {
            libc::sysctlbyname(
                c"hw.memsize".as_ptr(),
                (&mut bytes as *mut u64).cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        (rc == 0 && len == size_of::<u64>() && bytes > 0).then_some(bytes)
    }

    pub fn available() -> Option<u64> {
        // mach_host_self adds a reference to the host port on every call: take it once.
        static HOST: OnceLock<libc::mach_port_t> = OnceLock::new();
        // SAFETY: mach_host_self has no preconditions.
        let host = *HOST.get_or_init(|| unsafe { libc::mach_host_self() });
        let mut stats = MaybeUninit::<libc::vm_statistics64>::zeroed();
        let mut count = libc::HOST_VM_INFO64_COUNT;
        // SAFETY: `stats` holds `count` integers; the kernel writes at most that many and lowers `count`.
        let rc = unsafe {
            libc::host_statistics64(
                host,
                libc::HOST_VM_INFO64,
                stats.as_mut_ptr().cast(),
                &mut count,
            )
        };
        if rc != libc::KERN_SUCCESS {
            return None;
        }
        // SAFETY: zero-initialised and filled by the kernel; every field is a plain integer.
        let stats = unsafe { stats.assume_init() };
        let pages = u64::from(stats.free_count)
            + u64::from(stats.inactive_count)
            + u64::from(stats.purgeable_count);
        pages.checked_mul(page_size()?)
    }

    fn task_info() -> Option<libc::mach_task_basic_info> {
        let mut info = MaybeUninit::<libc::mach_task_basic_info>::zeroed();
        let mut count = libc::MACH_TASK_BASIC_INFO_COUNT;
        // SAFETY: `info` holds `count` integers; the kernel writes at most that many.
        let rc = unsafe {
            libc::task_info(
                libc::mach_task_self(),
                libc::MACH_TASK_BASIC_INFO,
                info.as_mut_ptr().cast(),
                &mut count,
            )
        };
        // SAFETY: zero-initialised and filled by the kernel; every field is a plain integer.
        (rc == libc::KERN_SUCCESS).then(|| unsafe { info.assume_init() })
    }

    pub fn resident() -> Option<u64> {
        task_info().map(|i| i.resident_size)
    }

    pub fn peak_resident() -> Option<u64> {
        task_info().map(|i| i.resident_size_max)
    }
}

#[cfg(windows)]
mod os {
    use std::mem::{size_of, MaybeUninit};

    use windows_sys::Win32::System::ProcessStatus::{
        GetProcessMemoryInfo, PROCESS_MEMORY_COUNTERS,
    };
    use windows_sys::Win32::System::SystemInformation::{GlobalMemoryStatusEx, MEMORYSTATUSEX};
    use windows_sys::Win32::System::Threading::GetCurrentProcess;

    fn memory_status() -> Option<MEMORYSTATUSEX> {
        let mut status = MaybeUninit::<MEMORYSTATUSEX>::zeroed();
        // SAFETY: the struct is zeroed, and dwLength (its first field) is set before the call, as required.
        unsafe {
            (*status.as_mut_ptr()).dwLength = size_of::<MEMORYSTATUSEX>() as u32;
            (GlobalMemoryStatusEx(status.as_mut_ptr()) != 0).then(|| status.assume_init())
        }
    }

    fn process_counters() -> Option<PROCESS_MEMORY_COUNTERS> {
        let mut counters = MaybeUninit::<PROCESS_MEMORY_COUNTERS>::zeroed();
        let size = size_of::<PROCESS_MEMORY_COUNTERS>() as u32;
        // SAFETY: GetCurrentProcess returns a pseudo-handle that needs no closing; `counters` is `size`
        // bytes.
        unsafe {
            (GetProcessMemoryInfo(GetCurrentProcess(), counters.as_mut_ptr(), size) != 0)
                .then(|| counters.assume_init())
        }
    }

    pub fn installed() -> Option<u64> {
        memory_status().map(|s| s.ullTotalPhys)
    }

    pub fn available() -> Option<u64> {
        memory_status().map(|s| s.ullAvailPhys)
    }

    pub fn resident() -> Option<u64> {
        process_counters().map(|c| c.WorkingSetSize as u64)
    }

    pub fn peak_resident() -> Option<u64> {
        process_counters().map(|c| c.PeakWorkingSetSize as u64)
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos", windows)))]
mod os {
    pub fn installed() -> Option<u64> {
        None
    }

    pub fn available() -> Option<u64> {
        None
    }

    pub fn resident() -> Option<u64> {
        None
    }

    pub fn peak_resident() -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_are_read_in_bytes() {
        let meminfo = "MemTotal:       16318216 kB\nMemFree:         1021716 kB\nMemAvailable:    9876543 kB\nHugePages_Total:       0\n";
        assert_eq!(
            proc_field_bytes(meminfo, "MemTotal"),
            Some(16_318_216 * 1024)
        );
        assert_eq!(
            proc_field_bytes(meminfo, "MemAvailable"),
            Some(9_876_543 * 1024)
        );
        assert_eq!(proc_field_bytes(meminfo, "HugePages_Total"), Some(0));
        // A key that is only a prefix of another key is not that key.
        assert_eq!(proc_field_bytes(meminfo, "Mem"), None);
        assert_eq!(proc_field_bytes(meminfo, "SwapTotal"), None);
        assert_eq!(proc_field_bytes("VmRSS:\t  x kB\n", "VmRSS"), None);
    }

    /// This machine's figures are there and consistent with each other and with 64 MiB just touched.
    #[cfg(any(target_os = "linux", target_os = "macos", windows))]
    #[test]
    fn this_machine_reports_its_memory() {
        let installed = installed().expect("installed memory");
        let available = available().expect("available memory");
        assert!(available <= installed, "{available} > {installed}");
        // Touch 64 MiB so that the resident figures must see it.
        let block = vec![1u8; 64 << 20];
        let resident = resident().expect("resident memory");
        let peak = peak_resident().expect("peak resident memory");
        assert!(std::hint::black_box(&block)
            .iter()
            .step_by(4096)
            .all(|b| *b == 1));
        assert!(resident >= 64 << 20, "resident {resident}");
        assert!(peak >= resident, "peak {peak} < resident {resident}");
        assert!(resident < installed);
    }
}
