fn main() {
    eprintln!("longconn-e2e: not built yet");
    std::process::exit(2);
}
