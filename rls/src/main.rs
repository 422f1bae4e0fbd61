//! surgeguard-rls: a rate limit service for tests and demos. It answers Envoy's
//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` over Limitador (the library),
//! with its counters in Redis (shared by every process pointed at the same Redis) or in memory.
//! `call` is a one-shot client, so tests reach it without a gRPC stack of their own.
//!
//! A call never waits on Redis longer than `--redis-timeout-ms`: past it, or on any Redis error,
//! the answer is gRPC UNAVAILABLE, as limitador-server answers, so the client's own failure
//! mode decides (Envoy's `failure_mode_deny`, surgeguard's local share). The Redis connection
//! is re-established in the background: once Redis answers again, so does this service.

mod mapping;

use clap::{ArgGroup, Args, Parser, Subcommand};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use limitador::errors::LimitadorError;
use limitador::limit::{Limit, Namespace};
use limitador::storage::redis::AsyncRedisStorage;
use limitador::storage::AsyncStorage;
use limitador::{AsyncRateLimiter, AsyncRateLimiterBuilder, CheckResult, RateLimiter};
use mapping::Call;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic::{Request, Response, Status};

#[derive(Parser)]
#[command(name = "surgeguard-rls", version, about = "Envoy's rate limit service over Limitador, for tests and demos")]
#[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Args)]
#[command(group(ArgGroup::new("storage").required(true).args(["redis", "memory"])))]
struct ServeArgs {
    /// Where to serve gRPC, e.g. 127.0.0.1:8081; port 0 picks a free port. The first line on
    /// stdout is the bound address: `listening 127.0.0.1:43121`.
    #[arg(long, required = true)]
    listen: Option<SocketAddr>,
    /// Counters in this Redis (e.g. redis://127.0.0.1:6379), shared by every service using it.
    #[arg(long)]
    redis: Option<String>,
    /// Counters in this process only.
    #[arg(long)]
    memory: bool,
    /// The limits, in Limitador's limits file format (YAML).
    #[arg(long, required = true)]
    limits: Option<PathBuf>,
    /// The longest a call waits on Redis before answering UNAVAILABLE.
    #[arg(long, default_value_t = 50)]
    redis_timeout_ms: u64,
}

#[derive(Subcommand)]
enum Command {
    /// One ShouldRateLimit call; prints the answer (or the gRPC error) as one JSON line.
    /// Exit status: 0 answered, 3 no answer.
    Call(CallArgs),
}

#[derive(Args)]
struct CallArgs {
    /// The service, e.g. 127.0.0.1:8081.
    #[arg(long)]
    addr: SocketAddr,
    /// The rate limit domain: the Limitador namespace.
    #[arg(long)]
    domain: String,
    /// One descriptor as comma-separated key=value entries (`limit=storefront,client=a`);
    /// repeat for several descriptors.
    #[arg(long = "descriptor")]
    descriptors: Vec<String>,
    /// hits_addend: the tokens to take.
    #[arg(long, default_value_t = 1)]
    hits: u32,
    /// The longest to wait for a connection and then for the answer.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("tokio runtime: {e}")),
    };
    match cli.command {
        Some(Command::Call(args)) => runtime.block_on(call(args)),
        None => match runtime.block_on(serve(cli.serve)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => fail(message),
        },
    }
}

fn fail(message: String) -> ExitCode {
    eprintln!("surgeguard-rls: {message}");
    ExitCode::FAILURE
}

// ---------------------------------------------------------------------------------------------
// The service

enum Limiter {
    Memory(RateLimiter),
    Redis {
        limiter: AsyncRateLimiter,
        timeout: Duration,
        failing: AtomicBool,
        /// Limitador's Redis storage checks the counters, then increments them (two round trips,
        /// not one script): two calls at once could each find room and together overshoot the
        /// limit by a lease. One call at a time keeps this service exact (several services on
        /// one Redis still can overshoot); leases are a few calls per second per Envoy.
        serial: tokio::sync::Mutex<()>,
    },
}

