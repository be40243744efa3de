//! Runs the `sse-contract-tests` service protocol on 127.0.0.1 (see `changefeed_client::contract`):
//! `changefeed-contract-service [--port N]` (default 8000), until the harness sends `DELETE /`.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut port: u16 = 8000;
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--port", Some(value)) => match value.parse() {
                Ok(value) => port = value,
                Err(_) => return usage(&format!("--port {value:?} is not a port number")),
            },
            _ => return usage(&format!("unexpected argument {arg:?}")),
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("changefeed-contract-service: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    eprintln!("changefeed-contract-service: listening on http://{addr}");
    match runtime.block_on(changefeed_client::contract::run_contract_service(addr)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("changefeed-contract-service: {addr}: {error}");
            ExitCode::from(1)
        }
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!(
        "changefeed-contract-service: {problem} (usage: changefeed-contract-service [--port N])"
    );
    ExitCode::from(2)
}
