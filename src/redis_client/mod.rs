//! Redis, the cluster's shared state, never blocking an executor: a thread of its own runs the
//! tokio runtime that owns the connection; executors send commands over a channel and wait at
//! most the configured timeout. While Redis is down commands fail fast and `health` says why.

pub mod keys;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::IntoConnectionInfo;
use tokio::sync::{mpsc, oneshot};

pub use keys::Keys;

use crate::clock::within;

/// How often the connection is probed (PING), which also drives reconnecting.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` (TLS).
    pub url: String,
    /// Used when the URL has no password (the `REDIS_PASSWORD` environment variable).
    pub password: Option<String>,
    pub key_prefix: String,
    /// Treat `url` as a seed node of a Redis Cluster.
    pub cluster: bool,
    /// Longest wait for any one command; past it the caller goes on without Redis.
    pub timeout: Duration,
}

/// By hand, so that neither the password nor a URL with one in it can reach a log line.
impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact_redis_url(&self.url))
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("key_prefix", &self.key_prefix)
            .field("cluster", &self.cluster)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `redis://user:secret@host:6379/0` → `redis://user:<redacted>@host:6379/0`.
pub fn redact_redis_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, path) = rest.split_once('/').map_or((rest, None), |(a, p)| (a, Some(p)));
    let Some((userinfo, host)) = authority.rsplit_once('@') else { return url.to_owned() };
    let user = userinfo.split_once(':').map_or("", |(user, _)| user);
    let path = path.map(|p| format!("/{p}")).unwrap_or_default();
    format!("{scheme}://{user}:<redacted>@{host}{path}")
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisError {
    #[error("redis.url: {0}")]
    Config(String),
    #[error("Redis is unavailable: {0}")]
    Unavailable(String),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Command(String),
}

enum Command {
    Get(String),
    Set(String, Vec<u8>, Option<Duration>),
    /// `SET … NX PX`: only if the key is absent.
    SetIfAbsent(String, Vec<u8>, Duration),
    Delete(String),
    /// Deletes the key only if it holds the value (one script, so atomic).
    DeleteIfEquals(String, Vec<u8>),
}

/// Compare and delete: a claim is given back only by its holder, even if it expired and
/// another node took it meanwhile.
const DELETE_IF_EQUALS: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

enum Answer {
    Value(Option<Vec<u8>>),
    Done(bool),
}

type Job = (Command, oneshot::Sender<Result<Answer, RedisError>>);

/// Whether Redis answered the last probe, and if not, why.
#[derive(Debug)]
pub struct Health {
    up: AtomicBool,
    last_error: Mutex<String>,
    /// Becomes true once the first connection attempt has ended either way: a command that
    /// arrives while the facade is still starting waits for it instead of failing at once.
    attempted: tokio::sync::watch::Sender<bool>,
    /// The URL without its password, for log lines.
    url: String,
}

/// What the probe before the current one found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Previous<'a> {
    /// No probe has ended yet.
    Nothing,
    Up,
    Down(&'a str),
}

/// What a probe result is worth a log line for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HealthChange {
    Reachable,
    /// Down after being up, or from the start: a wrong host, password or TLS setting shows
    /// only this way.
    Unreachable,
    /// Still down, for another reason than the one logged last.
    ReasonChanged,
    /// Nothing new: the same answer as the probe before.
    Same,
}

/// Logged: every change of state and of the reason Redis is down, so an operator sees why
/// from the first failed attempt on; not logged: a retry failing the same way again, which
/// while Redis stays down would be a line every few seconds.
fn health_change(previous: Previous<'_>, result: Result<(), &str>) -> HealthChange {
    match (previous, result) {
        (Previous::Up, Ok(())) => HealthChange::Same,
        (_, Ok(())) => HealthChange::Reachable,
        (Previous::Down(before), Err(now)) if before == now => HealthChange::Same,
        (Previous::Down(_), Err(_)) => HealthChange::ReasonChanged,
        (_, Err(_)) => HealthChange::Unreachable,
    }
}

