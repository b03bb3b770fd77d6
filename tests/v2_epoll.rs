//! The explicit epoll fallback (used when io_uring cannot be set up, e.g. under Docker's
//! seccomp profile) serves the same API. Its own test binary, because it sets an environment
//! variable that the spawned server inherits.

mod support;

use std::time::Duration;
use support::Server;

/// Waits (bounded) until the server reports at least `n` watchers in /v2/stats/store.
fn wait_for_watchers(s: &Server, n: u64) {
    for _ in 0..4000 {
        if s.get("/v2/stats/store").json()["watchers"]
            .as_u64()
            .unwrap_or(0)
            >= n
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("watchers never reached {n}");
}

#[test]
fn epoll_fallback_serves_the_same_api() {
    std::env::set_var("RINGD_FORCE_EPOLL", "1");
    let s = Server::ringd(&[]);
    assert_eq!(s.put_form("/v2/keys/f", "value=1").status, 201);
    assert_eq!(s.get("/v2/keys/f").json()["node"]["value"], "1");
    // A long poll answered by a later write, and a watcher freed when its client leaves.
    let addr = s.addr();
    let w = std::thread::spawn(move || support::get(&addr, "/v2/keys/f?wait=true"));
    wait_for_watchers(&s, 1);
    s.put_form("/v2/keys/f", "value=2");
    assert_eq!(w.join().unwrap().json()["node"]["value"], "2");
    let log = s.log_tail();
    assert!(log.contains("driver=\"epoll\""), "{log}");
    assert!(!log.contains("driver=\"io_uring\""), "{log}");
}
