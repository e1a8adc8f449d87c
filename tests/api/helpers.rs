//! Test harness: an app per test on its own SQLite file or Postgres database.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use credgate::api_tokens::NewKey;
use credgate::app::{Application, Services};
use credgate::clock::Clock;
use credgate::config::Config;
use credgate::crypto::MasterKeyring;
use credgate::http::AppState;
use credgate::ids::OrgId;
use credgate::model::Role;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use uuid::Uuid;

/// The PostgreSQL server every machine of this project runs.
pub const PG_ADMIN_URL: &str = "postgres://root@127.0.0.1:5432/postgres";

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs the plain `async fn $name(backend: Backend)` above it on both
/// backends, each with its own log capture: `$name::on_sqlite` and
/// `$name::on_postgres` (the body is ordinary code that rustfmt formats).
#[macro_export]
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[test]
            fn on_sqlite() {
                $crate::helpers::run_test(super::$name($crate::helpers::Backend::Sqlite))
            }
            #[test]
            fn on_postgres() {
                $crate::helpers::run_test(super::$name($crate::helpers::Backend::Postgres))
            }
        }
    };
}

type Buffer = Arc<Mutex<Vec<u8>>>;

thread_local! {
    /// The log capture of the test whose runtime this thread belongs to.
    static CAPTURE: std::cell::RefCell<Option<Buffer>> = const { std::cell::RefCell::new(None) };
}

/// Runs a test body on its own two-thread runtime whose every thread (the
/// test's, the workers', the blocking pool's) logs into this test's capture
/// alone, so no other test can satisfy or spoil its log assertions.
pub fn run_test<F: std::future::Future>(body: F) -> F::Output {
    init_logs();
    let buffer: Buffer = Arc::default();
    let for_threads = buffer.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || CAPTURE.with(|c| *c.borrow_mut() = Some(for_threads.clone())))
        .build()
        .unwrap();
    CAPTURE.with(|c| *c.borrow_mut() = Some(buffer));
    let out = runtime.block_on(body);
    CAPTURE.with(|c| *c.borrow_mut() = None);
    out
}

/// What this test's threads logged (see [`run_test`]); empty elsewhere.
pub fn captured_logs() -> String {
    CAPTURE.with(|c| {
        c.borrow()
            .as_ref()
            .map(|b| String::from_utf8_lossy(&b.lock().unwrap()).into_owned())
            .unwrap_or_default()
    })
}

#[derive(Clone)]
struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(b) = c.borrow().as_ref() {
                b.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let filter = tracing_subscriber::EnvFilter::new("credgate=trace,tower_http=trace,sqlx=debug,info");
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(|| LogWriter)
            .try_init()
            .ok();
    });
}

