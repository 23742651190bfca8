fn main() {
    std::process::exit(tern_agent::cli::main(std::env::args().collect()));
}
