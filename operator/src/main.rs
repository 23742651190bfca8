fn main() {
    print!("{}", tern_crds::all_crds_yaml());
}
