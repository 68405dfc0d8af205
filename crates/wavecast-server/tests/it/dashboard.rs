//! The dashboard in-process: sign-in and its cookie, sessions ending, what the rollout page
//! shows (a failure's reason, escaped), paging, the live stream, and the actions' effects.
//! (Who may do what is in `authz`; a real browser drives it in the CLI's tests.)

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

use crate::both;
use crate::support::{Db, Env};

fn text(r: &crate::support::Resp) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

async fn sign_in_session_and_sign_out(db: Db) {
    let env = Env::new(db).await;
    // Not signed in: every page sends the browser to sign in, and back afterwards.
    let r = env.page(Method::GET, "/ui/audit?before=3", None, "").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers["location"], "/ui/sign-in?next=%2Fui%2Faudit%3Fbefore%3D3");
    assert_eq!(env.page(Method::GET, "/", None, "").await.headers["location"], "/ui/rollouts");

    // A wrong token shows the form again with why, and never echoes what was typed.
    let r = env.page(Method::POST, "/ui/sign-in", None, "token=wct_not-a-real-token-at-all").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(!text(&r).contains("not-a-real-token"), "the page must not repeat the token");
    assert!(r.headers.get("set-cookie").is_none());
    // A form posted from another site's page is refused.
    let r = env
        .request(
            Method::POST,
            "/ui/sign-in",
            None,
            &[
                crate::support::form_header(),
                ("origin", "https://evil.example".into()),
                ("host", "wavecast.local".into()),
            ],
            Body::from(format!("token={}", env.admin)),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // Behind a proxy that rewrites Host, the browser's own word that the form is the server's
    // page is what counts.
    let proxied = |site: &str| {
        vec![
            crate::support::form_header(),
            ("origin", "https://wavecast.example".to_owned()),
            ("host", "10.0.0.7:7700".to_owned()),
            ("sec-fetch-site", site.to_owned()),
        ]
    };
    let form = format!("token={}", env.admin);
    let r = env.request(Method::POST, "/ui/sign-in", None, &proxied("same-origin"), Body::from(form.clone())).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    let r = env.request(Method::POST, "/ui/sign-in", None, &proxied("cross-site"), Body::from(form)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // The live stream of a page whose session ended is refused as such, not redirected.
    assert_eq!(env.page(Method::GET, "/ui/events", None, "").await.status, StatusCode::UNAUTHORIZED);

    let s = env.sign_in(&env.admin).await;
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(s.set_cookie.contains(attribute), "{attribute} missing from {}", s.set_cookie);
    }
    assert!(!s.set_cookie.contains("Secure"), "plain HTTP: a Secure cookie would never come back");
    assert!(!s.cookie.contains(&env.admin), "the cookie holds a session secret, not the token");
    for path in ["/ui/rollouts", "/ui/devices", "/ui/artifacts", "/ui/audit"] {
        let r = env.page(Method::GET, path, Some(&s), "").await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        let page = text(&r);
        assert!(!page.contains(&env.admin), "{path} shows the token");
        assert!(page.contains("Signed in as"), "{path}");
        let csp = r.headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(r.headers["cache-control"], "no-store");
    }

    // Signing out needs the CSRF token, and ends the session for good.
    let r = env.page(Method::POST, "/ui/sign-out", Some(&s), "").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = env.page(Method::POST, "/ui/sign-out", Some(&s), &format!("csrf={}", s.csrf)).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(r.headers["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(env.page(Method::GET, "/ui/rollouts", Some(&s), "").await.status, StatusCode::SEE_OTHER);

    // Revoking a token ends its sessions from the next request on.
    let t = env
        .post_json("/api/v1/tokens", Some(&env.admin), serde_json::json!({ "role": "operator", "name": "ops" }))
        .await
        .json();
    let s = env.sign_in(t["token"].as_str().unwrap()).await;
    assert_eq!(env.page(Method::GET, "/ui/rollouts", Some(&s), "").await.status, StatusCode::OK);
    let r = env
        .request(
            Method::DELETE,
            &format!("/api/v1/tokens/{}", t["id"].as_str().unwrap()),
            Some(&env.admin),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(env.page(Method::GET, "/ui/rollouts", Some(&s), "").await.status, StatusCode::SEE_OTHER);
}

async fn rollout_page_and_actions(db: Db) {
    let env = Env::new(db).await;
    env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": "g" })).await;
    let mut creds = Vec::new();
    for i in 0..60 {
        creds.push(env.enroll("g", &format!("cam-{i:03}")).await.0);
    }
    assert_eq!(env.publish("m@1.0.0", b"model").await.status, StatusCode::CREATED);
    let s = env.sign_in(&env.admin).await;
    // Started from the artifact page's form, as an operator would.
    let r = env
        .page(
            Method::POST,
            "/ui/rollouts",
            Some(&s),
            &format!(
                "csrf={}&artifact=m%401.0.0&group=g&waves=50%2C100&gates=2&halt_after=1&probe=exec%3Acheck",
                s.csrf
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    let at = r.headers["location"].to_str().unwrap().to_owned();
    let id = at.trim_start_matches("/ui/rollouts/").to_owned();
    let audit = env.get("/api/v1/audit").await.json();
    assert!(audit.as_array().unwrap().iter().any(|e| e["action"] == "rollout.created" && e["actor"] == "admin"));

    // A device of the first wave fails, with a probe output that holds markup.
    let shown = env.get(&format!("/api/v1/rollouts/{id}")).await.json();
    let first = shown["in_progress"]["devices"][0]["device"].as_str().unwrap().to_owned();
    let index: usize = first.trim_start_matches("cam-").parse().unwrap();
    let report = serde_json::json!({ "reports": [{
        "id": "f-1", "rollout_id": id, "artifact": "m", "version": "1.0.0", "state": "failed",
        "reason": "probe exited 3: <script>alert(1)</script> model output mismatch", "at_ms": 1,
        "probe_result": { "outcome": "unhealthy", "outputs": [{ "output": "<b>probs</b>", "max_abs_error": 0.055413 }],
                          "latency": { "p95_us": 2500.0, "budget_us": 50000 } }
    }], "active": [] });
    let r = env
        .request(
            Method::POST,
            "/device/v1/reports",
            Some(&creds[index]),
            &[("content-type", "application/json".into())],
            Body::from(report.to_string()),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    let page = text(&env.page(Method::GET, &at, Some(&s), "").await);
    assert!(page.contains("model output mismatch"), "the failure's reason is on the page");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "and escaped");
    assert!(!page.contains("<script>alert(1)"));
    // The model check's report, in one line, escaped; and the same on the device's page and in the API.
    let check =
        "model check unhealthy; largest deviation 5.541e-2 on &lt;b&gt;probs&lt;/b&gt;; p95 2.5 ms of 50.0 ms budget";
    assert!(page.contains(check), "the check's report is on the page: {page}");
    let device_page = text(&env.page(Method::GET, &format!("/ui/devices/{first}"), Some(&s), "").await);
    assert!(device_page.contains(check), "{device_page}");
    let device = env.get(&format!("/api/v1/devices/{first}")).await.json();
    assert_eq!(device["rollouts"][0]["probe_result"]["latency"]["budget_us"], 50000, "{device}");
    assert!(page.contains("Resume"), "a paused rollout offers resume: {page}");
    assert!(page.contains(&first), "the acknowledgement names the failed device");
    assert!(page.contains("Page 1 of 2 (60 devices)"), "devices are paged");
    let second = text(&env.page(Method::GET, &format!("{at}?page=2"), Some(&s), "").await);
    assert!(second.contains("Page 2 of 2"));
    let failed_only = text(&env.page(Method::GET, &format!("{at}?state=failed"), Some(&s), "").await);
    assert!(failed_only.contains("Page 1 of 1 (1 device)"), "{failed_only}");

    // The devices page: a page of names, the next page after the last, a search by the start
    // of a name (LIKE's wildcards are taken literally).
    let devices = text(&env.page(Method::GET, "/ui/devices", Some(&s), "").await);
    assert!(devices.contains("cam-049") && !devices.contains("cam-050"), "50 a page");
    assert!(devices.contains("after=cam-049"), "a link to the next page");
    let next = text(&env.page(Method::GET, "/ui/devices?after=cam-049", Some(&s), "").await);
    assert!(next.contains("cam-050") && next.contains("cam-059") && !next.contains(">cam-049<"));
    let found = text(&env.page(Method::GET, "/ui/devices?q=cam-01&group=g&status=active", Some(&s), "").await);
    assert!(found.contains("cam-010") && found.contains("cam-019"));
    assert!(!found.contains("cam-009") && !found.contains("cam-020"));
    let none = text(&env.page(Method::GET, "/ui/devices?q=cam_0", Some(&s), "").await);
    assert!(none.contains("No devices match"), "an underscore is not a wildcard");
    let r = env.page(Method::GET, "/ui/devices?status=lost", Some(&s), "").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Resume needs the tick; then the failures are acknowledged.
    let r = env.page(Method::POST, &format!("{at}/resume"), Some(&s), &format!("csrf={}", s.csrf)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(text(&r).contains("tick the box"));
    // Resuming acknowledges what the page showed, and only that: a page that showed fewer
    // failures than are counted now (a stale tab) is refused.
    let r =
        env.page(Method::POST, &format!("{at}/resume"), Some(&s), &format!("csrf={}&ack=yes&failures=0", s.csrf)).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", text(&r));
    assert!(text(&r).contains("reload the page and review them"));
    assert!(page.contains("name=\"failures\" value=\"1\""), "the page says what it showed");
    let r =
        env.page(Method::POST, &format!("{at}/resume"), Some(&s), &format!("csrf={}&ack=yes&failures=1", s.csrf)).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    let shown = env.get(&format!("/api/v1/rollouts/{id}")).await.json();
    assert_eq!(shown["state"], "running");
    assert_eq!(shown["failures_counted"], 0);

    // Approving opens the wave the page showed waiting, or nothing: here none waits.
    let r = env.page(Method::POST, &format!("{at}/approve"), Some(&s), &format!("csrf={}&wave=2", s.csrf)).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(text(&r).contains("asked to open wave 2, but it is running"), "{}", text(&r));

    // Abort needs a choice; with revert, the rollout says so.
    let r = env.page(Method::POST, &format!("{at}/abort"), Some(&s), &format!("csrf={}", s.csrf)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = env.page(Method::POST, &format!("{at}/abort"), Some(&s), &format!("csrf={}&mode=revert", s.csrf)).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let shown = env.get(&format!("/api/v1/rollouts/{id}")).await.json();
    assert_eq!(shown["state"], "aborted");
    assert_eq!(shown["abort_mode"], "revert");
    let page = text(&env.page(Method::GET, &at, Some(&s), "").await);
    assert!(!page.contains("Abort, revert"), "an ended rollout offers no action");
    assert!(page.contains("rollout.aborted"), "its history shows the abort");
}

async fn live_stream_reports_changes(db: Db) {
    let env = Env::new(db).await;
    let s = env.sign_in(&env.admin).await;
    let req = Request::get("/ui/events").header("cookie", &s.cookie).body(Body::empty()).unwrap();
    let resp = env.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    // A write lands in the audit log; the stream says so within a few seconds.
    env.post_json("/api/v1/groups", Some(&env.admin), serde_json::json!({ "name": "new-group" })).await;
    let frame = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let frame = body.frame().await.expect("the stream stays open").unwrap();
            if let Ok(data) = frame.into_data() {
                let chunk = String::from_utf8_lossy(&data).into_owned();
                if chunk.contains("event: change") {
                    return chunk;
                }
            }
        }
    })
    .await
    .expect("a change event within 10 s");
    assert!(frame.contains("data: "), "{frame}");
}

both!(sign_in_session_and_sign_out, rollout_page_and_actions, live_stream_reports_changes);
