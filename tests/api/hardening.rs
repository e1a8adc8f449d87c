//! What someone hostile or careless cannot do: grow memory through metric
//! labels, hold connections with half a request, hammer the store with
//! unknown keys.

use reqwest::{Method, StatusCode};

use crate::helpers::{TestApp, TestDb};

async fn metrics_len(app: &TestApp) -> usize {
    app.client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .len()
}

#[test]
fn odd_methods_and_paths_leave_the_metrics_the_same_size() {
    crate::helpers::run_test(async {
        let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
        let app = TestApp::spawn(&db).await;
        let odd = |n: usize| {
            let method = Method::from_bytes(format!("X{}{n}", "ABC".repeat(300)).as_bytes()).unwrap();
            let path = format!("/nowhere/{n}/{}", "p".repeat(n % 500));
            (method, path)
        };
        let send = |(method, path): (Method, String)| {
            let req = app.client.request(method, format!("{}{path}", app.base));
            async move { req.send().await.unwrap().status() }
        };
        // Warm up: the first odd request of each kind adds its label set once,
        // and the counters reach four digits.
        let first = send(odd(0)).await;
        for n in 1..1000 {
            send(odd(n)).await;
            send((Method::GET, format!("/nowhere/{n}"))).await;
        }
        metrics_len(&app).await; // `/metrics` itself is a route with its own labels
        let before = metrics_len(&app).await;

        let mut statuses = Vec::new();
        for n in 1000..=5000 {
            statuses.push(send(odd(n)).await);
            statuses.push(send((Method::GET, format!("/nowhere/{n}"))).await);
        }
        let after = metrics_len(&app).await;

        assert_eq!(
            first,
            StatusCode::METHOD_NOT_ALLOWED,
            "a method credgate does not know is refused before routing"
        );
        assert!(statuses.iter().all(|s| s.is_client_error()), "{statuses:?}");
        // Only counter digits may change (four or five digits), never lines.
        assert!(after <= before + 200, "/metrics grew from {before} to {after} bytes");
    });
}

/// Reads until the server closes the connection or `limit` passes; returns
/// what was read and whether it closed.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, limit: std::time::Duration) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

