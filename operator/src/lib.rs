//! longconn-operator
