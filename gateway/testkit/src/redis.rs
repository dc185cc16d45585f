//! A `redis-server` of the test's own: on a free port of 127.0.0.1, no
//! persistence, never the machine's 6379; stopped to test an outage,
//! restarted (empty) on the same port. Read with plain RESP, so the kit
//! needs no Redis client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::{free_port, ChildGuard};

/// How long a start waits for the server to answer.
const START_WAIT: Duration = Duration::from_secs(10);

pub struct RedisServer {
    pub port: u16,
    proc: Option<ChildGuard>,
    /// Arguments beyond the port and the no-persistence defaults (kept
    /// for restarts).
    extra: Vec<String>,
    /// How it is reached for [`RedisServer::command`] (`redis-cli`
    /// arguments for a TLS port; none for plain RESP).
    tls_cli: Option<Vec<String>>,
}

impl RedisServer {
    /// Starts one (the Debian package's `redis-server`, which
    /// `scripts/test.sh` installs); another port if the first was taken
    /// meanwhile.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// One with these extra `redis-server` arguments (`--requirepass`,
    /// `--cluster-enabled yes`, `--replicaof`, ...).
    pub fn start_with(extra: &[&str]) -> Self {
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(),
                proc: None,
                extra: extra.iter().map(|a| a.to_string()).collect(),
                tls_cli: None,
            };
            if server.try_start() {
                return server;
            }
        }
        panic!("cannot start redis-server (installed by scripts/test.sh)");
    }

    /// One that speaks only TLS on its port, with this server certificate
    /// and key (PEM files), clients checked against `ca` when
    /// `client_certs` (`tls-auth-clients`); `extra` as for
    /// [`RedisServer::start_with`]. [`RedisServer::command`] then goes
    /// through `redis-cli --tls` with `cli_auth` (its `--cacert`, `--cert`,
    /// `--key` arguments).
    pub fn start_tls(
        cert: &str,
        key: &str,
        ca: &str,
        client_certs: bool,
        cli_auth: &[&str],
        extra: &[&str],
    ) -> Self {
        for _ in 0..5 {
            let port = free_port();
            let mut args: Vec<String> = vec![
                "--tls-port".into(),
                port.to_string(),
                "--port".into(),
                "0".into(),
                "--tls-cert-file".into(),
                cert.into(),
                "--tls-key-file".into(),
                key.into(),
                "--tls-ca-cert-file".into(),
                ca.into(),
                "--tls-auth-clients".into(),
                if client_certs { "yes" } else { "no" }.into(),
            ];
            args.extend(extra.iter().map(|a| a.to_string()));
            let mut cli: Vec<String> = vec!["--tls".into()];
            cli.extend(cli_auth.iter().map(|a| a.to_string()));
            let mut server = RedisServer {
                port,
                proc: None,
                extra: args,
                tls_cli: Some(cli),
            };
            if server.try_start() {
                return server;
            }
        }
        panic!("cannot start redis-server with TLS");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (an outage; its data is lost).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts it again, empty, on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let what = format!("redis-server to restart on port {}", self.port);
        crate::eventually_blocking(START_WAIT, what, || self.try_start());
    }

    fn try_start(&mut self) -> bool {
        let mut command = Command::new("redis-server");
        if self.tls_cli.is_none() {
            command.args(["--port", &self.port.to_string()]);
        }
        // A replica's full sync still writes a file: in the temp dir, never
        // in the test's working directory.
        let dir = std::env::temp_dir();
        let file = format!("ringway-test-{}.rdb", self.port);
        let child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(["--dbfilename", &file])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (installed by scripts/test.sh)");
        let mut guard = ChildGuard::new(child);
        // Answering, or exited (most likely the port was taken meanwhile).
        let answering = crate::poll_until_blocking(START_WAIT, || {
            if guard.try_wait().is_some() {
                return Some(false);
            }
            let answer = self.command(&["PING"]);
            // A server with a password answers NOAUTH: it is up.
            let up = answer.as_deref() == Some("+PONG")
                || answer.as_deref().is_some_and(|a| a.starts_with("-NOAUTH"))
                || answer.as_deref() == Some("PONG");
            up.then_some(true)
        });
        if answering == Some(true) {
            self.proc = Some(guard);
            return true;
        }
        false
    }

    /// One command over RESP; the first line of the answer (a bulk
    /// string's value; `$-1` for a nil one). `None` if it does not answer.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        if let Some(cli) = &self.tls_cli {
            return cli_command(self.port, cli, args);
        }
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
        }
        stream.write_all(req.as_bytes()).ok()?;
        let mut buf = vec![0u8; 1 << 16];
        let n = stream.read(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let mut lines = text.split("\r\n");
        let first = lines.next()?.to_owned();
        if first.starts_with('$') && first != "$-1" {
            return lines.next().map(str::to_owned);
        }
        Some(first)
    }

    /// The value of a string key; `None` when it has none.
    pub fn get(&self, key: &str) -> Option<String> {
        self.command(&["GET", key]).filter(|v| v != "$-1")
    }
}

