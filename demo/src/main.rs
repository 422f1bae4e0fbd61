fn main() { eprintln!("demo: not built yet"); std::process::exit(1) }