#[test]
fn a_client_that_sends_one_header_byte_a_second_is_cut_off() {
    crate::helpers::run_test(async {
        use tokio::io::AsyncWriteExt;
        let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
        let mut config = crate::helpers::test_config(&db);
        config.header_read_timeout_secs = 2;
        let app = TestApp::spawn_with(config).await;
        let addr = app.base.trim_start_matches("http://").to_owned();

        let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let started = std::time::Instant::now();
        let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let mut cut_off_after = None;
        for byte in head {
            if slow.write_all(&[*byte]).await.is_err() {
                cut_off_after = Some(started.elapsed());
                break;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            if started.elapsed() > std::time::Duration::from_secs(8) {
                break;
            }
        }
        let (_, closed) = read_until_closed(&mut slow, std::time::Duration::from_secs(2)).await;

        // A kept-alive connection that goes quiet is closed as well.
        let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (answer, idle_closed) = read_until_closed(&mut idle, std::time::Duration::from_secs(5)).await;

        assert!(closed || cut_off_after.is_some(), "the slow client was not cut off");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(8),
            "cut off after {:?}",
            started.elapsed()
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(idle_closed, "an idle kept-alive connection is closed after the timeout");
    });
}

#[test]
fn failed_authentications_are_limited_per_client_address_and_proxies_must_be_trusted() {
    crate::helpers::run_test(async {
        let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
        let mut config = crate::helpers::test_config(&db);
        config.trusted_proxies = "127.0.0.3/32".into();
        let app = TestApp::spawn_with(config).await;
        let from = |ip: [u8; 4]| {
            reqwest::Client::builder()
                .local_address(std::net::IpAddr::from(ip))
                .build()
                .unwrap()
        };
        let url = format!("{}/integrations/credentials", app.base);
        let attempt = |client: reqwest::Client, token: String, forwarded: Option<&'static str>| {
            let url = url.clone();
            async move {
                let mut req = client.get(url).bearer_auth(token);
                if let Some(f) = forwarded {
                    req = req.header("x-forwarded-for", f);
                }
                req.send().await.unwrap().status()
            }
        };

        let mut guessing = Vec::new();
        for n in 0..40 {
            guessing.push(attempt(from([127, 0, 0, 1]), format!("cgk_guess{n}"), None).await);
        }
        let valid_key_same_address = attempt(from([127, 0, 0, 1]), app.org.admin.clone(), None).await;
        let other_address = attempt(from([127, 0, 0, 2]), "cgk_wrong".into(), None).await;
        // An untrusted peer cannot pick its address with X-Forwarded-For.
        let spoofed = attempt(from([127, 0, 0, 1]), "cgk_wrong".into(), Some("198.51.100.7")).await;
        // Behind the trusted proxy, each forwarded client has its own budget.
        let mut behind_proxy = Vec::new();
        for n in 0..40 {
            behind_proxy.push(attempt(from([127, 0, 0, 3]), format!("cgk_p{n}"), Some("198.51.100.7")).await);
        }
        let other_client_behind_proxy = attempt(from([127, 0, 0, 3]), "cgk_x".into(), Some("198.51.100.8")).await;

        assert_eq!(guessing[0], StatusCode::UNAUTHORIZED);
        assert!(guessing.contains(&StatusCode::TOO_MANY_REQUESTS), "{guessing:?}");
        assert_eq!(
            valid_key_same_address,
            StatusCode::OK,
            "a valid key is never held back by failures"
        );
        assert_eq!(other_address, StatusCode::UNAUTHORIZED);
        assert_eq!(
            spoofed,
            StatusCode::TOO_MANY_REQUESTS,
            "the header from an untrusted peer is ignored"
        );
        assert!(
            behind_proxy.contains(&StatusCode::TOO_MANY_REQUESTS),
            "{behind_proxy:?}"
        );
        assert_eq!(other_client_behind_proxy, StatusCode::UNAUTHORIZED);
    });
}

crate::both_backends! {
    async fn denied_requests_are_audited_as_one_row_per_key_per_credential_per_minute_with_a_count(backend: Backend) {
        let db = TestDb::new(backend).await;
        let app = TestApp::spawn(&db).await;
        let id = app.create_pg(&app.org, "a", "pw").await;
        crate::helpers::to_a_minute_start(&app.clock);
        for _ in 0..25 {
            app.call(reqwest::Method::POST, &format!("/integrations/credentials/{id}/resolve"), &app.org.member, None).await;
        }
        let rows: Vec<(String,)> = sqlx::query_as("SELECT detail FROM audit_events WHERE action = 'access.denied'")
            .fetch_all(&app.sql().await).await.unwrap();
        app.clock.advance(60);
        app.call(reqwest::Method::POST, &format!("/integrations/credentials/{id}/resolve"), &app.org.member, None).await;
        let later: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_events WHERE action = 'access.denied'")
            .fetch_one(&app.sql().await).await.unwrap();

        assert_eq!(rows.len(), 1, "{rows:?}");
        let detail: serde_json::Value = serde_json::from_str(&rows[0].0).unwrap();
        assert_eq!(detail["count"], 25);
        assert_eq!(later, 2, "a new minute, a new row");
    }
}

