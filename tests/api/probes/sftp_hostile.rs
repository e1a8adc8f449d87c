//! The SFTP probe against hostile servers (`hostile_sftp.py`): a directory
//! that never ends (fast, or trickling) and an SFTP channel that never
//! answers. Whatever the
//! server does, a probe ends within its time limit and gives back its
//! blocking thread, its SSH slot and its memory.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use credgate::probes::sftp::{probe, SftpRequest, MAX_LISTED_ENTRIES};
use credgate::probes::{ApiBaseUrls, Pool, ProbeContext, ProbeResult, ProbeTimeouts};
use serde_json::json;

use super::own_process::{in_own_process, settles_to, status_kib, threads};
use super::sshd::{sshd, PASSWORD, PASSWORD_USER};
use super::{code, loopback_policy, org};
use credgate::ids::OrgId;

/// A running `hostile_sftp.py`; killed when dropped.
struct HostileSftp {
    port: u16,
    child: Child,
}

impl HostileSftp {
    fn start(mode: &str) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/probes/hostile_sftp.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (run scripts/install-test-deps.sh)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("hostile_sftp.py {mode} printed no port (is paramiko installed?)"));
        Self { port, child }
    }

    fn request(&self) -> SftpRequest {
        serde_json::from_value(json!({
            "host": "127.0.0.1", "port": self.port, "username": "anyone", "password": "anything",
        }))
        .unwrap()
    }
}

impl Drop for HostileSftp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Probes may take `total`; each libssh2 call may wait far longer (`stage`),
/// so only the probe's own limit can end a stalled session in time.
fn hostile_ctx(total: Duration) -> ProbeContext {
    let timeouts = ProbeTimeouts {
        connect: Duration::from_secs(3),
        stage: Duration::from_secs(30),
        total,
    };
    ProbeContext::new(loopback_policy(), timeouts, ApiBaseUrls::default()).unwrap()
}

fn real_sshd_request() -> SftpRequest {
    serde_json::from_value(json!({
        "host": "127.0.0.1", "port": sshd().port, "username": PASSWORD_USER, "password": PASSWORD,
        "path": sshd().listing_dir(),
    }))
    .unwrap()
}

/// Two organizations, so that eight probes at once can take every global
/// SSH slot (one organization may take four).
static ORGS: std::sync::LazyLock<[OrgId; 2]> = std::sync::LazyLock::new(|| [org("org-a"), org("org-b")]);

/// Eight probes at once, four for each of [`ORGS`].
fn eight<'a>(ctx: &'a ProbeContext, req: &'a SftpRequest) -> impl futures::Future<Output = Vec<ProbeResult>> + 'a {
    futures::future::join_all((0..8).map(move |i| probe(ctx, &ORGS[i % 2], req)))
}

/// Every SSH slot of `ctx` is free, and eight probes to the real sshd
/// through it succeed promptly.
async fn every_slot_is_free(ctx: &ProbeContext) {
    assert_eq!(ctx.free_slots(Pool::Ssh), ProbeContext::MAX_SSH_SESSIONS);
    let req = real_sshd_request();
    let started = Instant::now();
    let results = eight(ctx, &req).await;
    let failed: Vec<_> = results.iter().filter(|r| !r.ok).collect();
    assert!(failed.is_empty(), "slots still taken: {failed:?}");
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
}

const TOTAL: Duration = Duration::from_secs(4);
/// How long after its probe returned a blocking thread may take to end.
const GRACE: Duration = Duration::from_millis(1500);

