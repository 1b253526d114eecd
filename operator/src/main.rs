fn main() {
    print!("{}", longconn_operator::crd::crd_yaml().expect("crd"));
}