/// A database made for one test and dropped after it.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
    _dir: tempfile::TempDir,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        match backend {
            Backend::Sqlite => Self {
                url: format!("sqlite://{}", dir.path().join("credgate.db").display()),
                pg_name: None,
                _dir: dir,
            },
            Backend::Postgres => {
                let name = format!("cg_test_{}", Uuid::new_v4().simple());
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(PG_ADMIN_URL)
                    .await
                    .expect("PostgreSQL must run on 127.0.0.1:5432 for the tests");
                sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
                    .await
                    .unwrap();
                Self {
                    url: format!("postgres://root@127.0.0.1:5432/{name}"),
                    pg_name: Some(name),
                    _dir: dir,
                }
            }
        }
    }

    /// A SQLite database at `url`, whose directory the caller keeps.
    pub fn at(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            pg_name: None,
            _dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A pool on the database with no app in between (the `Any` driver).
    pub async fn any_pool(&self) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        sqlx::AnyPool::connect(&self.url).await.unwrap()
    }

    /// The SQLite file and its WAL, or a `pg_dump` of the database.
    pub fn raw_bytes(&self) -> Vec<u8> {
        match &self.pg_name {
            None => {
                let dir = self._dir.path();
                let mut bytes = Vec::new();
                for f in ["credgate.db", "credgate.db-wal"] {
                    bytes.extend(std::fs::read(dir.join(f)).unwrap_or_default());
                }
                bytes
            }
            Some(name) => {
                let out = std::process::Command::new("pg_dump")
                    .args(["-h", "127.0.0.1", "-U", "root", name])
                    .output()
                    .expect("pg_dump runs");
                assert!(out.status.success(), "pg_dump failed");
                out.stdout
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = &self.pg_name {
            let _ = std::process::Command::new("psql")
                .args(["-h", "127.0.0.1", "-U", "root", "-d", "postgres", "-qc"])
                .arg(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .output();
        }
    }
}

/// API keys of one organization, by role.
#[derive(Debug, Clone)]
pub struct Org {
    pub id: OrgId,
    pub admin: String,
    pub member: String,
    pub engine: String,
}

/// A running credgate on a loopback port.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub config: Config,
    pub org: Org,
    /// The app's clock: tests move time with `clock.advance`.
    pub clock: Clock,
    sql: tokio::sync::OnceCell<sqlx::AnyPool>,
    router: std::sync::OnceLock<axum::Router>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A configuration for `db` with a fresh master key and no rate limit.
pub fn test_config(db: &TestDb) -> Config {
    let mut config = Config::for_database(&db.url);
    config.master_keys = Some(MasterKeyring::generate_key());
    config.rate_limit_per_org = 0;
    config.probe_limit_per_min = 0;
    config
}

impl TestApp {
    /// An app on `db` with default test settings.
    pub async fn spawn(db: &TestDb) -> Self {
        Self::spawn_with(test_config(db)).await
    }

    /// An app with `config`, plus one organization with a key per role.
    pub async fn spawn_with(config: Config) -> Self {
        Self::spawn_with_clock(config, Clock::manual()).await
    }

    /// An app with `config` on `clock` (two replicas may share one).
    pub async fn spawn_with_clock(config: Config, clock: Clock) -> Self {
        init_logs();
        let services = Services::init_with_clock(config.clone(), clock.clone())
            .await
            .expect("services start");
        let app = Application::from_services(services).await.unwrap();
        let base = format!("http://127.0.0.1:{}", app.port());
        let state = app.state().clone();
        let task = tokio::spawn(async move {
            app.run_until(std::future::pending()).await.unwrap();
        });
        let mut test_app = Self {
            base,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            state,
            config,
            org: Org {
                id: OrgId::generate(),
                admin: String::new(),
                member: String::new(),
                engine: String::new(),
            },
            clock,
            sql: tokio::sync::OnceCell::new(),
            router: std::sync::OnceLock::new(),
            task,
        };
        test_app.org = test_app.new_org("Acme").await;
        test_app
    }

    /// Creates an organization with an admin, member and engine key.
    pub async fn new_org(&self, name: &str) -> Org {
        let id = OrgId::generate();
        self.state.vault.create_org(&id, name).await.unwrap();
        let mut keys = Vec::new();
        let u1 = credgate::ids::UserId::parse("u-1").unwrap();
        for role in [Role::Admin, Role::Member, Role::Engine] {
            let new = NewKey {
                user_id: Some(&u1),
                ..NewKey::default()
            };
            keys.push(
                credgate::api_tokens::create(&self.state.store, &id, role, new)
                    .await
                    .unwrap(),
            );
        }
        Org {
            id,
            admin: keys[0].clone(),
            member: keys[1].clone(),
            engine: keys[2].clone(),
        }
    }

    /// The test's own connection to the app's database, for raw SQL that
    /// arranges or inspects what the API cannot (the app's pool is private).
    pub async fn sql(&self) -> sqlx::AnyPool {
        self.sql
            .get_or_init(|| async {
                sqlx::any::install_default_drivers();
                sqlx::AnyPool::connect(&self.config.database_url).await.unwrap()
            })
            .await
            .clone()
    }

    /// Like [`TestApp::call`], but through the router itself with
    /// `tower::ServiceExt::oneshot`: no socket, for tests of what the API
    /// answers rather than of how it is served.
    pub async fn oneshot(&self, method: Method, path: &str, key: &str, body: Option<Value>) -> (StatusCode, Value) {
        use tower::ServiceExt;
        let router = self
            .router
            .get_or_init(|| credgate::http::app(self.state.clone()))
            .clone();
        let mut req = axum::http::Request::builder()
            .method(method.as_str())
            .uri(path)
            .header("authorization", format!("Bearer {key}"));
        let body = match body {
            Some(body) => {
                req = req.header("content-type", "application/json");
                axum::body::Body::from(body.to_string())
            }
            None => axum::body::Body::empty(),
        };
        let res = router.oneshot(req.body(body).unwrap()).await.unwrap();
        let status = StatusCode::from_u16(res.status().as_u16()).unwrap();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, value)
    }

    /// A credential's refresh bookkeeping, read with the test's own
    /// connection: (consecutive failures, refresh_after, lease_until).
    /// Moves the clock to just past credential `id`'s next background refresh.
    pub async fn make_due(&self, id: &str) {
        let (_, after, _) = self.refresh_state(id).await;
        self.clock.advance(after.unwrap() - self.clock.now() + 1);
    }

    pub async fn refresh_state(&self, id: &str) -> (i64, Option<i64>, Option<i64>) {
        use sqlx::Row;
        let row = sqlx::query(
            "SELECT refresh_failures, refresh_after, lease_until FROM credentials WHERE org_id = $1 AND id = $2",
        )
        .bind(&self.org.id)
        .bind(id)
        .fetch_one(&self.sql().await)
        .await
        .unwrap();
        (row.get(0), row.get(1), row.get(2))
    }

    /// The API as the holder of `key` calls it: `app.as_(&member).get(path)`.
    pub fn as_<'a>(&'a self, key: &'a str) -> Caller<'a> {
        Caller { app: self, key }
    }

    /// Sends a request with a bearer key and optional JSON body.
    pub async fn call(&self, method: Method, path: &str, key: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(key);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    /// The value of one unlabelled metric in `/metrics`, as a whole number
    /// (0 when absent).
    pub async fn metric(&self, name: &str) -> i64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
            .map_or(0, |v| v as i64)
    }

    /// Creates a PostgreSQL credential whose password is `secret`; returns its id.
    pub async fn create_pg(&self, org: &Org, name: &str, secret: &str) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                "/integrations/credentials",
                &org.admin,
                Some(pg_body(name, secret)),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }
}

