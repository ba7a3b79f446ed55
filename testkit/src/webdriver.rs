//! A small W3C WebDriver client over reqwest: a headless Chromium driven by
//! Debian's `chromedriver` on 127.0.0.1, for the dashboard's browser test and
//! its page-load bench. (A client crate such as fantoccini brings ~30 more
//! crates to build for the handful of commands these use.)
//!
//! ```no_run
//! # async fn demo() {
//! use arkline_testkit::webdriver::Browser;
//! use serde_json::json;
//!
//! let browser = Browser::start(1280, 800).await;
//! browser.goto("http://127.0.0.1:8740/ui").await;
//! let title = browser.eval("return document.title", json!([])).await;
//! println!("{title}");
//! browser.quit().await;
//! # }
//! ```
//!
//! Every method panics when the driver fails or a wait runs out (after
//! [`PATIENCE`]), with what it waited for and the page's text: a test or bench
//! cannot go on without its browser.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long a wait for the page gives up after.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A browser session; the driver is stopped when dropped.
#[derive(Debug)]
pub struct Browser {
    http: reqwest::Client,
    driver: Child,
    base: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind a loopback port")
}

impl Browser {
    /// Starts `chromedriver` and a headless Chromium with a `width`×`height`
    /// window.
    ///
    /// # Panics
    /// When either is missing, with the command that installs it; when the
    /// driver does not become ready within [`PATIENCE`] or refuses the
    /// session.
    pub async fn start(width: u32, height: u32) -> Browser {
        Self::launch(width, height, false).await
    }

    /// As [`Browser::start`], with the page laid out as on a phone of
    /// `width`×`height` CSS pixels (Chromium's device emulation: a headless
    /// window is never narrower than 500 pixels).
    ///
    /// # Panics
    /// As [`Browser::start`].
    pub async fn start_phone(width: u32, height: u32) -> Browser {
        Self::launch(width, height, true).await
    }

    async fn launch(width: u32, height: u32, phone: bool) -> Browser {
        for (tool, package) in [
            ("chromedriver", "chromium-driver"),
            ("chromium", "chromium"),
        ] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(
                found,
                "{tool} is not installed: `apt-get install {package}` (`.ci/deps.sh --test` installs it)"
            );
        }
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let http = reqwest::Client::new();
        let root = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ready = http.get(format!("{root}/status")).send().await;
            if let Ok(r) = ready
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == true
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut browser = Browser {
            http,
            driver,
            base: String::new(),
        };
        let mut options = json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage",
                     format!("--window-size={},{}", width.max(500), height)],
        });
        if phone {
            options["mobileEmulation"] =
                json!({"deviceMetrics": {"width": width, "height": height, "pixelRatio": 1.0}});
        }
        let session = browser
            .call(
                reqwest::Method::POST,
                &format!("{root}/session"),
                json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": options,
                }}}),
            )
            .await;
        let id = session["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        browser.base = format!("{root}/session/{id}");
        browser
    }

    async fn call(&self, method: reqwest::Method, url: &str, body: Value) -> Value {
        let mut request = self.http.request(method.clone(), url);
        if method != reqwest::Method::GET {
            request = request.json(&body);
        }
        let answer: Value = request
            .send()
            .await
            .expect("the driver answers")
            .json()
            .await
            .expect("the driver answers JSON");
        if answer["value"]["error"].is_string() {
            panic!("WebDriver {method} {url}: {}", answer["value"]);
        }
        answer["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, &format!("{}{path}", self.base), body)
            .await
    }

    /// Opens `url`; returns once the page has loaded (WebDriver's "normal"
    /// page-load strategy: the `load` event). Only the fragment differing
    /// from the current URL's, it moves within the page instead.
    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body; `arguments` as given) in the page.
    pub async fn eval(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// Runs the Chrome DevTools Protocol command `cmd` with `params`
    /// (chromedriver's `goog/cdp/execute`), e.g.
    /// `Page.addScriptToEvaluateOnNewDocument` to run a script in every page
    /// before the page's own.
    pub async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.post("/goog/cdp/execute", json!({ "cmd": cmd, "params": params }))
            .await
    }

    /// Waits until `script` returns something truthy, and returns it.
    pub async fn until(&self, what: &str, script: &str, args: Value) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.eval(script, args.clone()).await;
            let truthy = !(value.is_null()
                || value == false
                || value == ""
                || value.as_array().is_some_and(Vec::is_empty));
            if truthy {
                return value;
            }
            if Instant::now() > deadline {
                let page = self.eval("return document.body.innerText", json!([])).await;
                panic!("waited in vain for {what}; the page says:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The text of the first element matching `css`, once there is one.
    pub async fn text(&self, css: &str) -> String {
        self.until(
            css,
            "const e = document.querySelector(arguments[0]); return e && e.textContent",
            json!([css]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Clicks the first element matching `css`, once there is one and it can
    /// be clicked (a real click through the driver, not a script's).
    pub async fn click(&self, css: &str) {
        self.interact(css, "click", json!({})).await;
    }

    /// Types `text` into the first element matching `css`, once it takes input.
    pub async fn type_into(&self, css: &str, text: &str) {
        self.interact(css, "value", json!({ "text": text })).await;
    }

    /// `POST /element/{id}/{action}` on the first element matching `css`,
    /// again while the page is not ready for it: an element the script has
    /// not shown yet is "not interactable", one it has just redrawn is
    /// "stale".
    async fn interact(&self, css: &str, action: &str, body: Value) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let id = self.element(css).await;
            let answer: Value = self
                .http
                .post(format!("{}/element/{id}/{action}", self.base))
                .json(&body)
                .send()
                .await
                .expect("the driver answers")
                .json()
                .await
                .expect("the driver answers JSON");
            let error = answer["value"]["error"].as_str().unwrap_or_default();
            let retry = matches!(
                error,
                "element not interactable"
                    | "stale element reference"
                    | "element click intercepted"
            );
            if error.is_empty() {
                return;
            }
            if !retry || Instant::now() > deadline {
                let page = self.eval("return document.body.innerText", json!([])).await;
                panic!(
                    "WebDriver {action} on `{css}`: {}; the page says:\n{page}",
                    answer["value"]
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn element(&self, css: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let found = self
                .http
                .post(format!("{}/elements", self.base))
                .json(&json!({"using": "css selector", "value": css}))
                .send()
                .await
                .expect("the driver answers")
                .json::<Value>()
                .await
                .expect("the driver answers JSON");
            if let Some(first) = found["value"].as_array().and_then(|a| a.first()) {
                return first
                    .as_object()
                    .and_then(|o| o.values().next())
                    .and_then(Value::as_str)
                    .expect("an element id")
                    .to_owned();
            }
            if Instant::now() > deadline {
                let page = self.eval("return document.body.innerText", json!([])).await;
                panic!("no element matches `{css}`; the page says:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let data = self
            .call(
                reqwest::Method::GET,
                &format!("{}/screenshot", self.base),
                Value::Null,
            )
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(data.as_str().expect("the screenshot is a string"))
            .expect("the screenshot is base64")
    }

    /// Ends the session (the driver closes Chromium) and stops the driver.
    pub async fn quit(self) {
        let _ = self.http.delete(&self.base).send().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