/// One command through `redis-cli` (a TLS port): its first output line.
fn cli_command(port: u16, cli: &[String], args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(cli)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let first = text.lines().next()?.to_owned();
    (!first.is_empty()).then_some(first)
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A command through `redis-cli` on a plain port: its output, one line
/// per element (`ROLE`, `INFO`, `CLUSTER INFO`, ...).
pub fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A directory of the test's own for servers' files, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "ringway-{what}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }

    fn file(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A Redis Cluster of the test's own: `masters` masters with `replicas`
/// replicas each, the slots spread by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _dir: TempDir,
}

impl RedisCluster {
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        let dir = TempDir::new("redis-cluster");
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|i| {
                let conf = dir.file(&format!("nodes-{i}.conf"));
                // The cluster bus on a free port of its own (by default the
                // port + 10000, out of range for a high free port).
                let bus = free_port().to_string();
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-port",
                    &bus,
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run redis-cli --cluster create");
        assert!(status.success(), "redis-cli --cluster create failed");
        let cluster = RedisCluster { nodes, _dir: dir };
        crate::eventually_blocking(START_WAIT, "the Redis Cluster to be ok", || {
            cluster.nodes.iter().all(|n| {
                cli(n.port, &["CLUSTER", "INFO"])
                    .is_some_and(|info| info.contains("cluster_state:ok"))
            })
        });
        cluster
    }

    /// `redis://` URLs of every node (any is a seed).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Ringway's flags for this cluster.
    pub fn flags(&self) -> Vec<String> {
        let mut flags = vec!["--redis-mode".to_owned(), "cluster".to_owned()];
        for url in self.urls() {
            flags.push("--redis-url".into());
            flags.push(url);
        }
        flags
    }

    /// The nodes that are masters now.
    pub fn masters(&self) -> Vec<&RedisServer> {
        self.nodes
            .iter()
            .filter(|n| cli(n.port, &["ROLE"]).is_some_and(|r| r.starts_with("master")))
            .collect()
    }

    /// Keys held by each master now.
    pub fn keys_per_master(&self) -> Vec<u64> {
        self.masters()
            .iter()
            .map(|n| {
                cli(n.port, &["DBSIZE"])
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0)
            })
            .collect()
    }
}

/// A primary, its replica and a Sentinel watching them (quorum 1), each
/// on a free port: a failover takes about two seconds after the primary
/// stops.
pub struct RedisSentinel {
    pub primary: RedisServer,
    pub replica: RedisServer,
    pub sentinel_port: u16,
    pub master_name: &'static str,
    sentinel: ChildGuard,
    _dir: TempDir,
}

impl RedisSentinel {
    pub fn start() -> RedisSentinel {
        let dir = TempDir::new("redis-sentinel");
        let primary = RedisServer::start();
        let primary_port = primary.port.to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary_port]);
        crate::eventually_blocking(START_WAIT, "the replica to sync", || {
            cli(replica.port, &["INFO", "replication"])
                .is_some_and(|info| info.contains("master_link_status:up"))
        });
        let master_name = "ringway-test";
        let sentinel_port = free_port();
        let conf = dir.file("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel_port}\nbind 127.0.0.1\nprotected-mode no\n\
                 sentinel monitor {master_name} 127.0.0.1 {primary_port} 1\n\
                 sentinel down-after-milliseconds {master_name} 1000\n\
                 sentinel failover-timeout {master_name} 5000\n"
            ),
        )
        .expect("write sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server --sentinel");
        let sentinel = ChildGuard::new(child);
        let set = RedisSentinel {
            primary,
            replica,
            sentinel_port,
            master_name,
            sentinel,
            _dir: dir,
        };
        crate::eventually_blocking(START_WAIT, "the Sentinel to know the primary", || {
            set.primary_port() == Some(set.primary.port)
        });
        set
    }

    /// The port of the primary the Sentinel names now.
    pub fn primary_port(&self) -> Option<u16> {
        let answer = cli(
            self.sentinel_port,
            &["SENTINEL", "get-master-addr-by-name", self.master_name],
        )?;
        answer.lines().nth(1)?.trim().parse().ok()
    }

    /// Ringway's flags for this set.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--redis-mode".into(),
            "sentinel".into(),
            "--redis-url".into(),
            format!("redis://127.0.0.1:{}", self.sentinel_port),
            "--redis-sentinel-master".into(),
            self.master_name.into(),
        ]
    }

    /// Whether the Sentinel process still runs.
    pub fn sentinel_alive(&mut self) -> bool {
        self.sentinel.try_wait().is_none()
    }
}