impl Health {
    fn new(url: &str) -> Health {
        Health {
            up: AtomicBool::new(false),
            last_error: Mutex::new("not connected yet".into()),
            attempted: tokio::sync::watch::Sender::new(false),
            url: redact_redis_url(url),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn last_error(&self) -> String {
        self.last_error.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Waits until the first connection attempt has ended (tokio's watch channel needs no
    /// tokio runtime, so an executor can await it).
    async fn first_attempt(&self) {
        let mut attempted = self.attempted.subscribe();
        let _ = attempted.wait_for(|done| *done).await;
    }

    fn set(&self, result: Result<(), String>) {
        // Only the probe sets health, one result at a time; the lock keeps `last_error` whole
        // for readers. Poisoned only by a panic elsewhere, which left a whole string behind.
        let mut last_error = self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // `up` first: a command woken by `attempted` must see this result.
        let was_up = self.up.swap(result.is_ok(), Ordering::AcqRel);
        let previous = match (self.attempted.send_replace(true), was_up) {
            (false, _) => Previous::Nothing,
            (true, true) => Previous::Up,
            (true, false) => Previous::Down(&last_error),
        };
        let change = health_change(previous, result.as_ref().map(|_| ()).map_err(String::as_str));
        let url = &self.url;
        match (change, &result) {
            (HealthChange::Reachable, _) => tracing::info!(%url, "Redis is reachable"),
            (HealthChange::Unreachable, Err(error)) => tracing::warn!(%url, %error, "Redis is unreachable; serving without it"),
            (HealthChange::ReasonChanged, Err(error)) => tracing::warn!(%url, %error, "Redis is still unreachable"),
            _ => {}
        }
        if let Err(error) = result {
            *last_error = error;
        }
    }
}

#[derive(Clone)]
pub struct RedisClient {
    jobs: mpsc::UnboundedSender<Job>,
    health: Arc<Health>,
    keys: Keys,
    timeout: Duration,
}

impl RedisClient {
    /// Checks the settings and starts the Redis thread; does not wait for Redis to be up
    /// (the facade serves without it until it is).
    ///
    /// # Errors
    /// The URL does not parse, or the thread cannot start.
    pub fn start(settings: &RedisSettings) -> Result<RedisClient, RedisError> {
        let mut info = settings.url.as_str().into_connection_info().map_err(|e| RedisError::Config(e.to_string()))?;
        if info.redis_settings().password().is_none() {
            if let Some(password) = &settings.password {
                let redis = info.redis_settings().clone().set_password(password);
                info = info.set_redis_settings(redis);
            }
        }
        // rustls (for rediss://) needs a process-wide crypto provider; ours is ring. Already
        // installed is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (jobs, receiver) = mpsc::unbounded_channel();
        let health = Arc::new(Health::new(&settings.url));
        let (thread_health, cluster, timeout) = (Arc::clone(&health), settings.cluster, settings.timeout);
        std::thread::Builder::new()
            .name("rf-redis".into())
            .spawn(move || run(info, cluster, timeout, receiver, thread_health))
            .map_err(|e| RedisError::Config(format!("cannot start the Redis thread: {e}")))?;
        Ok(RedisClient { jobs, health, keys: Keys::new(&settings.key_prefix), timeout: settings.timeout })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// # Errors
    /// Redis is down, slow, or refused the command.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, RedisError> {
        match self.call(Command::Get(key.to_owned())).await? {
            Answer::Value(value) => Ok(value),
            Answer::Done(_) => Err(RedisError::Command("unexpected answer".into())),
        }
    }

    /// # Errors
    /// As `get`.
    pub async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), RedisError> {
        self.call(Command::Set(key.to_owned(), value, ttl)).await.map(|_| ())
    }

    /// Sets `key` for `ttl` only if it is absent (atomically, for all nodes): whether it was set.
    ///
    /// # Errors
    /// As `get`.
    pub async fn set_if_absent(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<bool, RedisError> {
        match self.call(Command::SetIfAbsent(key.to_owned(), value, ttl)).await? {
            Answer::Done(set) => Ok(set),
            Answer::Value(_) => Err(RedisError::Command("unexpected answer".into())),
        }
    }

    /// Deletes `key` if it holds `value`, without waiting for the answer: usable where nothing
    /// can wait (a `Drop`). A Redis that is down is simply not asked.
    pub fn delete_if_equals_detached(&self, key: &str, value: Vec<u8>) {
        let (reply, _) = oneshot::channel();
        let _ = self.jobs.send((Command::DeleteIfEquals(key.to_owned(), value), reply));
    }

    /// Whether the key existed.
    ///
    /// # Errors
    /// As `get`.
    pub async fn delete(&self, key: &str) -> Result<bool, RedisError> {
        match self.call(Command::Delete(key.to_owned())).await? {
            Answer::Done(existed) => Ok(existed),
            Answer::Value(_) => Err(RedisError::Command("unexpected answer".into())),
        }
    }

    async fn call(&self, command: Command) -> Result<Answer, RedisError> {
        if !self.health.is_up() && !*self.health.attempted.borrow() {
            within(self.timeout, self.health.first_attempt()).await;
        }
        if !self.health.is_up() {
            return Err(RedisError::Unavailable(self.health.last_error()));
        }
        let (reply, answer) = oneshot::channel();
        self.jobs.send((command, reply)).map_err(|_| RedisError::Unavailable("the Redis thread stopped".into()))?;
        match within(self.timeout, answer).await {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(RedisError::Unavailable("the Redis thread dropped the command".into())),
            None => Err(RedisError::Timeout(self.timeout)),
        }
    }
}

/// A connection of either kind.
#[derive(Clone)]
enum Connection {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Connection {
    async fn query<T: redis::FromRedisValue>(&mut self, command: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Connection::Single(c) => command.query_async(c).await,
            Connection::Cluster(c) => command.query_async(c).await,
        }
    }
}

/// The Redis thread: connects (again and again while Redis is down), probes, and runs jobs.
fn run(info: redis::ConnectionInfo, cluster: bool, timeout: Duration, mut jobs: mpsc::UnboundedReceiver<Job>, health: Arc<Health>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return health.set(Err(format!("cannot start the Redis runtime: {e}"))),
    };
    runtime.block_on(async move {
        let connection: Arc<tokio::sync::RwLock<Option<Connection>>> = Arc::default();
        tokio::spawn(probe(info, cluster, timeout, Arc::clone(&connection), Arc::clone(&health)));
        while let Some((command, reply)) = jobs.recv().await {
            let current = connection.read().await.clone();
            tokio::spawn(async move {
                let result = match current {
                    Some(mut connection) => execute(&mut connection, command).await,
                    None => Err(RedisError::Unavailable("not connected".into())),
                };
                let _ = reply.send(result);
            });
        }
    });
}

async fn execute(connection: &mut Connection, command: Command) -> Result<Answer, RedisError> {
    let failed = |e: redis::RedisError| RedisError::Command(e.to_string());
    match command {
        Command::Get(key) => connection.query::<Option<Vec<u8>>>(redis::cmd("GET").arg(key)).await.map(Answer::Value).map_err(failed),
        Command::Set(key, value, ttl) => {
            let mut cmd = redis::cmd("SET");
            cmd.arg(key).arg(value);
            if let Some(ttl) = ttl {
                cmd.arg("PX").arg(ttl.as_millis().max(1) as u64);
            }
            connection.query::<()>(&cmd).await.map(|()| Answer::Done(true)).map_err(failed)
        }
        Command::SetIfAbsent(key, value, ttl) => {
            let mut cmd = redis::cmd("SET");
            cmd.arg(key).arg(value).arg("NX").arg("PX").arg(ttl.as_millis().max(1) as u64);
            connection.query::<Option<String>>(&cmd).await.map(|set| Answer::Done(set.is_some())).map_err(failed)
        }
        Command::Delete(key) => connection.query::<i64>(redis::cmd("DEL").arg(key)).await.map(|n| Answer::Done(n > 0)).map_err(failed),
        Command::DeleteIfEquals(key, value) => {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(DELETE_IF_EQUALS).arg(1).arg(key).arg(value);
            connection.query::<i64>(&cmd).await.map(|n| Answer::Done(n > 0)).map_err(failed)
        }
    }
}

/// Keeps a connection (re-creating it while Redis is down, with backoff) and records health.
async fn probe(info: redis::ConnectionInfo, cluster: bool, timeout: Duration, connection: Arc<tokio::sync::RwLock<Option<Connection>>>, health: Arc<Health>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let current = connection.read().await.clone();
        let result = match current {
            Some(mut live) => match tokio::time::timeout(timeout, live.query::<String>(&redis::cmd("PING"))).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer to PING within {timeout:?}")),
            },
            None => match tokio::time::timeout(timeout.max(Duration::from_secs(1)), connect(&info, cluster, timeout)).await {
                Ok(Ok(fresh)) => {
                    *connection.write().await = Some(fresh);
                    Ok(())
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err("connecting timed out".into()),
            },
        };
        let ok = result.is_ok();
        health.set(result);
        if ok {
            backoff = Duration::from_millis(100);
            tokio::time::sleep(PROBE_INTERVAL).await;
        } else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

async fn connect(info: &redis::ConnectionInfo, cluster: bool, timeout: Duration) -> Result<Connection, String> {
    if cluster {
        let client = cluster_client(info, timeout).map_err(|e| e.to_string())?;
        return client.get_async_connection().await.map(Connection::Cluster).map_err(|e| e.to_string());
    }
    let client = redis::Client::open(info.clone()).map_err(|e| e.to_string())?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1);
    client.get_connection_manager_with_config(config).await.map(Connection::Single).map_err(|e| e.to_string())
}

/// A cluster client bounded like the single-node connection: the library's defaults have no
/// response timeout, so a command to a node that stopped answering would wait for ever inside
/// the connection after the caller gave up on it. The overall timeout (retries included)
/// follows the response timeout.
fn cluster_client(info: &redis::ConnectionInfo, timeout: Duration) -> redis::RedisResult<redis::cluster::ClusterClient> {
    redis::cluster::ClusterClient::builder(vec![info.clone()])
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_seed_that_does_not_answer_is_given_up_within_the_timeout() {
        // Accepts connections (the kernel does, into the backlog) and never says a word.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let info = format!("redis://{}", silent.local_addr().unwrap()).into_connection_info().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let started = std::time::Instant::now();
        let attempt = runtime.block_on(async { tokio::time::timeout(Duration::from_secs(10), connect(&info, true, Duration::from_millis(200))).await });
        assert!(matches!(attempt, Ok(Err(_))), "the attempt fails by itself");
        // The library's default is a second.
        assert!(started.elapsed() < Duration::from_millis(700), "gave up after {:?}", started.elapsed());
    }

    #[test]
    fn the_cluster_client_has_the_configured_response_timeout() {
        // Not observable from outside without a node that accepts commands and never answers
        // them (callers are bounded by `within` anyway); the client's own description says it.
        let info = "redis://127.0.0.1:1".into_connection_info().unwrap();
        let described = format!("{:?}", cluster_client(&info, Duration::from_millis(321)).unwrap());
        assert!(described.contains("response_timeout: Some(321ms)"), "{described}");
        assert!(described.contains("connection_timeout: 321ms"), "{described}");
        assert!(described.contains("overall_response_timeout: Some(321ms)"), "{described}");
    }

    #[test]
    fn health_logs_every_change_and_no_repeat() {
        use HealthChange::*;
        let failed = |reason| Err(reason);
        assert_eq!(health_change(Previous::Nothing, failed("refused")), Unreachable, "down from the start is logged");
        assert_eq!(health_change(Previous::Down("refused"), failed("refused")), Same, "a retry failing alike is not");
        assert_eq!(health_change(Previous::Down("refused"), failed("WRONGPASS")), ReasonChanged);
        assert_eq!(health_change(Previous::Down("WRONGPASS"), Ok(())), Reachable);
        assert_eq!(health_change(Previous::Nothing, Ok(())), Reachable);
        assert_eq!(health_change(Previous::Up, Ok(())), Same);
        assert_eq!(health_change(Previous::Up, failed("refused")), Unreachable);
    }

    /// The log lines `work` produces, as text.
    fn logged(work: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).without_time().with_writer(move || writer.clone()).finish();
        tracing::subscriber::with_default(subscriber, work);
        let text = lines.0.lock().unwrap().clone();
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn a_redis_unreachable_from_the_start_is_logged_once_per_reason() {
        let health = Health::new("redis://app:hunter2@redis.invalid:6379");
        let log = logged(|| {
            for _ in 0..3 {
                health.set(Err("Connection refused (os error 111)".into()));
            }
            health.set(Err("WRONGPASS invalid username-password pair".into()));
            health.set(Err("WRONGPASS invalid username-password pair".into()));
            health.set(Ok(()));
            health.set(Ok(()));
        });
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 3, "{log}");
        assert!(lines[0].contains("WARN") && lines[0].contains("Redis is unreachable") && lines[0].contains("Connection refused"), "{log}");
        assert!(lines[1].contains("WARN") && lines[1].contains("WRONGPASS"), "{log}");
        assert!(lines[2].contains("INFO") && lines[2].contains("Redis is reachable"), "{log}");
        assert!(lines.iter().all(|l| l.contains("redis.invalid") && !l.contains("hunter2")), "{log}");
        assert!(health.is_up());
    }

    #[test]
    fn settings_never_print_their_secrets() {
        let settings = RedisSettings {
            url: "redis://app:hunter2@10.0.0.5:6379/3".into(),
            password: Some("s3cr3t".into()),
            key_prefix: "rf:".into(),
            cluster: false,
            timeout: Duration::from_millis(250),
        };
        let printed = format!("{settings:?}");
        assert!(!printed.contains("hunter2") && !printed.contains("s3cr3t"), "{printed}");
        assert!(printed.contains("redis://app:<redacted>@10.0.0.5:6379/3"), "{printed}");
        assert_eq!(redact_redis_url("redis://:pw@h:1"), "redis://:<redacted>@h:1");
        assert_eq!(redact_redis_url("redis://h:1/0"), "redis://h:1/0");
    }
}
