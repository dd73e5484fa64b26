fn main() {
    loft::engine::sysmem::tune_allocator();
    std::process::exit(loft::cli::main());
}
