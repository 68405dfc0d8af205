//! The dashboard in a real headless Chromium (Debian's, driven through chromedriver), against a
//! real server and a simulated fleet: sign in, start a rollout from an artifact's page, approve
//! its gate, watch it move without reloading while devices install, read why a device failed,
//! and abort with revert; a viewer sees no actions, and forged posts are refused. Screenshots of
//! the main pages at a laptop's and a tablet's width land in `target/dashboard-screenshots/`.

use std::path::PathBuf;
use std::time::Duration;

use wavecast_test_support::browser::Browser;

use crate::rollouts::{Sim, baseline, fleet, state_is, wait};
use crate::{ok, op};

/// Long enough for a wave of sim devices to install; a live page refreshes within seconds.
const LIVE: Duration = Duration::from_secs(60);

fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("dashboard-screenshots")
}

/// Takes `name` at a laptop's width and at a tablet's, then goes back to the laptop's.
async fn shoot(browser: &Browser, name: &str) {
    for (width, height, label) in [(1280, 900, "laptop"), (820, 1100, "tablet")] {
        browser.set_window_size(width, height).await;
        browser.screenshot(screenshots().join(format!("{name}-{label}.png"))).await;
    }
    browser.set_window_size(1280, 900).await;
}

async fn sign_in(browser: &Browser, base: &str, token: &str) {
    browser.goto(&format!("{base}/")).await;
    let field = browser.wait_for("input#token", Duration::from_secs(10)).await;
    field.send_keys(token).await;
    browser.find("form button[type=submit]").await.click().await;
    browser.wait_for_text("header .who", "Signed in as", Duration::from_secs(10)).await;
    assert!(!browser.current_url().await.contains(token), "the token must never be in a URL");
    assert!(!browser.page_source().await.contains(token), "the token must never be on a page");
}

async fn sign_out(browser: &Browser) {
    browser.find("header .who button").await.click().await;
    browser.wait_for("input#token", Duration::from_secs(10)).await;
}

/// The browser's session cookie as a `Cookie` header value, to send a request it did not make.
async fn session_cookie(browser: &Browser) -> String {
    browser
        .cookies()
        .await
        .into_iter()
        .find(|(name, _)| name == "wavecast_session")
        .map(|(name, value)| format!("{name}={value}"))
        .expect("the session cookie")
}

/// The visible text of the first element `css` selects, read in one step: a live page may
/// replace its content between finding an element and reading it (a new checkpoint, a device
/// moving on), which leaves a found element stale.
async fn text_of(browser: &Browser, css: &str) -> String {
    let script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;";
    match browser.execute(script, vec![serde_json::Value::from(css)]).await {
        serde_json::Value::String(text) => text,
        other => panic!("no element matches {css:?} on {} ({other})", browser.current_url().await),
    }
}

/// Marks the page so a later check can tell it was never reloaded.
async fn mark(browser: &Browser) {
    browser.execute("window.__notReloaded = true;", vec![]).await;
}

