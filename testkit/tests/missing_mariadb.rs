//! A missing mariadbd gives an error that says how to install it. Its own
//! test binary (process): it points the kit at a binary that does not exist.
#![allow(clippy::unwrap_used)]

#[tokio::test]
async fn missing_mariadbd_says_how_to_install_it() {
    // SAFETY: the only test in this process; nothing else reads the environment now.
    unsafe { std::env::set_var(testkit::ENV_MARIADBD, "/nonexistent/mariadbd") };
    let err = testkit::MariaDb::start().await.unwrap_err();
    assert!(matches!(
        err,
        testkit::TestkitError::MissingBinary {
            program: "mariadbd",
            ..
        }
    ));
    let text = err.to_string();
    assert!(
        text.contains("install it with `apt-get install -y mariadb-server mariadb-client`"),
        "{text}"
    );
    assert!(text.contains(testkit::INSTALL_COMMAND));
}
