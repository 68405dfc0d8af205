//! `wavecast server`: run the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use wavecast_server::blobs::{BlobConfig, BlobDelivery, BlobLocation};
use wavecast_server::limits::{Rate, RateLimits};

/// Serve an installation: the operator API, the device API, TUF metadata and artifacts.
#[derive(Debug, Args)]
#[command(after_help = "Stops gracefully on SIGTERM or Ctrl-C. Logs go to stderr; set RUST_LOG \
(for example RUST_LOG=debug) for more.")]
pub struct ServerArgs {
    /// The directory `wavecast init` created.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Address to listen on. Plain HTTP: keep it on loopback.
    #[arg(long, value_name = "ADDR", default_value = wavecast_server::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Use PostgreSQL (postgres://…) instead of the SQLite file in the data dir.
    #[arg(long, value_name = "URL", env = "WAVECAST_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Forbid the creator of a rollout from approving its gates (four-eyes rule).
    #[arg(long)]
    require_distinct_approver: bool,
    /// Serve HTTPS with this certificate chain (PEM). Without it the server speaks plain HTTP
    /// and warns: keep that on loopback.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require devices to present a client certificate from this CA (PEM) whose common name is
    /// the device's name (mutual TLS). Operators connect without one.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    device_client_ca: Option<PathBuf>,
    /// A revocation list for device certificates (PEM). Repeatable.
    #[arg(long, value_name = "PEM", requires = "device_client_ca")]
    device_client_crl: Vec<PathBuf>,
    /// Failed authentications allowed per client address (an IPv6 client's /64), as
    /// COUNT/PERIOD,BURST with PERIOD s, min or h. Only failures are charged (a wrong, revoked
    /// or missing credential or token), so devices sharing a NAT address are never limited for
    /// being many; once an address has spent it, all its requests are answered 429 before any
    /// database lookup until it refills. Budgets are per replica and keyed by the connection's
    /// peer address (behind a proxy, every client shares the proxy's unless --trusted-proxy
    /// names it).
    #[arg(long, value_name = "RATE", default_value_t = RateLimits::FAILED_AUTH_PER_ADDRESS)]
    limit_failed_auth: Rate,
    /// Requests allowed per enrolled device, COUNT/PERIOD,BURST (a device checks in every 30 s
    /// by default).
    #[arg(long, value_name = "RATE", default_value_t = RateLimits::DEVICE_REQUESTS)]
    limit_device_requests: Rate,
    /// Heartbeats allowed per device on top of its requests, COUNT/PERIOD,BURST. Each is a
    /// database write; devices are never asked for more than one a second.
    #[arg(long, value_name = "RATE", default_value_t = RateLimits::HEARTBEATS)]
    limit_heartbeats: Rate,
    /// A reverse proxy whose X-Forwarded-For header names the client for request budgets: the
    /// nearest address in it that is not itself a trusted proxy. Repeatable. Without it the
    /// header is ignored, since any client can write it.
    #[arg(long, value_name = "IP")]
    trusted_proxy: Vec<std::net::IpAddr>,
    /// How long the id of each device report is kept (at least 1h), so that a report sent again
    /// is recognised and applied once; older ids are deleted hourly. Safe because an agent sends
    /// a report again only until the server acknowledges it, at its next check-ins: a report
    /// id older than this is never sent again by an agent that can reach the server (and one
    /// that does arrive is judged against where the device stands now: at worst out of date).
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = wavecast_core::duration::parse_duration)]
    report_retention: std::time::Duration,
    /// Where artifact blobs are kept: a folder (default: the data dir's blobs/), or
    /// s3://BUCKET/PREFIX in S3 or any S3-compatible service, so that several replicas share
    /// them with nothing but the bucket. Credentials and region come from the usual AWS
    /// variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, ...); devices never get
    /// them.
    #[arg(long, value_name = "URL", env = "WAVECAST_BLOB_STORE")]
    blob_store: Option<BlobLocation>,
    /// The S3 endpoint for a service other than AWS (http://127.0.0.1:9000, say). Plain HTTP is
    /// allowed only when written here.
    #[arg(long, value_name = "URL", requires = "blob_store")]
    blob_store_endpoint: Option<url::Url>,
    /// Answer a device's artifact download with a redirect to a presigned URL valid this long
    /// (5m when no value is given), so the bytes go straight from the bucket to the device. The
    /// agent verifies them exactly as before. Needs an s3:// --blob-store that devices can reach.
    #[arg(long, value_name = "DURATION", num_args = 0..=1, require_equals = true, default_missing_value = "5m",
          value_parser = wavecast_core::duration::parse_duration)]
    blob_redirect: Option<std::time::Duration>,
}

pub async fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let approval = if args.require_distinct_approver {
        wavecast_core::rollout::GateApproval::DistinctApprover
    } else {
        wavecast_core::rollout::GateApproval::AnyApprover
    };
    let blobs = BlobConfig {
        location: args.blob_store.unwrap_or(BlobLocation::Local(None)),
        endpoint: args.blob_store_endpoint,
        delivery: args.blob_redirect.map_or(BlobDelivery::Proxied, BlobDelivery::Redirect),
        credentials: None,
    };
    let mut config = wavecast_server::ServerConfig::new(args.data_dir, args.listen, args.database_url, approval)?
        .with_report_retention(args.report_retention)?
        .with_blobs(blobs)?;
    config.limits = RateLimits {
        failed_auth_per_address: args.limit_failed_auth,
        device_requests: args.limit_device_requests,
        heartbeats: args.limit_heartbeats,
        trusted_proxies: args.trusted_proxy,
    };
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls = Some(wavecast_server::tls::TlsConfig {
            cert,
            key,
            device_client_ca: args.device_client_ca,
            device_client_crls: args.device_client_crl,
        });
    }
    // Held until the server stops: a second server on the same SQLite installation refuses.
    let _lock = wavecast_server::dirlock::lock_for(&config)?;
    wavecast_server::run(config).await?;
    Ok(ExitCode::SUCCESS)
}

/// Structured logs on stderr, `info` unless RUST_LOG says otherwise; plain text unless stderr
/// is a terminal.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(wavecast_os::term::stderr_color())
        .try_init();
}
