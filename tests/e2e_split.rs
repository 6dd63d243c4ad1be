//! The same system with every target in its own process, as containers would run it.

mod support;

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use support::*;

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_in_separate_processes_run_every_outcome_and_stop_on_sigterm() {
    let vhost = Vhost::create();
    let data = tempfile::tempdir().unwrap();
    let mut processes = Vec::new();
    let mut backend_url = String::new();
    for target in [
        "order",
        "payment",
        "inventory",
        "delivery",
        "dead-letter",
        "manager",
        "backend",
    ] {
        let port = free_port();
        let env = environment(
            &vhost,
            data.path(),
            &[("HTTP_ADDR", format!("127.0.0.1:{port}"))],
        );
        let log = std::fs::File::create(data.path().join(format!("{target}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_marketplace"))
            .arg(target)
            .envs(env)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("marketplace binary starts");
        processes.push((target, Process(child)));
        let url = format!("http://127.0.0.1:{port}");
        if target == "backend" {
            backend_url = url;
        } else {
            wait_for(
                || async {
                    client()
                        .get(format!("{url}/readyz"))
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200)
                },
                &format!("{target} ready"),
            )
            .await;
        }
    }
    wait_until_ready(&backend_url).await;
    run_scenarios(&backend_url).await;

    for (target, mut p) in processes {
        let pid = p.0.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let mut exited = None;
        for _ in 0..150 {
            if let Some(status) = p.0.try_wait().unwrap() {
                exited = Some(status);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let status =
            exited.unwrap_or_else(|| panic!("{target} did not exit within 15 s of SIGTERM"));
        assert!(status.success(), "{target} exited with {status}");
    }
}
