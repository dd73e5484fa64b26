fn main() {
    loft::engine::sysmem::tune_allocator();
    // candle's element-wise ops run on a pool of its own whose idle workers spin 25,000 times before
    // they sleep, on cores that rayon's workers (the matrix products, Loft's own ops) need: 3% of a
    // training step's CPU time went to that spinning on two cores. Set before any candle op runs.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "200");
    }
    std::process::exit(loft::cli::main());
}