crate::both_backends! {
    async fn a_failed_test_of_an_oauth_credential_never_stops_its_refreshes(backend: Backend) {
        let db = TestDb::new(backend).await;
        let google = crate::oauth_server::AuthServer::start(crate::oauth_server::Flavor::Google).await;
        let app = crate::oauth::oauth_app(&db, &[(&google, "google")], |_| {}).await;
        let id = crate::oauth::connect(&app, "google", "").await["credential_id"].clone();
        google.with(|i| i.identity_status = Some(StatusCode::SERVICE_UNAVAILABLE));
        let (_, tested) = app.call(Method::POST, &format!("/integrations/credentials/{id}/test"), &app.org.admin, None).await;
        let (_, after_test) = app.call(Method::GET, &format!("/integrations/credentials/{id}"), &app.org.admin, None).await;
        google.with(|i| i.identity_status = None);
        let (_, after, _) = app.state.store.refresh_state(&app.org.id, &id).await.unwrap().unwrap();
        app.clock.advance(after.unwrap() - app.clock.now() + 1);

        let step = credgate::oauth::worker::try_refresh_due(&app.state, 10).await.unwrap();

        assert_eq!(tested["ok"], false);
        assert_eq!(after_test["status"], "error");
        assert_eq!(step.refreshed, 1, "an `error` from a test is no reason to let the token lapse");
    }
}

#[test]
fn the_worker_survives_a_panicking_step_and_readiness_fails_when_it_is_stuck() {
    crate::helpers::run_test(async {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
        let app = TestApp::spawn(&db).await;
        let ctx = app.state.ctx.clone();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let stop_tx = Arc::new(stop_tx);
        let stopper = stop_tx.clone();
        credgate::oauth::worker::run_loop(&ctx, stop_rx, move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let stopper = stopper.clone();
            async move {
                if n == 0 {
                    panic!("a bug in one step");
                }
                let _ = stopper.send(true);
                Ok(credgate::oauth::worker::Step::default())
            }
        })
        .await;
        let survived = calls.load(Ordering::SeqCst);

        let ready = |app: &TestApp| app.client.get(format!("{}/readyz", app.base)).send();
        let (_stop_tx2, stop_rx2) = tokio::sync::watch::channel(false);
        let stuck_ctx = ctx.clone();
        let stuck =
            tokio::spawn(
                async move { credgate::oauth::worker::run_loop(&stuck_ctx, stop_rx2, std::future::pending).await },
            );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let while_fresh = ready(&app).await.unwrap().status();
        app.clock.advance(credgate::oauth::worker::STUCK_AFTER_SECS + 1);
        let when_stuck = ready(&app).await.unwrap();
        let stuck_status = when_stuck.status();
        let body = when_stuck.text().await.unwrap();
        stuck.abort();

        assert_eq!(survived, 2, "the loop went on after the panic");
        assert_eq!(while_fresh, StatusCode::OK);
        assert_eq!(stuck_status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("worker"), "{body}");
    });
}

crate::both_backends! {
    async fn expired_oauth_states_are_purged_and_pending_ones_are_capped(backend: Backend) {
        let db = TestDb::new(backend).await;
        let google = crate::oauth_server::AuthServer::start(crate::oauth_server::Flavor::Google).await;
        let app = crate::oauth::oauth_app(&db, &[(&google, "google")], |_| {}).await;
        let authorize = || app.client.get(format!("{}/integrations/google/authorize", app.base))
            .bearer_auth(&app.org.member).header("accept", "application/json").send();
        let cap = credgate::oauth::flow::MAX_PENDING_PER_ORG as usize;
        for _ in 0..cap {
            assert_eq!(authorize().await.unwrap().status(), StatusCode::OK);
        }
        let over = authorize().await.unwrap();
        let over_status = over.status();
        let over_body: serde_json::Value = over.json().await.unwrap();
        let other_org = app.new_org("Other").await;
        let other = app.client.get(format!("{}/integrations/google/authorize", app.base))
            .bearer_auth(&other_org.member).header("accept", "application/json").send().await.unwrap().status();

        app.clock.advance(credgate::oauth::STATE_TTL_SECS + 1);
        let purged = credgate::oauth::worker::purge_expired_states(&app.state).await.unwrap();
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM oauth_states").fetch_one(&app.sql().await).await.unwrap();
        let after_purge = authorize().await.unwrap().status();

        assert_eq!(over_status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(over_body["code"], "rate_limited");
        assert_eq!(other, StatusCode::OK, "the cap is per organization");
        assert_eq!(purged, cap as u64 + 1);
        assert_eq!(left, 0);
        assert_eq!(after_purge, StatusCode::OK);
    }
}
