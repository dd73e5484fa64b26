fn main() {
    reuse_freed_memory();
    std::process::exit(loft::cli::main());
}

/// Tensors are large and short-lived. glibc hands every allocation over 128 KiB (rising to 32 MiB) to a
/// fresh mmap and returns it on free, so each step faults in and zeroes gigabytes of pages again; a
/// profile of a training step showed a fifth of the time in the kernel doing that. Serving them from
/// the heap lets freed blocks be reused. That holds only for the main arena: glibc gives other threads
/// (the trainer, rayon's and candle's workers) arenas of 64 MiB heaps that must mmap anything larger, so
/// all threads share the one main arena. (On the benchmark, which steps on the main thread, alternating
/// runs gave 6.90–7.23 s per SmolLM2 step at 4 × 256 tokens against 7.58–7.78 without: about the noise.)
fn reuse_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator settings; it is called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
