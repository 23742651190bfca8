fn main() {
    std::process::exit(tern_operator::cli::main(std::env::args().collect()));
}