/// Moves `clock` to the first second of the next minute, so that what a
/// test counts per minute is not split by the minute turning meanwhile.
pub fn to_a_minute_start(clock: &Clock) {
    let now = clock.now();
    clock.advance(60 - now.rem_euclid(60) + 1);
}

/// A valid PostgreSQL credential body.
pub fn pg_body(name: &str, secret: &str) -> Value {
    json!({
        "name": name,
        "provider": "postgresql",
        "auth_type": "user_password",
        "fields": {"host": "db.example.com", "database": "sales", "username": "etl", "password": secret}
    })
}

/// A unique sentinel secret value.
pub fn sentinel() -> String {
    format!("SENTINEL-{}", Uuid::new_v4().simple())
}

/// The master key list of a config, as text.
pub fn master_keys(config: &Config) -> String {
    config
        .master_keys
        .as_ref()
        .map(|k: &SecretString| k.expose_secret().to_owned())
        .unwrap_or_default()
}

/// Waits until a session of the test's PostgreSQL database waits for a lock
/// (held by the test's own session).
pub async fn until_a_lock_is_awaited(app: &TestApp) {
    let watcher = app.sql().await;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND query NOT LIKE '%pg_stat_activity%'",
        )
        .fetch_one(&watcher)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// One key's calls to the app ([`TestApp::as_`]): each answers the status
/// and the JSON body (`null` when empty).
pub struct Caller<'a> {
    app: &'a TestApp,
    key: &'a str,
}

impl Caller<'_> {
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.app.call(Method::GET, path, self.key, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.app.call(Method::POST, path, self.key, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.app.call(Method::PUT, path, self.key, Some(body)).await
    }
}

/// A credential id from an answer's text (tests call the store with it).
pub fn cid(id: &str) -> credgate::ids::CredentialId {
    credgate::ids::CredentialId::parse(id).expect("a credential id")
}

/// How many connections named `credgate` PostgreSQL has open to `db`.
pub async fn credgate_connections(db: &TestDb) -> i64 {
    let name = db.url.rsplit('/').next().unwrap().to_owned();
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(PG_ADMIN_URL)
        .await
        .unwrap();
    sqlx::query_scalar("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'credgate'")
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .unwrap()
}

/// Starts `python3 tests/api/{script}` (a stand-in that prints `READY …`
/// once it listens, and exits when its stdin closes); returns what follows
/// `READY `, and the process with its stdin (dropping them stops it).
pub fn python_stand_in(script: &str) -> (String, std::process::Child, std::process::ChildStdin) {
    use std::io::BufRead;
    let path: std::path::PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests/api", script].iter().collect();
    let mut child = std::process::Command::new("python3")
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("python3 runs (scripts/install-test-deps.sh installs what the stand-ins import)");
    let stdin = child.stdin.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ready = line
        .trim()
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("{script} did not start (run scripts/install-test-deps.sh): {line:?}"))
        .to_owned();
    (ready, child, stdin)
}
