//! Redis, the cluster's shared state, reached without ever blocking an executor: a dedicated
//! thread runs a current-thread tokio runtime that owns the connection (a reconnecting
//! connection manager, or a cluster connection); executors send commands over a channel and
//! await the reply, each for at most the configured timeout. While Redis is down, commands
//! fail fast, a probe reconnects with backoff, and `health` says why for `/ready`.

pub mod keys;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::IntoConnectionInfo;
use tokio::sync::{mpsc, oneshot};

pub use keys::Keys;

use crate::hyper_glue::within;

/// How often the connection is probed (PING), which also drives reconnecting.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
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
    Delete(String),
}

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
}

impl Default for Health {
    fn default() -> Health {
        Health { up: AtomicBool::new(false), last_error: Mutex::new("not connected yet".into()), attempted: tokio::sync::watch::Sender::new(false) }
    }
}

impl Health {
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
        self.attempted.send_replace(true);
        let was_up = self.up.swap(result.is_ok(), Ordering::AcqRel);
        match result {
            Ok(()) if !was_up => tracing::info!("Redis is reachable"),
            Err(error) => {
                if was_up {
                    tracing::warn!(%error, "Redis is unreachable; serving without it");
                }
                if let Ok(mut last) = self.last_error.lock() {
                    *last = error;
                }
            }
            Ok(()) => {}
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
        let health = Arc::new(Health::default());
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
        Command::Delete(key) => connection.query::<i64>(redis::cmd("DEL").arg(key)).await.map(|n| Answer::Done(n > 0)).map_err(failed),
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
        let client = redis::cluster::ClusterClient::new(vec![info.clone()]).map_err(|e| e.to_string())?;
        return client.get_async_connection().await.map(Connection::Cluster).map_err(|e| e.to_string());
    }
    let client = redis::Client::open(info.clone()).map_err(|e| e.to_string())?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1);
    client.get_connection_manager_with_config(config).await.map(Connection::Single).map_err(|e| e.to_string())
}
