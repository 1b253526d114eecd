fn main() {
    eprintln!("longconn-gateway: not built yet");
    std::process::exit(2);
}