impl Limiter {
    async fn redis(url: &str, timeout: Duration) -> Result<Limiter, String> {
        let client = redis::Client::open(url).map_err(|e| format!("--redis {url}: {e}"))?;
        // Without timeouts a stopped Redis holds every call for minutes; the retry backoff is
        // kept short (the library's default grows by x100) so a restarted Redis is found again
        // within about two seconds. Failed reconnections are retried on the next call.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(1)
            .set_factor(2)
            .set_max_delay(1000);
        let manager = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| format!("cannot reach Redis at {url}: {e}"))?;
        let storage = AsyncRedisStorage::new_with_conn_manager(manager)
            .await
            .map_err(|e| format!("Redis at {url}: loading Limitador's scripts: {e}"))?;
        let limiter = AsyncRateLimiterBuilder::new(AsyncStorage::with_counter_storage(Box::new(storage))).build();
        Ok(Limiter::Redis { limiter, timeout, failing: AtomicBool::new(false), serial: tokio::sync::Mutex::new(()) })
    }

    async fn configure(&self, limits: Vec<Limit>) -> Result<(), LimitadorError> {
        match self {
            Limiter::Memory(l) => l.configure_with(limits),
            Limiter::Redis { limiter, .. } => limiter.configure_with(limits).await,
        }
    }

    /// Counts `call.hits` on every limit that applies if all of them have room, else nothing.
    async fn check_and_update(&self, call: &Call, descriptors_read: usize) -> Result<CheckResult, Status> {
        let namespace: Namespace = call.namespace.as_str().into();
        let ctx = call.context(descriptors_read);
        let (limiter, timeout, failing, serial) = match self {
            Limiter::Memory(l) => return l.check_rate_limited_and_update(&namespace, &ctx, call.hits).map_err(status),
            Limiter::Redis { limiter, timeout, failing, serial } => (limiter, timeout, failing, serial),
        };
        let one_at_a_time = async {
            let _turn = serial.lock().await;
            limiter.check_rate_limited_and_update(&namespace, &ctx, call.hits).await
        };
        let result = match tokio::time::timeout(*timeout, one_at_a_time).await {
            Ok(result) => result.map_err(status),
            Err(_) => Err(Status::unavailable(format!("Redis did not answer within {} ms", timeout.as_millis()))),
        };
        // One log line per change of state, not one per call.
        match &result {
            Err(e) if !failing.swap(true, Ordering::Relaxed) => {
                eprintln!("surgeguard-rls: Redis failing: {}", e.message())
            }
            Ok(_) if failing.swap(false, Ordering::Relaxed) => eprintln!("surgeguard-rls: Redis answering again"),
            _ => {}
        }
        result
    }
}

fn status(e: LimitadorError) -> Status {
    match e {
        LimitadorError::StorageError(e) => Status::unavailable(format!("counter storage: {}", e.msg())),
        LimitadorError::InterpreterError(e) => Status::internal(format!("evaluating a limit: {e:?}")),
    }
}

struct Service {
    limiter: Arc<Limiter>,
    /// Per namespace, how many descriptors its limits read (see `mapping::descriptors_read`).
    descriptors_read: HashMap<String, usize>,
}

