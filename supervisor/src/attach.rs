//! `genro-asgi debug attach`: the client of the remote debugger ([`crate::debugger`]).
//! It lists the requests waiting for a debugger in the whole fleet, picks one (`--request`,
//! the only one, or the one the user chooses), and relays the terminal to its pdb session
//! until the session ends. Plain blocking I/O: one connection, one user.

use genro_config::Config;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// What `debug attach` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct Attach {
    /// The request to attach to (else the only one waiting, or a choice).
    pub request: Option<String>,
    /// List the waiting requests and stop.
    pub list: bool,
    /// Wait this long for a request to wait.
    pub wait: Duration,
}

/// Time the server gets to answer a request line.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs `debug attach` against the server of `config`; returns the exit code.
pub fn run(config: &Config, attach: &Attach) -> i32 {
    match attach_to(config, attach) {
        Ok(code) => code,
        Err(why) => {
            eprintln!("genro-asgi debug: {why}");
            1
        }
    }
}

fn attach_to(config: &Config, attach: &Attach) -> Result<i32, String> {
    if !config.debug.enabled {
        return Err(
            "[debug] enabled is false in this configuration: the server runs no debugger".into(),
        );
    }
    let address = address(config)?;
    let secret = config.debug.secret.clone().unwrap_or_default();
    let deadline = Instant::now() + attach.wait;
    let sessions = loop {
        let (answer, _) = ask(address, json!({"secret": secret, "op": "list"}))?;
        let sessions = answer["sessions"].as_array().cloned().unwrap_or_default();
        if !sessions.is_empty() || Instant::now() >= deadline {
            break sessions;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    if sessions.is_empty() {
        println!("no request is waiting for a debugger");
        return Ok(if attach.list { 0 } else { 1 });
    }
    print!("{}", table(&sessions));
    if attach.list {
        return Ok(0);
    }
    let chosen = match &attach.request {
        Some(id) => id.clone(),
        None if sessions.len() == 1 => text(&sessions[0]["request_id"]),
        None => choose(&sessions)?,
    };
    let (answer, reader) = ask(
        address,
        json!({"secret": secret, "op": "attach", "request_id": chosen}),
    )?;
    if answer.get("attached").is_none() {
        return Err(format!("unexpected answer {answer}"));
    }
    relay(reader).map_err(|err| format!("the session ended: {err}"))?;
    Ok(0)
}

/// Where the debugger listens (an unspecified host is reached on loopback).
fn address(config: &Config) -> Result<SocketAddr, String> {
    let host = config.debug.host.trim_matches(['[', ']']);
    let ip: IpAddr = match host {
        "" | "0.0.0.0" => Ipv4Addr::LOCALHOST.into(),
        "::" => Ipv6Addr::LOCALHOST.into(),
        "localhost" => Ipv4Addr::LOCALHOST.into(),
        other => other
            .parse()
            .map_err(|_| format!("[debug] host = {other:?} is not an IP address"))?,
    };
    Ok(SocketAddr::new(ip, config.debug.debug_port))
}

/// Sends one request line; returns the answer's first line and the connection after it.
fn ask(address: SocketAddr, request: Value) -> Result<(Value, BufReader<TcpStream>), String> {
    let unreachable =
        |err: std::io::Error| format!("cannot reach the debugger on {address}: {err}");
    let mut stream =
        TcpStream::connect_timeout(&address, Duration::from_secs(5)).map_err(unreachable)?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .map_err(unreachable)?;
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(unreachable)?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(unreachable)?;
    let answer: Value = serde_json::from_str(&line)
        .map_err(|_| format!("the debugger on {address} answered {line:?}"))?;
    if let Some(error) = answer.get("error") {
        return Err(text(error));
    }
    reader
        .get_ref()
        .set_read_timeout(None)
        .map_err(unreachable)?;
    Ok((answer, reader))
}

fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

/// The waiting requests, numbered.
fn table(sessions: &[Value]) -> String {
    let mut out = format!(
        "{:>3}  {:<16}  {:>4}  {:>8}  {:>7}  {:<32}  {}\n",
        "#", "request id", "slot", "pid", "age", "request", "exception"
    );
    for (n, s) in sessions.iter().enumerate() {
        let request = format!("{} {}", text(&s["method"]), text(&s["path"]));
        let attached = if s["attached"].as_bool() == Some(true) {
            " (a debugger is attached)"
        } else {
            ""
        };
        out.push_str(&format!(
            "{:>3}  {:<16}  {:>4}  {:>8}  {:>6.1}s  {:<32}  {}{attached}\n",
            n + 1,
            text(&s["request_id"]),
            s["slot"].as_u64().unwrap_or_default(),
            s["pid"].as_u64().unwrap_or_default(),
            s["age"].as_f64().unwrap_or(0.0),
            request,
            text(&s["exception"]),
        ));
    }
    out
}

/// Asks the user which request to attach to.
fn choose(sessions: &[Value]) -> Result<String, String> {
    print!("attach to which request? [1-{}] ", sessions.len());
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|err| format!("reading the choice: {err}"))?;
    line.trim()
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|n| sessions.get(n))
        .map(|s| text(&s["request_id"]))
        .ok_or_else(|| {
            format!(
                "{:?} is not a number from 1 to {}",
                line.trim(),
                sessions.len()
            )
        })
}

/// The terminal and the session, until the server ends it: what the user types goes to
/// pdb (the end of input ends the session), what pdb writes is shown as it comes (its
/// prompt has no newline, so each read is flushed).
fn relay(mut reader: BufReader<TcpStream>) -> std::io::Result<()> {
    let mut to_server = reader.get_ref().try_clone()?;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut to_server);
        let _ = to_server.shutdown(std::net::Shutdown::Write);
    });
    let mut stdout = std::io::stdout().lock();
    let mut buf = [0u8; 8192];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        stdout.write_all(&buf[..n])?;
        stdout.flush()?;
    }
}
