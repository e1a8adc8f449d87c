//! A real headless Chromium driven over WebDriver (chromedriver, installed
//! with Debian's `chromium` by `scripts/install-test-deps.sh`). A missing
//! browser fails the test. One browser at a time: two cores cannot run
//! more without the journeys timing out.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::wd::WindowHandle;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where the journeys' screenshots go.
pub fn screenshot_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots")
}

pub struct Browser {
    pub client: Client,
    driver: Child,
    profile: tempfile::TempDir,
    /// Every page source read, to look for secrets afterwards.
    pub seen: Vec<String>,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium `width` pixels wide.
    pub async fn start(width: u32) -> Self {
        let turn = ONE_AT_A_TIME.lock().await;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver) must be installed: run scripts/install-test-deps.sh");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-extensions", "--disable-popup-blocking",
                    format!("--window-size={width},900"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let mut caps = caps;
        if width < 500 {
            // Chromium's windows are at least 500 px wide: a phone is emulated.
            caps["goog:chromeOptions"]["mobileEmulation"] =
                json!({"deviceMetrics": {"width": width, "height": 780, "pixelRatio": 2.0}});
        }
        let Value::Object(caps) = caps else { unreachable!() };
        // WebDriver speaks plain HTTP here, but the builder wants a TLS provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = ClientBuilder::rustls()
            .unwrap()
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("chromium starts under chromedriver");
        Self {
            client,
            driver,
            profile,
            seen: Vec::new(),
            _turn: turn,
        }
    }

    pub async fn goto(&mut self, url: &str) {
        self.client.goto(url).await.unwrap();
        self.remember().await;
    }

    /// Reads the current page's source into `seen`.
    pub async fn remember(&mut self) -> String {
        let source = self.client.source().await.unwrap_or_default();
        self.seen.push(source.clone());
        source
    }

    /// Waits up to 15 s for an element.
    pub async fn wait_for(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(15))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    /// Waits up to 15 s until `css`'s text contains `needle`; returns the text.
    pub async fn wait_text(&self, css: &str, needle: &str) -> String {
        let started = Instant::now();
        loop {
            let text = match self.client.find(Locator::Css(css)).await {
                Ok(e) => e.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if text.contains(needle) {
                return text;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{css} never said {needle:?}; it says {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the URL's path is `path`.
    pub async fn wait_path(&self, path: &str) {
        let started = Instant::now();
        loop {
            let url = self.client.current_url().await.unwrap();
            if url.path() == path {
                // credgate's pages: wait until their script has set up its handlers.
                if path.starts_with("/connect") || path.starts_with("/manage") {
                    self.wait_for("html[data-ready]").await;
                }
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "still at {url}, wanted {path}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks `css`; on credgate's pages, once their script is ready.
    pub async fn click(&self, css: &str) {
        let path = self.client.current_url().await.unwrap().path().to_owned();
        if path.starts_with("/connect") || path.starts_with("/manage") {
            self.wait_for("html[data-ready]").await;
        }
        self.wait_for(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let field = self.wait_for(css).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// Runs a script in the page; returns its value.
    pub async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Waits for a window other than `known` to open; switches to it.
    pub async fn switch_to_new_window(&self, known: &[WindowHandle]) -> WindowHandle {
        let started = Instant::now();
        loop {
            let windows = self.client.windows().await.unwrap();
            if let Some(new) = windows.into_iter().find(|w| !known.contains(w)) {
                self.client.switch_to_window(new.clone()).await.unwrap();
                return new;
            }
            assert!(started.elapsed() < Duration::from_secs(15), "no new window opened");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `window` has closed itself.
    pub async fn wait_closed(&self, window: &WindowHandle) {
        let started = Instant::now();
        while self.client.windows().await.unwrap().contains(window) {
            assert!(started.elapsed() < Duration::from_secs(15), "the window did not close");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG of the current page as `target/ui-screenshots/{name}.png`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::create_dir_all(screenshot_dir()).unwrap();
        std::fs::write(screenshot_dir().join(format!("{name}.png")), png).unwrap();
    }

    /// Ends the browser session; returns every page source read.
    pub async fn finish(mut self) -> Vec<String> {
        self.client.clone().close().await.ok();
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A test that failed half-way: end chromedriver and every Chromium
        // process of this profile.
        self.driver.kill().ok();
        self.driver.wait().ok();
        Command::new("pkill")
            .args(["-f", &self.profile.path().display().to_string()])
            .status()
            .ok();
    }
}
