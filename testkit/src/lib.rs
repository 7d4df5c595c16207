//! Test support: isolated, throw-away `mariadbd` instances.
