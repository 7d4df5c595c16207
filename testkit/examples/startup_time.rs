//! Times instance start-up, restart and drop on this machine:
//! `cargo run -p testkit --example startup_time`.

use std::time::Instant;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), testkit::TestkitError> {
    for round in 1..=5 {
        let t = Instant::now();
        let db = testkit::MariaDb::start().await?;
        let started = t.elapsed();
        let t = Instant::now();
        db.kill9().await?;
        db.start_again().await?;
        let restarted = t.elapsed();
        let t = Instant::now();
        drop(db);
        println!(
            "round {round}: start {started:?}, kill -9 + start_again {restarted:?}, drop {:?}",
            t.elapsed()
        );
    }
    let t = Instant::now();
    let cluster = testkit::Cluster::start(3).await?;
    println!("3 instances at once: {:?}", t.elapsed());
    drop(cluster);
    Ok(())
}
