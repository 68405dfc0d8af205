//! A headless browser for tests: Debian's Chromium, driven through chromedriver over WebDriver.
//!
//! The client speaks W3C WebDriver (JSON over HTTP) directly through `reqwest`, and offers what
//! a test of a web page needs: go to a URL, find elements by CSS selector, wait for them and for
//! their text, click and type, answer `confirm()` dialogs, run a script, read cookies (HttpOnly
//! ones too) and take a screenshot. Like the rest of this crate its calls panic on failure, with
//! the WebDriver command, its error and the page's URL in the message: a panic is how a test
//! reports failure.
//!
//! Each [`Browser`] is its own chromedriver on a free port, with its own Chromium profile in a
//! temporary folder, so tests run in parallel and share nothing. Dropping it ends the session
//! and kills chromedriver's whole process group, Chromium included; a watchdog in that group
//! stops it too when the test process ends without dropping the `Browser` (Ctrl-C, a
//! `static`). The browser comes from Debian's packages only: `scripts/browser install`.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

/// Where Debian's `chromium-driver` package puts chromedriver.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Where Debian's `chromium` package puts the browser (a launcher script around
/// `/usr/lib/chromium/chromium` that adds Debian's default flags).
const CHROMIUM: &str = "/usr/bin/chromium";
/// What to run when either is missing.
const INSTALL_HINT: &str = "install Debian's chromium and chromium-driver with `scripts/browser install`";
/// The W3C key under which an element reference travels.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long chromedriver may take to answer `/status`; it takes about 0.1 s here.
const STARTUP: Duration = Duration::from_secs(10);
/// How often the `wait_for…` helpers look again.
const POLL: Duration = Duration::from_millis(100);
/// How long `accept_alert`/`dismiss_alert` wait for a dialog to open: a click's handler may
/// open it a moment after the click returns.
const ALERT_WAIT: Duration = Duration::from_secs(5);
/// Page loads and scripts give up within this, so a hung page fails the test instead of
/// hanging it; each HTTP request to chromedriver has a little longer.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// An error WebDriver answered with: its `value.error` code and `value.message`.
#[derive(Debug, Clone)]
struct WdError {
    error: String,
    message: String,
}

impl std::fmt::Display for WdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // chromedriver appends a native stack trace to the message; it says nothing to a test.
        let message = self.message.split("\nStacktrace:").next().unwrap_or_default().trim_end();
        write!(f, "{}: {message}", self.error)
    }
}

