//! The monoio runtime every executor thread (client shards, the peer thread) runs on:
//! io_uring (FusionDriver) with an explicit fallback to epoll when io_uring cannot be set up
//! (Docker's default seccomp profile blocks it; a small memlock limit makes ring creation
//! fail). `RINGD_FORCE_EPOLL=1` forces the fallback. Which driver runs is logged.

/// The runtime type both drivers build into.
pub type Runtime = monoio::FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
>;

/// Builds the runtime for the thread named `name` (for the log), or exits if neither driver
/// can be built.
pub fn build(name: &str) -> Runtime {
    let force_epoll = std::env::var_os("RINGD_FORCE_EPOLL").is_some_and(|v| v == "1");
    let uring = if force_epoll {
        Err(std::io::Error::other("RINGD_FORCE_EPOLL=1"))
    } else {
        // IORING_SETUP_COOP_TASKRUN: completions are run when this thread next enters the
        // kernel (it does so to submit, and to wait) instead of by interrupting it with an
        // IPI. `perf/ab.sh` put at 64 connections: 56-71k -> 69-77k req/s, 12.9-16.6 ->
        // 11.5-12.8 us of server CPU per PUT; GET unchanged. Kernels before 5.19 refuse the
        // flag: then the ring is built without it.
        let mut coop = io_uring::IoUring::builder();
        coop.setup_coop_taskrun();
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .uring_builder(coop)
            .enable_timer()
            .build()
            .or_else(|e| {
                tracing::debug!(thread = name, error = %e, "io_uring without COOP_TASKRUN");
                monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .enable_timer()
                    .build()
            })
    };
    match uring {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(thread = name, error = %e, "io_uring runtime unavailable, using epoll");
            match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
            {
                Ok(rt) => rt.into(),
                Err(e) => {
                    tracing::error!(thread = name, error = %e, "cannot build any runtime");
                    std::process::exit(1);
                }
            }
        }
    }
}
