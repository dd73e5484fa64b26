fn main() {
    std::process::exit(loft::cli::main());
}