/// One WebDriver session: the HTTP client and the session's base URL. Elements carry a copy,
/// so they can act without borrowing the [`Browser`].
#[derive(Debug, Clone)]
struct Session {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`.
    base: String,
}

impl Session {
    /// Sends a command; `Err` when WebDriver answers with an error. `body` is `None` for GET
    /// and DELETE; POST always sends a JSON object, as WebDriver requires.
    async fn try_cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, WdError> {
        command(&self.http, method, &format!("{}{path}", self.base), body).await
    }

    /// Sends a command and panics, naming it, when WebDriver answers with an error.
    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let what = format!("{method} {path}");
        self.try_cmd(method, path, body).await.unwrap_or_else(|e| panic!("WebDriver {what} failed: {e}"))
    }

    async fn get(&self, path: &str) -> Value {
        self.cmd(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.cmd(reqwest::Method::POST, path, Some(body)).await
    }

    /// The page's URL, for panic messages: never panics itself, since it runs while another
    /// failure is being reported.
    async fn url_for_message(&self) -> String {
        match self.try_cmd(reqwest::Method::GET, "/url", None).await {
            Ok(Value::String(url)) => url,
            Ok(other) => other.to_string(),
            Err(e) => format!("(unknown URL: {e})"),
        }
    }

    /// `find` under `scope` (`""` for the document, `/element/ID` for an element): `Ok(None)`
    /// when nothing matches.
    async fn try_find(&self, scope: &str, css: &str) -> Result<Option<Element>, WdError> {
        let body = json!({ "using": "css selector", "value": css });
        match self.try_cmd(reqwest::Method::POST, &format!("{scope}/element"), Some(body)).await {
            Ok(v) => Ok(Some(self.element(&v, css))),
            Err(e) if e.error == "no such element" => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn find(&self, scope: &str, css: &str) -> Element {
        match self.try_find(scope, css).await {
            Ok(Some(element)) => element,
            Ok(None) => panic!("no element matches `{css}` on {}", self.url_for_message().await),
            Err(e) => panic!("finding `{css}` on {} failed: {e}", self.url_for_message().await),
        }
    }

    async fn find_all(&self, scope: &str, css: &str) -> Vec<Element> {
        let body = json!({ "using": "css selector", "value": css });
        match self.try_cmd(reqwest::Method::POST, &format!("{scope}/elements"), Some(body)).await {
            Ok(Value::Array(found)) => found.iter().map(|v| self.element(v, css)).collect(),
            Ok(other) => panic!("WebDriver answered finding all `{css}` with {other}, not an array"),
            Err(e) => panic!("finding all `{css}` on {} failed: {e}", self.url_for_message().await),
        }
    }

    fn element(&self, v: &Value, css: &str) -> Element {
        let Some(id) = v.get(ELEMENT_KEY).and_then(Value::as_str) else {
            panic!("WebDriver answered finding `{css}` with {v}, not an element reference")
        };
        Element { session: self.clone(), id: id.to_owned(), css: css.to_owned() }
    }

    /// Accepts or dismisses the open dialog, waiting a moment for one to open.
    async fn close_alert(&self, action: &str) {
        let deadline = tokio::time::Instant::now() + ALERT_WAIT;
        loop {
            match self.try_cmd(reqwest::Method::POST, &format!("/alert/{action}"), Some(json!({}))).await {
                Ok(_) => return,
                Err(e) if e.error == "no such alert" && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => panic!(
                    "{action} alert on {} failed after waiting {ALERT_WAIT:?} for one: {e}",
                    self.url_for_message().await
                ),
            }
        }
    }
}

/// Sends one WebDriver command to any URL (the session does not exist yet for `/session`).
async fn command(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value, WdError> {
    let mut request = http.request(method.clone(), url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let transport = |e: reqwest::Error| WdError {
        error: "no answer from chromedriver".to_owned(),
        message: format!("{method} {url}: {e}"),
    };
    let response = request.send().await.map_err(transport)?;
    let status = response.status();
    let answer: Value = response.json().await.map_err(transport)?;
    let value = answer.get("value").cloned().unwrap_or(Value::Null);
    // An error is a non-2xx status with `value.error`; both are checked, as a success value
    // (a script's result) may itself be an object with an `error` field.
    if !status.is_success() {
        let field = |name: &str| value.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
        let error = field("error");
        return Err(WdError {
            error: if error.is_empty() { format!("HTTP {status}") } else { error },
            message: field("message"),
        });
    }
    Ok(value)
}

/// A headless Chromium, its own chromedriver and one WebDriver session; all stopped on drop.
#[derive(Debug)]
pub struct Browser {
    session: Session,
    /// chromedriver and its watchdog, in a process group of their own with Chromium.
    driver: Driver,
    port: u16,
    /// Holds the Chromium profile (`profile/`) and chromedriver's log (`chromedriver.log`,
    /// Chromium's own log lines included); deleted on drop, after the processes.
    dir: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free loopback port, waits until it is ready, and opens a
    /// session with a fresh headless Chromium (1280×900). Panics, naming `scripts/browser
    /// install`, when chromedriver or Chromium is missing.
    pub async fn start() -> Self {
        for path in [CHROMEDRIVER, CHROMIUM] {
            assert!(Path::new(path).exists(), "browser tests need {path}: {INSTALL_HINT}");
        }
        let dir = tempfile::Builder::new().prefix("wavecast-browser-").tempdir().expect("a temporary folder");
        let profile = dir.path().join("profile");
        let log = dir.path().join("chromedriver.log");
        let http = reqwest::Client::builder()
            // chromedriver is on loopback: a proxy from the environment must not sit between.
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("an HTTP client for chromedriver");

        // free_port's port may be taken by the time chromedriver binds it (tests start browsers
        // in parallel): then chromedriver exits at once, and another port is tried.
        let mut tries = 0;
        let (driver, port) = loop {
            tries += 1;
            let port = crate::free_port();
            let mut driver = Driver::spawn(port, dir.path(), &log);
            match wait_ready(&http, port, &mut driver.chromedriver).await {
                Ok(()) => break (driver, port),
                Err(why) => {
                    driver.kill();
                    assert!(tries < 3, "chromedriver did not start ({why}); its log:\n{}", read_log(&log));
                }
            }
        };

        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            // Chromium's own connections to the internet (QUIC, component updates, sync, field
            // trials) are refused by this machine's closed network; these keep it from trying.
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            // Chromium's shared memory goes to /tmp instead of /dev/shm, which is small in many
            // containers: Chromium crashes when it runs out there.
            "--disable-dev-shm-usage".to_owned(),
            format!("--user-data-dir={}", profile.display()),
            "--window-size=1280,900".to_owned(),
        ];
        let page_ms = PAGE_TIMEOUT.as_secs() * 1000;
        let capabilities = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
                // Console messages, for `console_log`.
                "goog:loggingPrefs": { "browser": "ALL" },
                "timeouts": { "pageLoad": page_ms, "script": page_ms, "implicit": 0 },
                // A dialog the test did not expect is dismissed and the command fails naming it.
                "unhandledPromptBehavior": "dismiss and notify",
            }}
        });
        let url = format!("http://127.0.0.1:{port}/session");
        let mut browser = Self { session: Session { http: http.clone(), base: String::new() }, driver, port, dir };
        let created = match command(&http, reqwest::Method::POST, &url, Some(capabilities)).await {
            Ok(created) => created,
            Err(e) => panic!("starting Chromium through chromedriver failed: {e}; the log:\n{}", read_log(&log)),
        };
        let Some(id) = created.get("sessionId").and_then(Value::as_str) else {
            panic!("chromedriver answered the new session with {created}, without a sessionId")
        };
        browser.session.base = format!("{url}/{id}");
        browser
    }

    /// The port chromedriver listens on (`http://127.0.0.1:PORT`), for a test that wants to
    /// send a WebDriver command this client lacks.
    pub fn chromedriver_port(&self) -> u16 {
        self.port
    }

    /// chromedriver's log so far, Chromium's log lines included: worth printing when a page
    /// misbehaves.
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("chromedriver.log"))
    }

    /// Goes to `url` and waits for the page to load (at most 30 s).
    pub async fn goto(&self, url: &str) {
        let body = json!({ "url": url });
        if let Err(e) = self.session.try_cmd(reqwest::Method::POST, "/url", Some(body)).await {
            panic!("going to {url} failed: {e}");
        }
    }

    /// The page's URL.
    pub async fn current_url(&self) -> String {
        as_string(self.session.get("/url").await, "the URL")
    }

    /// Resizes the window (outer size, in CSS pixels), e.g. to check a narrow layout. Headless
    /// Chromium keeps windows at least 500 pixels wide.
    pub async fn set_window_size(&self, width: u32, height: u32) {
        self.session.post("/window/rect", json!({ "width": width, "height": height })).await;
    }

    /// The page's `<title>`.
    pub async fn title(&self) -> String {
        as_string(self.session.get("/title").await, "the title")
    }

    /// The page's current DOM, serialized as HTML.
    pub async fn page_source(&self) -> String {
        as_string(self.session.get("/source").await, "the page source")
    }

    /// The first element matching `css`; panics with the selector and the page's URL when
    /// none does.
    pub async fn find(&self, css: &str) -> Element {
        self.session.find("", css).await
    }

    /// Every element matching `css`, in document order; empty when none does.
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.session.find_all("", css).await
    }

    /// Whether an element matches `css` now.
    pub async fn exists(&self, css: &str) -> bool {
        !self.find_all(css).await.is_empty()
    }

    /// Waits until an element matches `css` (looking every 100 ms) and returns it; panics
    /// after `timeout` with the selector and the page's URL.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> Element {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.session.try_find("", css).await {
                Ok(Some(element)) => return element,
                Ok(None) => {}
                Err(e) => panic!("finding `{css}` on {} failed: {e}", self.session.url_for_message().await),
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("no element matched `{css}` within {timeout:?} on {}", self.session.url_for_message().await);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until an element matching `css` shows text containing `needle` (looking every
    /// 100 ms) and returns it; panics after `timeout` showing the last text seen. The element
    /// is found again each time, so a page that replaces it is followed.
    pub async fn wait_for_text(&self, css: &str, needle: &str, timeout: Duration) -> Element {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last;
        loop {
            match self.session.try_find("", css).await {
                // The element may be replaced between the find and the read: then look again.
                Ok(Some(element)) => match element.try_text().await {
                    Ok(text) if text.contains(needle) => return element,
                    Ok(text) => last = format!("{text:?}"),
                    Err(e) => last = format!("(reading it failed: {e})"),
                },
                Ok(None) => last = "(no element matched)".to_owned(),
                Err(e) => last = format!("(finding it failed: {e})"),
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "`{css}` did not show {needle:?} within {timeout:?} on {}; the last text seen: {last}",
                    self.session.url_for_message().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Clicks the first element `css` selects, finding it again when a page that updates itself
    /// replaced it between the find and the click ("stale element reference").
    pub async fn click_on(&self, css: &str) {
        let mut last = String::new();
        for _ in 0..5 {
            let element = self.find(css).await;
            match element.try_cmd(reqwest::Method::POST, "/click", Some(json!({}))).await {
                Ok(_) => return,
                Err(e) if e.error == "stale element reference" => last = e.to_string(),
                Err(e) => panic!("clicking `{css}` failed: {e} (on {})", self.session.url_for_message().await),
            }
        }
        panic!("`{css}` was replaced under every one of 5 clicks; the last: {last}")
    }

    /// Accepts the open `alert()`/`confirm()`/`prompt()` dialog (OK), waiting up to 5 s for
    /// one to open; panics when none does.
    pub async fn accept_alert(&self) {
        self.session.close_alert("accept").await;
    }

    /// Dismisses the open dialog (Cancel), waiting up to 5 s for one to open; panics when none
    /// does.
    pub async fn dismiss_alert(&self) {
        self.session.close_alert("dismiss").await;
    }

    /// The open dialog's message, or `None` when no dialog is open now.
    pub async fn alert_text(&self) -> Option<String> {
        match self.session.try_cmd(reqwest::Method::GET, "/alert/text", None).await {
            Ok(v) => Some(as_string(v, "the alert's text")),
            Err(e) if e.error == "no such alert" => None,
            Err(e) => panic!("reading the alert's text failed: {e}"),
        }
    }

    /// Runs `script` as the body of a function in the page (`arguments[0]`, … are `args`) and
    /// returns what it returns; panics with the script's error when it throws.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        let body = json!({ "script": script, "args": args });
        match self.session.try_cmd(reqwest::Method::POST, "/execute/sync", Some(body)).await {
            Ok(v) => v,
            Err(e) => panic!("the script failed: {e}\n{script}"),
        }
    }

    /// Runs `script` like [`Browser::execute`], with one more argument: the callback to call
    /// with the result, when the script is done (at most 30 s), e.g.
    /// `fetch('/x').then(r => arguments[0](r.status))`.
    pub async fn execute_async(&self, script: &str, args: Vec<Value>) -> Value {
        let body = json!({ "script": script, "args": args });
        match self.session.try_cmd(reqwest::Method::POST, "/execute/async", Some(body)).await {
            Ok(v) => v,
            Err(e) => panic!("the async script failed: {e}\n{script}"),
        }
    }

    /// The cookies visible to the current page, HttpOnly ones included, as (name, value).
    pub async fn cookies(&self) -> Vec<(String, String)> {
        let cookies = self.session.get("/cookie").await;
        let Value::Array(cookies) = cookies else { panic!("WebDriver answered GET /cookie with {cookies}") };
        cookies
            .iter()
            .map(|c| {
                let field = |name: &str| c.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
                (field("name"), field("value"))
            })
            .collect()
    }

    /// The page's console messages since the last call, as `LEVEL message` lines (a page's
    /// uncaught errors show up here as `SEVERE`).
    pub async fn console_log(&self) -> Vec<String> {
        let entries = self.session.post("/se/log", json!({ "type": "browser" })).await;
        let Value::Array(entries) = entries else { panic!("WebDriver answered the browser log with {entries}") };
        entries
            .iter()
            .map(|e| {
                let field = |name: &str| e.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
                format!("{} {}", field("level"), field("message"))
            })
            .collect()
    }

    /// Writes a PNG of the window to `path`, creating its folder.
    pub async fn screenshot(&self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        let encoded = as_string(self.session.get("/screenshot").await, "the screenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap_or_else(|e| panic!("the screenshot is not base64: {e}"));
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing the screenshot to {}: {e}", path.display()));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session lets chromedriver close Chromium cleanly. Drop may run inside a
        // runtime or outside one, so this is one blocking request by hand, not reqwest; it may
        // fail (chromedriver gone, a session never made), and killing the group below covers
        // that.
        if let Some(path) = self.session.base.strip_prefix(&format!("http://127.0.0.1:{}", self.port)) {
            delete(self.port, path);
        }
        self.driver.kill();
    }
}

/// An element of the page, found by a CSS selector.
#[derive(Debug, Clone)]
pub struct Element {
    session: Session,
    id: String,
    /// The selector it was found by, for panic messages.
    css: String,
}

impl Element {
    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        match self.try_cmd(method.clone(), path, body).await {
            Ok(v) => v,
            Err(e) => panic!(
                "WebDriver {method} {path} on `{}` failed: {e} (on {})",
                self.css,
                self.session.url_for_message().await
            ),
        }
    }

    async fn try_cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, WdError> {
        self.session.try_cmd(method, &format!("/element/{}{path}", self.id), body).await
    }

    async fn try_text(&self) -> Result<String, WdError> {
        let v = self.try_cmd(reqwest::Method::GET, "/text", None).await?;
        Ok(as_string(v, "an element's text"))
    }

    /// Clicks it (scrolled into view; panics when something else would take the click).
    pub async fn click(&self) {
        self.cmd(reqwest::Method::POST, "/click", Some(json!({}))).await;
    }

    /// Types `text` into it, after what it holds.
    pub async fn send_keys(&self, text: &str) {
        self.cmd(reqwest::Method::POST, "/value", Some(json!({ "text": text }))).await;
    }

    /// Empties an input or textarea.
    pub async fn clear(&self) {
        self.cmd(reqwest::Method::POST, "/clear", Some(json!({}))).await;
    }

    /// Its visible text, as rendered (hidden parts left out).
    pub async fn text(&self) -> String {
        as_string(self.cmd(reqwest::Method::GET, "/text", None).await, "an element's text")
    }

    /// The HTML attribute `name` as written in the markup, or `None` when absent. (An input's
    /// current value is the `value` property: [`Element::property`].)
    pub async fn attr(&self, name: &str) -> Option<String> {
        match self.cmd(reqwest::Method::GET, &format!("/attribute/{name}"), None).await {
            Value::Null => None,
            Value::String(s) => Some(s),
            other => Some(other.to_string()),
        }
    }

    /// The DOM property `name` (an input's `value`, a checkbox's `checked`), `Null` when unset.
    pub async fn property(&self, name: &str) -> Value {
        self.cmd(reqwest::Method::GET, &format!("/property/{name}"), None).await
    }

    /// The first element inside this one matching `css`; panics when none does.
    pub async fn find(&self, css: &str) -> Element {
        self.session.find(&format!("/element/{}", self.id), css).await
    }

    /// Every element inside this one matching `css`.
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.session.find_all(&format!("/element/{}", self.id), css).await
    }
}

fn as_string(v: Value, what: &str) -> String {
    match v {
        Value::String(s) => s,
        other => panic!("WebDriver answered {what} with {other}, not a string"),
    }
}

/// chromedriver, leading a process group of its own that Chromium joins as its child, and a
/// watchdog shell in that group that cleans up once this process is gone: Chromium would
/// outlive a test process that ends without dropping its `Browser` (Ctrl-C, a `static`).
/// Killing the group kills them all; the crash handlers Chromium starts in sessions of their own
/// exit with it.
#[derive(Debug)]
struct Driver {
    chromedriver: Child,
    watchdog: Child,
}

impl Driver {
    /// Starts chromedriver on `port`, logging to `log`, and the watchdog, which removes `dir`
    /// when it cleans up.
    fn spawn(port: u16, dir: &Path, log: &Path) -> Self {
        use std::os::unix::process::CommandExt as _;
        let log_file = std::fs::File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let output =
            |what| log_file.try_clone().unwrap_or_else(|e| panic!("opening {} for {what}: {e}", log.display()));
        let mut chromedriver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(output("stdout"))
            .stderr(output("stderr"))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {CHROMEDRIVER}: {e}; {INSTALL_HINT}"));
        // Once the test process is gone: the rest of the group is asked to stop (the shell
        // ignores that itself), the temporary folder is removed when Chromium no longer writes
        // there, and whatever is left of the group, the shell included, is killed.
        let script = r#"
            while kill -0 "$1" 2>/dev/null; do sleep 1; done
            trap '' TERM
            kill -TERM 0
            sleep 2
            rm -rf "$2"
            kill -KILL 0
        "#;
        let group = i32::try_from(chromedriver.id()).expect("a process id fits an i32");
        let watchdog = Command::new("/bin/sh")
            .args(["-c", script, "sh", &std::process::id().to_string()])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(group)
            .spawn();
        match watchdog {
            Ok(watchdog) => Self { chromedriver, watchdog },
            Err(e) => {
                let _ = chromedriver.kill();
                let _ = chromedriver.wait();
                panic!("starting the watchdog shell for chromedriver: {e}");
            }
        }
    }

    /// Kills the whole group and reaps chromedriver and the watchdog. The group's id stays
    /// taken while any member lives (the watchdog outlives an early chromedriver), so the
    /// signal cannot reach a stranger.
    fn kill(&mut self) {
        let group = rustix::process::Pid::from_child(&self.chromedriver);
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        for child in [&mut self.chromedriver, &mut self.watchdog] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until chromedriver on `port` says it is ready; `Err` when it does not within
/// [`STARTUP`], or when it exits (as it does at once when the port is taken).
async fn wait_ready(http: &reqwest::Client, port: u16, chromedriver: &mut Child) -> Result<(), String> {
    let url = format!("http://127.0.0.1:{port}/status");
    let deadline = tokio::time::Instant::now() + STARTUP;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(status)) = chromedriver.try_wait() {
            return Err(format!("it exited with {status}"));
        }
        if let Ok(status) = command(http, reqwest::Method::GET, &url, None).await
            && status.get("ready").and_then(Value::as_bool) == Some(true)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("not ready within {STARTUP:?} on port {port}"))
}

/// `DELETE path` to chromedriver, blocking, bounded to a few seconds; the answer is ignored.
fn delete(port: u16, path: &str) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    // chromedriver refuses HTTP/1.0 and keeps the connection open despite `Connection: close`,
    // so the answer ends where its Content-Length says, not at the end of the stream.
    let request = format!("DELETE {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return;
    }
    // The answer comes once chromedriver has closed Chromium.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !response_complete(&answer) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
}