#[tonic::async_trait]
impl RateLimitService for Service {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let call = Call::from_request(request.get_ref()).map_err(Status::invalid_argument)?;
        let read = self.descriptors_read.get(&call.namespace).copied().unwrap_or(0);
        let limiter = Arc::clone(&self.limiter);
        // A task of its own: a panic inside Limitador (it unwraps some CEL evaluations) then
        // fails this call with INTERNAL instead of the connection.
        let task = tokio::spawn(async move {
            let verdict = limiter.check_and_update(&call, read).await;
            (call, verdict)
        });
        match task.await {
            Ok((call, Ok(verdict))) => Ok(Response::new(mapping::response(&call, verdict.limited, &verdict.counters))),
            Ok((_, Err(status))) => Err(status),
            Err(e) => Err(Status::internal(format!("the limiter failed: {e}"))),
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let (Some(listen), Some(limits_path)) = (args.listen, args.limits) else {
        return Err("--listen and --limits are required".into());
    };
    let text = std::fs::read_to_string(&limits_path).map_err(|e| format!("{}: {e}", limits_path.display()))?;
    // Limitador's own format, read the way limitador-server reads it.
    let limits: Vec<Limit> = serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", limits_path.display()))?;
    let descriptors_read = mapping::descriptors_read(&limits);
    let limiter = match (&args.redis, args.memory) {
        (Some(url), _) => Limiter::redis(url, Duration::from_millis(args.redis_timeout_ms)).await?,
        (None, _) => Limiter::Memory(RateLimiter::new(100_000)),
    };
    let count = limits.len();
    limiter.configure(limits).await.map_err(|e| format!("configuring the limits: {e}"))?;

    // No Nagle: an answer's HTTP/2 frames would otherwise wait for the client's delayed ACK.
    let incoming = TcpIncoming::bind(listen).map_err(|e| format!("--listen {listen}: {e}"))?.with_nodelay(Some(true));
    let bound = incoming.local_addr().map_err(|e| format!("--listen {listen}: {e}"))?;
    // The first stdout line is the contract with whoever started us (port 0).
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening {bound}").and_then(|()| stdout.flush()).map_err(|e| format!("stdout: {e}"))?;
    let storage = args.redis.as_deref().unwrap_or("memory");
    eprintln!("surgeguard-rls: {count} limits from {}, counters in {storage}", limits_path.display());

    let service = Service { limiter: Arc::new(limiter), descriptors_read };
    Server::builder()
        .add_service(RateLimitServiceServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown())
        .await
        .map_err(|e| format!("serving: {e}"))
}

/// SIGTERM or Ctrl-C.
async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

// ---------------------------------------------------------------------------------------------
// The one-shot client

#[derive(Serialize)]
struct CallOutput {
    /// From sending the request to the answer or error (the connection made beforehand).
    rpc_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    answer: Option<AnswerOutput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorOutput>,
}

#[derive(Serialize)]
struct AnswerOutput {
    overall_code: &'static str,
    statuses: Vec<StatusOutput>,
}

#[derive(Serialize)]
struct StatusOutput {
    code: &'static str,
    limit_remaining: u32,
    duration_until_reset_ms: Option<u64>,
    current_limit: Option<LimitOutput>,
}

#[derive(Serialize)]
struct LimitOutput {
    name: String,
    requests_per_unit: u32,
    unit: &'static str,
}

#[derive(Serialize)]
struct ErrorOutput {
    /// tonic's name of the gRPC status code, e.g. `Unavailable`.
    code: String,
    message: String,
}

impl AnswerOutput {
    fn from(resp: &RateLimitResponse) -> AnswerOutput {
        let code_name = |c: i32| Code::try_from(c).map_or("UNKNOWN", |c| c.as_str_name());
        let statuses = resp.statuses.iter().map(|s| StatusOutput {
            code: code_name(s.code),
            limit_remaining: s.limit_remaining,
            duration_until_reset_ms: s.duration_until_reset.as_ref().map(|d| {
                u64::try_from(d.seconds).unwrap_or(0) * 1000 + u64::try_from(d.nanos).unwrap_or(0) / 1_000_000
            }),
            current_limit: s.current_limit.as_ref().map(|l| LimitOutput {
                name: l.name.clone(),
                requests_per_unit: l.requests_per_unit,
                unit: Unit::try_from(l.unit).map_or("UNKNOWN", |u| u.as_str_name()),
            }),
        });
        AnswerOutput { overall_code: code_name(resp.overall_code), statuses: statuses.collect() }
    }
}

fn parse_descriptor(text: &str) -> Result<RateLimitDescriptor, String> {
    let entries = text.split(',').map(|pair| match pair.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok(Entry { key: key.into(), value: value.into() }),
        _ => Err(format!("--descriptor: expected key=value[,key=value...], got {text:?}")),
    });
    Ok(RateLimitDescriptor { entries: entries.collect::<Result<_, _>>()?, ..Default::default() })
}

async fn call(args: CallArgs) -> ExitCode {
    let descriptors = match args.descriptors.iter().map(|d| parse_descriptor(d)).collect::<Result<Vec<_>, _>>() {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let request = RateLimitRequest { domain: args.domain, descriptors, hits_addend: args.hits };
    print_call(rpc(args.addr, Duration::from_millis(args.timeout_ms), request).await)
}

async fn rpc(addr: SocketAddr, timeout: Duration, request: RateLimitRequest) -> CallOutput {
    let t0 = Instant::now();
    let failed = |code: &str, message: String| CallOutput {
        rpc_ms: t0.elapsed().as_secs_f64() * 1000.0,
        answer: None,
        error: Some(ErrorOutput { code: code.into(), message }),
    };
    let endpoint = match Endpoint::from_shared(format!("http://{addr}")) {
        Ok(endpoint) => endpoint,
        Err(e) => return failed("InvalidArgument", e.to_string()),
    };
    let channel = match endpoint.connect_timeout(timeout).connect().await {
        Ok(channel) => channel,
        Err(e) => return failed("Unavailable", format!("connect: {e}")),
    };
    let mut client = RateLimitServiceClient::new(channel);
    let sent = Instant::now();
    let answer = tokio::time::timeout(timeout, client.should_rate_limit(request)).await;
    let rpc_ms = sent.elapsed().as_secs_f64() * 1000.0;
    match answer {
        Ok(Ok(resp)) => CallOutput { rpc_ms, answer: Some(AnswerOutput::from(resp.get_ref())), error: None },
        Ok(Err(s)) => CallOutput { rpc_ms, answer: None, error: Some(grpc_error(&s)) },
        Err(_) => CallOutput {
            rpc_ms,
            answer: None,
            error: Some(ErrorOutput { code: "DeadlineExceeded".into(), message: "no answer in time".into() }),
        },
    }
}

fn grpc_error(s: &Status) -> ErrorOutput {
    ErrorOutput { code: format!("{:?}", s.code()), message: s.message().to_string() }
}

fn print_call(out: CallOutput) -> ExitCode {
    let answered = out.answer.is_some();
    match serde_json::to_string(&out) {
        Ok(line) => println!("{line}"),
        Err(e) => return fail(format!("json: {e}")),
    }
    if answered {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}
