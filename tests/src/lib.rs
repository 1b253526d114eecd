//! Integration tests across longconn's crates live in `tests/tests/`; this library holds their
//! shared helpers.