/// Whether `answer` holds an HTTP response's head and as much body as its Content-Length.
fn response_complete(answer: &[u8]) -> bool {
    let Some(head_end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    answer.len() >= head_end + 4 + length
}

fn read_log(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            // The end is what explains a failure; the log can be long.
            let start = text.len().saturating_sub(8000);
            let start = (start..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
            text[start..].to_owned()
        }
        Err(e) => format!("(no log at {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    const PAGE: &str = r#"<!doctype html>
<title>browser test</title>
<p id="out">ready</p>
<ul><li class="item">one</li><li class="item">two</li></ul>
<input id="name" value="x">
<button id="go">Go</button>
<script>
document.getElementById('go').onclick = () => {
    if (confirm('Really go?')) document.getElementById('out').textContent = 'confirmed';
};
</script>
"#;

    /// Serves `PAGE` to every request, with an HttpOnly session cookie, until the test ends.
    async fn serve() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local_addr");
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    // The request's head is all there is (GETs); read until its blank line.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\
                         Set-Cookie: session=s3cr3t; HttpOnly; Path=/; SameSite=Strict\r\n\r\n{PAGE}",
                        PAGE.len()
                    );
                    let _ = conn.write_all(response.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        format!("http://{addr}/")
    }

    #[tokio::test]
    async fn drives_a_page_through_a_confirm_dialog() {
        let url = serve().await;
        let started = std::time::Instant::now();
        let browser = Browser::start().await;
        eprintln!("browser started in {:?}", started.elapsed());
        let group = rustix::process::Pid::from_child(&browser.driver.chromedriver);

        browser.goto(&url).await;
        assert_eq!(browser.current_url().await, url);
        assert_eq!(browser.title().await, "browser test");
        browser.wait_for_text("#out", "ready", Duration::from_secs(10)).await;
        assert!(browser.page_source().await.contains("id=\"go\""));

        assert_eq!(browser.find_all("li.item").await.len(), 2);
        assert_eq!(browser.find("ul").await.find("li:last-child").await.text().await, "two");
        assert!(!browser.exists("#absent").await);
        assert_eq!(browser.find("#out").await.attr("id").await.as_deref(), Some("out"));
        assert_eq!(browser.find("#out").await.attr("title").await, None);

        let input = browser.find("#name").await;
        input.clear().await;
        input.send_keys("wavecast").await;
        assert_eq!(input.property("value").await, json!("wavecast"));

        // A cancelled confirm() leaves the text; an accepted one changes it.
        assert_eq!(browser.alert_text().await, None);
        browser.find("#go").await.click().await;
        assert_eq!(browser.alert_text().await.as_deref(), Some("Really go?"));
        browser.dismiss_alert().await;
        assert_eq!(browser.find("#out").await.text().await, "ready");
        browser.find("#go").await.click().await;
        browser.accept_alert().await;
        let out = browser.wait_for_text("#out", "confirmed", Duration::from_secs(5)).await;
        assert_eq!(out.text().await, "confirmed");

        // The session cookie is HttpOnly: the page's script cannot see it, WebDriver can.
        let cookies = browser.cookies().await;
        assert!(cookies.contains(&("session".to_owned(), "s3cr3t".to_owned())), "cookies: {cookies:?}");
        assert_eq!(browser.execute("return document.cookie", vec![]).await, json!(""));
        assert_eq!(browser.execute("return arguments[0] + arguments[1]", vec![json!(2), json!(3)]).await, json!(5));
        assert_eq!(
            browser.execute_async("setTimeout(() => arguments[1](arguments[0] * 2), 10)", vec![json!(21)]).await,
            json!(42)
        );
        browser.execute("console.error('from the page')", vec![]).await;
        let log = browser.console_log().await;
        assert!(log.iter().any(|l| l.starts_with("SEVERE") && l.contains("from the page")), "console: {log:?}");

        browser.set_window_size(600, 700).await;
        assert_eq!(browser.execute("return window.outerWidth", vec![]).await, json!(600));

        let shots = tempfile::tempdir().expect("tempdir");
        let shot = shots.path().join("nested/dir/page.png");
        browser.screenshot(&shot).await;
        let png = std::fs::read(&shot).expect("the screenshot");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG: {:?}", &png[..png.len().min(16)]);

        // Dropping it leaves no process behind: chromedriver's group is empty (zombies
        // reparented to init go once it reaps them).
        let dropping = std::time::Instant::now();
        drop(browser);
        eprintln!("browser dropped in {:?}", dropping.elapsed());
        let gone = crate::wait_until(Duration::from_secs(10), || async {
            rustix::process::test_kill_process_group(group).is_err()
        })
        .await;
        assert!(gone, "chromedriver's process group {group:?} outlived the Browser");
    }

    #[test]
    fn a_response_ends_where_its_content_length_says() {
        assert!(!response_complete(b"HTTP/1.1 200 OK\r\nContent-Length:14\r\n"));
        assert!(!response_complete(b"HTTP/1.1 200 OK\r\nContent-Length:14\r\n\r\n{\"value\""));
        assert!(response_complete(b"HTTP/1.1 200 OK\r\nContent-Length:14\r\n\r\n{\"value\":null}"));
        assert!(response_complete(b"HTTP/1.1 204 No Content\r\n\r\n"));
    }

    #[tokio::test]
    #[should_panic(expected = "no element matches `#absent` on data:text/html,")]
    async fn a_missing_element_names_the_selector_and_the_page() {
        let browser = Browser::start().await;
        browser.goto("data:text/html,<p>nothing here</p>").await;
        browser.find("#absent").await;
    }
}