#[test]
fn probes_of_directories_that_never_end_give_back_threads_slots_and_memory() {
    in_own_process(
        module_path!(),
        "probes_of_directories_that_never_end_give_back_threads_slots_and_memory",
        || async {
            let _warm = sshd();
            let (endless, trickle) = (HostileSftp::start("endless"), HostileSftp::start("trickle"));
            let ctx = hostile_ctx(TOTAL);
            let (fast, slow) = (endless.request(), trickle.request());
            let (threads_before, rss_before) = (threads(), status_kib("VmRSS"));

            let started = Instant::now();
            // Four of each, two organizations each, every global slot taken.
            let fast_ones = futures::future::join_all((0..4).map(|i| probe(&ctx, &ORGS[i % 2], &fast)));
            let slow_ones = futures::future::join_all((0..4).map(|i| probe(&ctx, &ORGS[i % 2], &slow)));
            let (fast_results, slow_results) = tokio::join!(fast_ones, slow_ones);
            let elapsed = started.elapsed();
            let threads_after = settles_to(threads_before, GRACE, threads).await;
            let rss_after = status_kib("VmRSS");
            let capped = fast_results.iter().filter(|r| r.ok).count();
            println!(
            "endless and trickle: threads {threads_before} -> {threads_after}, VmRSS {rss_before} -> {rss_after} KiB, \
             8 probes in {elapsed:?}: {capped} of 4 endless counted to the cap"
        );

            for result in &fast_results {
                // On a loaded machine the cap may not be reached in time.
                let capped = result.ok && result.detail["entry_count_capped"] == json!(true);
                assert!(capped || code(result) == "timeout", "{result:?}");
            }
            for result in &slow_results {
                assert_eq!(code(result), "timeout", "{result:?}");
            }
            for result in fast_results.iter().chain(&slow_results) {
                assert!(result.latency_ms <= TOTAL.as_millis() as u64 + 500, "{result:?}");
            }
            assert_eq!(threads_after, threads_before, "blocking threads still running");
            assert!(
                rss_after < rss_before + 16 * 1024,
                "VmRSS {rss_before} -> {rss_after} KiB"
            );
            every_slot_is_free(&ctx).await;
        },
    );
}

#[tokio::test]
async fn a_directory_that_never_ends_is_counted_up_to_the_cap() {
    let server = HostileSftp::start("endless");
    let ctx = hostile_ctx(Duration::from_secs(15));

    let result = probe(&ctx, &org("org-a"), &server.request()).await;

    assert_eq!(code(&result), "ok", "{result:?}");
    assert_eq!(result.detail["entry_count"], json!(MAX_LISTED_ENTRIES), "{result:?}");
    assert_eq!(result.detail["entry_count_capped"], json!(true), "{result:?}");
}

#[test]
fn probes_stalled_on_an_sftp_channel_time_out_and_give_back_threads_and_slots() {
    in_own_process(
        module_path!(),
        "probes_stalled_on_an_sftp_channel_time_out_and_give_back_threads_and_slots",
        || async {
            let _warm = sshd();
            let server = HostileSftp::start("stall");
            let ctx = hostile_ctx(TOTAL);
            let req = server.request();
            let threads_before = threads();

            // Four run into the probe's limit; four are dropped early, as when
            // the HTTP client that asked goes away.
            let timed_out = futures::future::join_all((0..4).map(|_| probe(&ctx, &ORGS[0], &req)));
            let dropped = futures::future::join_all(
                (0..4).map(|_| tokio::time::timeout(Duration::from_millis(1500), probe(&ctx, &ORGS[1], &req))),
            );
            let (results, cut) = tokio::join!(timed_out, dropped);
            let threads_after = settles_to(threads_before, GRACE, threads).await;
            println!("stall: threads {threads_before} -> {threads_after}");

            for result in &results {
                assert_eq!(code(result), "timeout", "{result:?}");
                assert!(result.latency_ms <= TOTAL.as_millis() as u64 + 500, "{result:?}");
            }
            assert!(cut.iter().all(Result::is_err), "{cut:?}");
            assert_eq!(threads_after, threads_before, "blocking threads still running");
            every_slot_is_free(&ctx).await;
        },
    );
}

#[tokio::test]
async fn one_organization_stuck_on_a_stalled_server_leaves_slots_for_another() {
    let server = HostileSftp::start("stall");
    let ctx = hostile_ctx(Duration::from_secs(6));
    let stuck_req = server.request();
    let other_req = real_sshd_request();
    let _warm = sshd();

    let stuck_org = org("org-stuck");
    let stuck = futures::future::join_all((0..8).map(|_| probe(&ctx, &stuck_org, &stuck_req)));
    let other = async {
        // Let the stuck organization take what it can first.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let result = probe(&ctx, &org("org-other"), &other_req).await;
        (result, Instant::now())
    };
    let (stuck, (other, other_done)) = tokio::join!(stuck, other);
    let stuck_done = Instant::now();

    assert_eq!(code(&other), "ok", "{other:?}");
    assert!(stuck.iter().all(|r| !r.ok), "{stuck:?}");
    assert!(stuck_done.duration_since(other_done) > Duration::from_secs(2));
}
