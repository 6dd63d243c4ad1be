//! `marketplace [TARGET]`: one binary for every service. `all` (the default) runs them all
//! in one process; any other target runs one service, as one container would.

use std::process::ExitCode;

use anyhow::Context;
use common::targets::{Service, Target};
use common::{config::Config, shutdown::Shutdown};

fn help() -> String {
    let mut s = String::from(
        "marketplace: a saga-orchestrated order marketplace over RabbitMQ\n\n\
         Usage: marketplace [TARGET]\n\nTargets:\n",
    );
    for (name, what) in Target::documented() {
        s.push_str(&format!("  {name:<12} {what}\n"));
    }
    s.push_str("  healthcheck  exit 0 if the process on HTTP_ADDR is ready (for container health checks)\n");
    s.push_str("  audit [--grace-ms N]\n               check the five invariants across every service's store; prints JSON,\n               exit 0 if they hold, 1 if not, 2 if a store cannot be read\n");
    s.push_str("  analytics rebuild\n               recompute the sales figures from the orders read model (DATA_DIR or\n               DATABASE_URL); safe while the marketplace runs\n");
    s.push_str("  loadgen ...  drive a running marketplace over HTTP and report throughput, latency and\n               messages per order (marketplace loadgen --help)\n");
    s.push_str("  import FILE.csv ...\n               place the purchases of a CSV file through a running marketplace, once\n               each however often it runs (marketplace import --help)\n");
    s.push_str("\nEnvironment:\n");
    for (name, default, what) in common::config::VARIABLES {
        s.push_str(&format!("  {name:<26} {what} [default: {default}]\n"));
    }
    s
}

fn main() -> ExitCode {
    // Before any TLS connection (broker, database, collector): one crypto provider.
    common::tls::install_crypto_provider();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let target = match args.as_slice() {
        [] => "all".to_string(),
        [flag] if flag == "-h" || flag == "--help" || flag == "help" => {
            print!("{}", help());
            return ExitCode::SUCCESS;
        }
        [cmd] if cmd == "healthcheck" => return healthcheck(),
        [cmd, rest @ ..] if cmd == "audit" => return audit(rest),
        [cmd, sub] if cmd == "analytics" && sub == "rebuild" => return rebuild_analytics(),
        [cmd, rest @ ..] if cmd == "loadgen" => return marketplace::loadgen::main(rest),
        [cmd, rest @ ..] if cmd == "import" => return marketplace::import::main(rest),
        [t] if Target::parse(t).is_some() => t.clone(),
        _ => {
            eprintln!("marketplace: unknown arguments {args:?}\n\n{}", help());
            return ExitCode::from(2);
        }
    };
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("marketplace: {e}");
            return ExitCode::from(2);
        }
    };
    // Tracing: the standard OTEL_* variables; none set means nothing exported.
    let tracing = match common::telemetry::Settings::from_env() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("marketplace: {e}");
            return ExitCode::from(2);
        }
    };
    common::telemetry::init(&format!("marketplace-{target}"));
    common::telemetry::install(tracing);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let outcome = runtime.block_on(run(&target, config));
    // Exports the spans still queued (bounded by the export timeout).
    common::telemetry::shutdown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "marketplace stopped with an error");
            eprintln!("marketplace: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(target: &str, config: Config) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    common::shutdown::cancel_on_signal(shutdown.clone());
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding HTTP_ADDR {}", config.http_addr))?;
    marketplace::serve(target, config, listener, shutdown).await
}

/// `marketplace audit [--grace-ms N]`: the invariant audit of `GET /api/audit`, run against
/// the stores the environment points at (DATA_DIR or DATABASE_URL).
fn audit(args: &[String]) -> ExitCode {
    let grace_ms = match args {
        [] => marketplace::audit::DEFAULT_GRACE_MS,
        [flag, n] if flag == "--grace-ms" => match n.parse::<i64>() {
            Ok(n) if n >= 0 => n,
            _ => {
                eprintln!(
                    "marketplace audit: --grace-ms takes milliseconds (0 or more), not {n:?}"
                );
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!(
                "marketplace audit: unknown arguments {args:?} (usage: marketplace audit [--grace-ms N])"
            );
            return ExitCode::from(2);
        }
    };
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("marketplace audit: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(marketplace::audit::run(&config, grace_ms)) {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("a report serialises")
            );
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("marketplace audit: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `marketplace analytics rebuild`: the sales figures recomputed from the orders read
/// model, in one transaction (the backend's consumer waits for it).
fn rebuild_analytics() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("marketplace analytics: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let rebuilt = runtime.block_on(async {
        let shutdown = Shutdown::new();
        let db = common::db::Db::open(
            &config,
            Service::Backend.name(),
            &backend::MIGRATIONS,
            &shutdown,
        )
        .await?;
        let counted = backend::analytics::rebuild(&db).await?;
        let summary = backend::api::analytics::summary_of(&db).await?;
        shutdown.cancel();
        anyhow::Ok((counted, summary))
    });
    match rebuilt {
        Ok((counted, summary)) => {
            let report = serde_json::json!({"orders_counted": counted, "summary": summary});
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("a report serialises")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("marketplace analytics rebuild: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `marketplace healthcheck`: asks `/readyz` of the process on HTTP_ADDR. Distroless images
/// have no shell or curl, so container health checks call the binary itself.
fn healthcheck() -> ExitCode {
    use std::io::{Read, Write};
    let Ok(config) = Config::from_env() else {
        return ExitCode::FAILURE;
    };
    let mut addr = config.http_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let timeout = std::time::Duration::from_secs(2);
    let ready = (|| -> std::io::Result<bool> {
        let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        write!(stream, "GET /readyz HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.") && &head[9..12] == b"200")
    })();
    if ready.unwrap_or(false) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