async fn still_marked(browser: &Browser) -> bool {
    browser.execute("return window.__notReloaded === true;", vec![]).await == serde_json::Value::Bool(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_drives_a_rollout_in_a_browser() {
    let f = fleet(None).await;
    let base = f.server.url.clone();
    let sim = Sim::start(&f.server, &f.token, &f.root, &f.dir.join("fleet"), &["--devices", "12", "--fail", "1"]);
    baseline(&f).await;

    let browser = Browser::start().await;
    sign_in(&browser, &base, &f.token).await;
    shoot(&browser, "rollouts").await;

    // Start the rollout from the artifact's page: a gated canary, halting on the first failure.
    browser.goto(&format!("{base}/ui/artifacts/yolo/2.0.0")).await;
    shoot(&browser, "artifact").await;
    let waves = browser.find("#c-waves").await;
    waves.clear().await;
    waves.send_keys("10,50,100").await;
    let gates = browser.find("#c-gates").await;
    gates.clear().await;
    gates.send_keys("1").await;
    let probe = browser.find("#c-probe").await;
    probe.clear().await;
    probe.send_keys("exec:sim-check").await;
    browser.find("form.card button[type=submit]").await.click().await;
    assert!(browser.alert_text().await.is_some_and(|t| t.contains("yolo@2.0.0")), "starting asks first");
    browser.accept_alert().await;
    browser.wait_for_text("h1", "waiting approval", Duration::from_secs(10)).await;
    let url = browser.current_url().await;
    let id = url.rsplit('/').next().unwrap().to_owned();
    assert!(id.starts_with("r-"), "{url}");

    // A viewer sees the rollout but no action, and cannot act by forging the form either.
    let viewer: serde_json::Value = serde_json::from_str(&ok(
        op(&f.server, &f.token).args(["token", "create", "--role", "viewer", "--name", "watcher", "--json"])
    ))
    .unwrap();
    sign_out(&browser).await;
    sign_in(&browser, &base, viewer["token"].as_str().unwrap()).await;
    browser.goto(&url).await;
    browser.wait_for_text("h1", "waiting approval", Duration::from_secs(10)).await;
    assert!(!browser.exists("section.actions").await, "a viewer is offered no action");
    assert!(!browser.exists("form[action$=approve]").await);
    let cookie = session_cookie(&browser).await;
    let csrf = browser.find("input[name=csrf]").await.attr("value").await.expect("the page's CSRF token");
    let http = reqwest::Client::new();
    for body in [format!("csrf={csrf}&mode=revert"), "mode=revert".to_owned()] {
        let r = http
            .post(format!("{url}/abort"))
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::FORBIDDEN, "a viewer's forged abort ({body}) is refused");
    }
    sign_out(&browser).await;

    // An operator's session without the form's CSRF token is refused too.
    sign_in(&browser, &base, &f.token).await;
    let cookie = session_cookie(&browser).await;
    let r = http
        .post(format!("{url}/approve"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::FORBIDDEN, "no CSRF token, no approval");
    assert!(r.text().await.unwrap().contains("CSRF token"));

    // Approve the gate from the page; the audit trail names the token.
    browser.goto(&url).await;
    shoot(&browser, "rollout-gate").await;
    browser.click_on("form[action$=approve] button").await;
    assert!(browser.alert_text().await.is_some_and(|t| t.contains("Open wave 1")));
    browser.accept_alert().await;
    browser.wait_for_text("h1", "running", Duration::from_secs(10)).await;

    // From here the page is never reloaded: it follows the devices live until the halt.
    mark(&browser).await;
    browser.wait_for_text("#live-status", "Live", Duration::from_secs(10)).await;
    let paused = wait(&f, &f.server, &id, "paused", LIVE, state_is("paused")).await;
    assert_eq!(paused["failures_counted"], 1, "{paused:#}");
    browser.wait_for_text("h1", "paused", LIVE).await;
    let failing = sim.failing();
    assert_eq!(failing.len(), 1, "{failing:?}");
    browser.wait_for_text("article.failure", &failing[0], Duration::from_secs(10)).await;
    let reason = text_of(&browser, "article.failure pre.reason").await;
    assert!(reason.contains("exec:sim-check"), "the failure says which probe failed and what it printed: {reason}");
    assert!(browser.exists("form[action$=resume]").await, "a paused rollout offers resume with acknowledgement");
    assert!(still_marked(&browser).await, "the page updated itself without a reload");
    shoot(&browser, "rollout-paused").await;

    browser.goto(&format!("{base}/ui/audit")).await;
    let trail = text_of(&browser, "table.events").await;
    assert!(
        trail.lines().any(|l| l.contains("rollout.approved") && l.contains("admin")),
        "the approval is in the trail under the token's name:\n{trail}"
    );
    assert!(text_of(&browser, "section.checkpoint").await.contains("The log verifies against checkpoint"));
    shoot(&browser, "audit").await;
    browser.goto(&format!("{base}/ui/devices")).await;
    shoot(&browser, "devices").await;

    // Abort with revert from the page: a deliberate choice, confirmed.
    browser.goto(&url).await;
    browser.click_on("form.abort button[value=revert]").await;
    assert!(browser.alert_text().await.is_some_and(|t| t.contains("REVERT")));
    browser.accept_alert().await;
    browser.wait_for_text("h1", "aborted", Duration::from_secs(10)).await;
    assert!(text_of(&browser, "dl.facts").await.contains("devices revert"));
    let aborted = wait(&f, &f.server, &id, "aborted", LIVE, state_is("aborted")).await;
    assert_eq!(aborted["abort_mode"], "revert", "{aborted:#}");
    assert!(!browser.exists("section.actions").await, "an ended rollout offers nothing more");
    shoot(&browser, "rollout-aborted").await;
}

/// A stopping server ends the pages' live streams at once rather than waiting out its drain
/// for them: `stop` requires a clean exit within 10 s, which is the drain's own limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_ends_live_streams() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("install");
    let inst = crate::installation(&dir);
    let server = crate::Server::start(&dir, None).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = http
        .post(format!("{}/ui/sign-in", server.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", inst.token))
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let r = http.get(format!("{}/ui/events", server.url)).header("cookie", &cookie).send().await.unwrap();
        assert_eq!(r.status(), 200);
        streams.push(r);
    }
    let started = std::time::Instant::now();
    server.stop();
    for stream in streams {
        // The stream ends (cleanly or cut): it does not hang on.
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.bytes()).await.expect("the stream ended");
    }
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
}
