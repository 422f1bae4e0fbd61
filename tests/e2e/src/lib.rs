//! What the end-to-end tests share: a real Envoy (2 workers) running `dist/surgeguard.wasm`
//! in front of a real upstream on 127.0.0.1. Both stop when the [`Stack`] is dropped.
//!
//! `SURGEGUARD_BUILD=native` runs the same tests against the native build
//! (`dist/libsurgeguard_native.so`, an Envoy dynamic module; see `harness::envoy::Build`):
//! `./build.sh test` runs the files of local features a second time that way.

use std::time::Duration;
pub use surgeguard_harness::client;
use surgeguard_harness::envoy::{Bootstrap, Envoy, Options};
use surgeguard_harness::upstream::Upstream;

pub struct Stack {
    // Field order: Envoy stops before its upstream.
    pub envoy: Envoy,
    pub upstream: Upstream,
    pub port: u16,
}

impl Stack {
    /// Envoy with surgeguard configured by `plugin_json`, 2 workers, an instant upstream.
    pub fn start(plugin_json: &str) -> Stack {
        Stack::start_with(Some(plugin_json), Duration::ZERO, 2)
    }

    pub fn start_with(plugin_json: Option<&str>, upstream_delay: Duration, workers: u32) -> Stack {
        let upstream = Upstream::start(upstream_delay).expect("upstream starts");
        let yaml = Bootstrap::new(upstream.port, plugin_json).yaml();
        let opts = Options { concurrency: workers, ..Options::default() };
        let envoy = match Envoy::start(&yaml, &opts) {
            Ok(e) => e,
            Err(e) => panic!("envoy did not start: {}\n--- envoy log ---\n{}", e.message, e.log),
        };
        let port = envoy.listener_port();
        assert_ne!(port, 0, "listener port from the admin interface");
        Stack { envoy, upstream, port }
    }

    pub fn metric(&self, name: &str) -> u64 {
        self.envoy.metric(name)
    }

    /// Waits until `metric` reaches `value` (stats flush asynchronously), up to 5 s.
    pub fn wait_metric(&self, name: &str, value: u64) -> u64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.metric(name);
            if v == value || std::time::Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
