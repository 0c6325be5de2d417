//! The HTTP/3 front end to end: a real QUIC client, the front's serving core, test h2c
//! workers on Unix sockets, and a fake supervisor on the control socket.

mod common;

use bytes::{Buf, Bytes};
use common::*;
use genro_shared::protocol::Message;
use genro_shared::CLIENT_HEADER;
use http::StatusCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_reaches_a_worker_with_the_client_address() {
    let dir = TempDir::new();
    let worker = Worker::spawn(dir.path("w0.sock"), "w0", WorkerMode::default());
    let front = Front::with_slots(&[&worker.path]).await;
    let mut client = front.client().await;

    let request = client
        .request("GET", "/hello/world?x=1&y=%20")
        .header(CLIENT_HEADER, "6.6.6.6:666")
        .header("x-custom", "kept")
        .body(())
        .unwrap();
    let answer = within("GET", exchange(&mut client.send, request, None))
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "hello from w0");
    // The forged header is gone; the front's carries the QUIC peer address.
    assert_eq!(answer.header("x-client"), client.local_addr().to_string());
    assert_eq!(answer.header("x-authority"), client.authority);
    assert_eq!(answer.header("x-scheme"), "https");
    assert_eq!(answer.header("x-host"), "none");
    assert_eq!(answer.header("x-version"), "HTTP/2.0");
    assert_eq!(answer.header("x-method"), "GET");
    assert_eq!(answer.header("x-target"), "/hello/world?x=1&y=%20");

    // HEAD and an unusual method go through as they are.
    for method in ["HEAD", "DELETE", "PATCH"] {
        let request = client.request(method, "/m").body(()).unwrap();
        let answer = within(method, exchange(&mut client.send, request, None))
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{method}");
        assert_eq!(answer.header("x-method"), method);
        if method == "HEAD" {
            assert!(answer.body.is_empty());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_streams_10_mib_both_ways() {
    const SIZE: usize = 10 << 20;
    const CHUNK: usize = 64 << 10;
    let dir = TempDir::new();
    let worker = Worker::spawn(dir.path("w0.sock"), "w0", WorkerMode::default());
    let front = Front::with_slots(&[&worker.path]).await;
    let mut client = front.client().await;

    let pattern = |i: usize| (i % 251) as u8;
    let request = client.request("POST", "/echo").body(()).unwrap();
    let stream = client.send.send_request(request).await.unwrap();
    let (mut tx, mut rx) = stream.split();
    let sender = tokio::spawn(async move {
        let mut sent = 0;
        while sent < SIZE {
            let chunk: Vec<u8> = (sent..sent + CHUNK).map(pattern).collect();
            tx.send_data(Bytes::from(chunk)).await.unwrap();
            sent += CHUNK;
        }
        tx.finish().await.unwrap();
    });
    let received = within("10 MiB echo", async {
        let response = rx.recv_response().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut received = 0usize;
        while let Some(mut chunk) = rx.recv_data().await.unwrap() {
            while chunk.has_remaining() {
                let part = chunk.chunk();
                for (k, byte) in part.iter().enumerate() {
                    assert_eq!(*byte, pattern(received + k), "byte {}", received + k);
                }
                received += part.len();
                let n = part.len();
                chunk.advance(n);
            }
        }
        received
    })
    .await;
    sender.await.unwrap();
    assert_eq!(received, SIZE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_streams_on_one_connection_spread_over_slots() {
    let dir = TempDir::new();
    let w0 = Worker::spawn(dir.path("w0.sock"), "w0", WorkerMode::default());
    let w1 = Worker::spawn(dir.path("w1.sock"), "w1", WorkerMode::default());
    let front = Front::with_slots(&[&w0.path, &w1.path]).await;
    let client = front.client().await;

    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut send = client.send.clone();
        let request = client
            .request("GET", &format!("/slow?ms=300&i={i}"))
            .body(())
            .unwrap();
        tasks.push(tokio::spawn(async move {
            exchange(&mut send, request, None).await
        }));
    }
    let mut by_worker = std::collections::BTreeMap::<String, usize>::new();
    for task in tasks {
        let answer = within("concurrent GET", task).await.unwrap().unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.text(), "slow");
        *by_worker
            .entry(answer.header("x-worker").to_owned())
            .or_default() += 1;
    }
    assert_eq!(by_worker.values().sum::<usize>(), 50);
    // Least-in-flight: with 50 slow requests at once, both slots get a fair share.
    for (name, n) in &by_worker {
        assert!((15..=35).contains(n), "{name} got {n} of 50: {by_worker:?}");
    }
    // One HTTP/2 connection per slot carried them all.
    assert_eq!(w0.connections.load(Ordering::SeqCst), 1);
    assert_eq!(w1.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_travel_both_ways() {
    let dir = TempDir::new();
    let worker = Worker::spawn(dir.path("w0.sock"), "w0", WorkerMode::default());
    let front = Front::with_slots(&[&worker.path]).await;
    let mut client = front.client().await;

    let request = client.request("POST", "/echo").body(()).unwrap();
    let mut stream = client.send.send_request(request).await.unwrap();
    stream
        .send_data(Bytes::from_static(b"part one, "))
        .await
        .unwrap();
    stream
        .send_data(Bytes::from_static(b"part two"))
        .await
        .unwrap();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "abc123".parse().unwrap());
    trailers.insert("grpc-status", "0".parse().unwrap());
    stream.send_trailers(trailers).await.unwrap();
    stream.finish().await.unwrap();
    let answer = within("echo with trailers", read_answer(&mut stream))
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "part one, part two");
    let trailers = answer.trailers.expect("response trailers");
    assert_eq!(trailers.get("x-checksum").unwrap(), "abc123");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_tiny_frames_does_not_break_the_shared_worker_connection() {
    // h2 closes a whole connection when too many small DATA frames wait unread; the
    // front joins small chunks so one client cannot do that to everyone on the slot.
    const SIZE: usize = 512 << 10;
    let dir = TempDir::new();
    let worker = Worker::spawn(dir.path("w0.sock"), "w0", WorkerMode::default());
    let front = Front::with_slots(&[&worker.path]).await;
    let mut client = front.client().await;

    // Another client's request in flight on the same slot connection.
    let other = front.client().await;
    let mut other_send = other.send.clone();
    let other_request = other.request("GET", "/slow?ms=1500").body(()).unwrap();
    let bystander =
        tokio::spawn(async move { exchange(&mut other_send, other_request, None).await });

    let request = client.request("POST", "/count?ms=500").body(()).unwrap();
    let mut stream = client.send.send_request(request).await.unwrap();
    let piece = Bytes::from(vec![b'z'; 64]);
    for _ in 0..SIZE / 64 {
        stream.send_data(piece.clone()).await.unwrap();
    }
    stream.finish().await.unwrap();
    let answer = within("POST in tiny frames", read_answer(&mut stream))
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), SIZE.to_string());

    let answer = within("bystander", bystander).await.unwrap().unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(worker.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_slots_are_skipped_and_the_request_retried() {
    let dir = TempDir::new();
    // Slot 0: no socket file. Slot 1: a socket file nobody listens on (ECONNREFUSED).
    let missing = dir.path("missing.sock");
    let refused = dir.path("refused.sock");
    drop(std::os::unix::net::UnixListener::bind(&refused).unwrap());
    let worker = Worker::spawn(dir.path("w2.sock"), "w2", WorkerMode::default());
    let front = Front::with_slots(&[&missing, &refused, &worker.path]).await;
    let mut client = front.client().await;

    for i in 0..6 {
        let answer = get(&mut client, &format!("/r{i}")).await;
        assert_eq!(answer.status, StatusCode::OK, "request {i}");
        assert_eq!(answer.header("x-worker"), "w2");
    }
    assert_eq!(worker.requests.load(Ordering::SeqCst), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_are_sent_to_another_worker_with_their_body() {
    let dir = TempDir::new();
    let refusing = Worker::spawn_refusing(dir.path("w0.sock"));
    let worker = Worker::spawn(dir.path("w1.sock"), "w1", WorkerMode::default());
    let front = Front::with_slots(&[&refusing.path, &worker.path]).await;
    let mut client = front.client().await;

    for i in 0..6 {
        let answer = get(&mut client, &format!("/r{i}")).await;
        assert_eq!(answer.status, StatusCode::OK, "GET {i}");
        assert_eq!(answer.header("x-worker"), "w1");
    }
    // A body that went with the refused stream is replayed on the retry.
    let body: Bytes = (0..40_000u32)
        .map(|i| (i % 7) as u8)
        .collect::<Vec<_>>()
        .into();
    for i in 0..8 {
        // In many DATA frames, so the replay has several chunks to go through.
        let request = client.request("POST", "/echo").body(()).unwrap();
        let mut stream = client.send.send_request(request).await.unwrap();
        for piece in body.chunks(1000) {
            stream
                .send_data(Bytes::copy_from_slice(piece))
                .await
                .unwrap();
        }
        stream.finish().await.unwrap();
        let answer = within("POST", read_answer(&mut stream)).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "POST {i}");
        assert!(
            answer.body == body,
            "POST {i}: echoed {} bytes, sent {}; first difference at {:?}",
            answer.body.len(),
            body.len(),
            answer
                .body
                .iter()
                .zip(body.iter())
                .position(|(a, b)| a != b)
        );
    }
    assert_eq!(worker.requests.load(Ordering::SeqCst), 14);
    assert!(
        refusing.requests.load(Ordering::SeqCst) >= 2,
        "the refusing worker was tried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_too_large_to_replay_is_not_retried() {
    let dir = TempDir::new();
    let refusing = Worker::spawn_refusing(dir.path("w0.sock"));
    let front = Front::with_slots(&[&refusing.path]).await;
    let mut client = front.client().await;

    // Everything the client sends is there before the front reads the head, so it all
    // goes with the first attempt; a body over the replay limit makes a refusal final.
    let body = Bytes::from(vec![b'x'; 200_000]);
    let request = client.request("POST", "/echo").body(()).unwrap();
    let answer = within("POST", exchange(&mut client.send, request, Some(body)))
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    // A request without a body is tried MAX_ATTEMPTS (3) times on the only slot.
    let before = refusing.requests.load(Ordering::SeqCst);
    let answer = get(&mut client, "/").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(refusing.requests.load(Ordering::SeqCst) - before, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_goaway_is_followed_by_a_new_connection() {
    // A draining worker (reload, max_requests) closes its connection with GOAWAY; the
    // next connect to the slot's socket reaches its successor. Here every connection
    // is closed after its first response.
    let dir = TempDir::new();
    let mode = WorkerMode {
        goaway_after_first: true,
    };
    let worker = Worker::spawn(dir.path("w0.sock"), "w0", mode);
    let front = Front::with_slots(&[&worker.path]).await;
    let mut client = front.client().await;

    for i in 0..8 {
        let answer = get(&mut client, &format!("/g{i}")).await;
        assert_eq!(answer.status, StatusCode::OK, "request {i}");
    }
    // A GET may run twice (see the next part); it is idempotent, so that is allowed.
    assert!(worker.requests.load(Ordering::SeqCst) >= 8);
    assert!(worker.connections.load(Ordering::SeqCst) >= 2);

    // POSTs racing the GOAWAY: none may run twice. Those the worker certainly did not
    // take are sent again on a new connection; the rest answer 200 or, in the window
    // where hyper cannot tell whether the worker saw the stream, 502.
    worker.seen.lock().unwrap().clear();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let mut send = client.send.clone();
        let request = client
            .request("POST", &format!("/slow?ms={}&id={i}", 20 + i % 7))
            .body(())
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let answer = exchange(&mut send, request, Some(Bytes::from_static(b"x"))).await;
            (i, answer)
        }));
    }
    let mut ok = Vec::new();
    for task in tasks {
        let (i, answer) = within("racing POST", task).await.unwrap();
        let answer = answer.unwrap();
        match answer.status {
            StatusCode::OK => ok.push(i),
            StatusCode::BAD_GATEWAY => {}
            other => panic!("POST {i}: {other}"),
        }
    }
    let seen = worker.seen.lock().unwrap().clone();
    let mut ids: Vec<&str> = seen.iter().map(|t| t.rsplit('=').next().unwrap()).collect();
    ids.sort();
    let unique = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), unique, "a POST ran twice: {seen:?}");
    for i in &ok {
        assert!(
            ids.contains(&i.to_string().as_str()),
            "POST {i} answered but not run"
        );
    }
    assert!(ok.len() >= 30, "only {} of 40 POSTs succeeded", ok.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_worker_reachable_answers_502_and_no_slot_503() {
    let dir = TempDir::new();
    let missing = dir.path("missing.sock");
    let mut front = Front::with_slots(&[&missing]).await;
    let mut client = front.client().await;

    let answer = get(&mut client, "/").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.text(), "Bad Gateway: the worker connection failed\n");
    assert_eq!(answer.header("content-type"), "text/plain; charset=utf-8");

    front.supervisor.send_slots(&[]).await;
    // The new list applies as soon as the front reads it.
    let answer = within("503", async {
        loop {
            let answer = get(&mut client, "/").await;
            if answer.status != StatusCode::BAD_GATEWAY {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.header("retry-after"), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_header_section_gets_431() {
    let dir = TempDir::new();
    let worker = Worker::spawn(dir.path("w0.sock"), "w0", WorkerMode::default());
    let options = Options {
        env: vec![("GENRO_ASGI_HTTP3_MAX_FIELD_SECTION_SIZE", "1k".into())],
        ..Options::default()
    };
    let front = Front::with_slots_and(&[&worker.path], options).await;
    // An h3 client that knows the server's SETTINGS refuses to send this itself: send it
    // before the client reads them (its connection is not driven yet).
    let (mut client, driver) = Client::connect_undriven(front.addr, &front.cert).await;
    let request = client
        .request("GET", "/big")
        .header("x-big", "b".repeat(4000))
        .body(())
        .unwrap();
    let mut stream = client.send.send_request(request).await.unwrap();
    stream.finish().await.unwrap();
    client.drive(driver);
    let answer = within("431", read_answer(&mut stream)).await.unwrap();
    assert_eq!(answer.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(worker.requests.load(Ordering::SeqCst), 0);

    // The connection is still usable.
    let answer = get(&mut client, "/small").await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_count_requests() {
    let dir = TempDir::new();
    let worker = Worker::spawn(dir.path("w0.sock"), "w0", WorkerMode::default());
    let mut front = Front::with_slots(&[&worker.path]).await;
    let mut client = front.client().await;
    for _ in 0..3 {
        assert_eq!(get(&mut client, "/").await.status, StatusCode::OK);
    }
    within("a heartbeat with 3 served", async {
        loop {
            if let Some(Message::Heartbeat {
                in_flight, served, ..
            }) = front.supervisor.next().await
            {
                if served == 3 {
                    assert_eq!(in_flight, 0);
                    return;
                }
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_sends_goaway_finishes_in_flight_requests_and_exits_0() {
    let dir = TempDir::new();
    let worker = Worker::spawn(dir.path("w0.sock"), "w0", WorkerMode::default());
    let mut front = Front::with_slots(&[&worker.path]).await;
    let mut client = front.client().await;

    // A request in flight when the drain starts.
    let mut send = client.send.clone();
    let slow_request = client.request("GET", "/slow?ms=1000").body(()).unwrap();
    let slow = tokio::spawn(async move { exchange(&mut send, slow_request, None).await });
    within("slow request reaches the worker", async {
        while worker.requests.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    front.supervisor.send(Message::Drain).await;

    // The client learns of the GOAWAY: it stops opening requests on this connection.
    // Probes that beat the GOAWAY are either served or rejected as unprocessed.
    within("GOAWAY", async {
        loop {
            let request = client.request("GET", "/probe").body(()).unwrap();
            match client.send.send_request(request).await {
                Err(err) => {
                    assert!(format!("{err:?}").contains("RemoteClosing"), "{err:?}");
                    return;
                }
                Ok(mut stream) => {
                    stream.finish().await.ok();
                    match read_answer(&mut stream).await {
                        Ok(answer) => assert_eq!(answer.status, StatusCode::OK),
                        Err(err) => assert!(
                            format!("{err:?}").contains("H3_REQUEST_REJECTED")
                                || format!("{err}").contains("H3_REQUEST_REJECTED"),
                            "{err:?}"
                        ),
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // New QUIC connections are refused.
    let endpoint = client_endpoint(&front.cert);
    let refused = within(
        "refused connection",
        endpoint.connect(front.addr, "localhost").unwrap(),
    )
    .await;
    assert!(refused.is_err(), "a new connection during the drain");

    // The request in flight completes.
    let answer = within("slow answer", slow).await.unwrap().unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "slow");

    // The client closes its idle connection; the front exits 0 and hangs up.
    client.quic.close(0u32.into(), b"done");
    drop(client);
    let messages = front.supervisor.until_closed().await;
    assert!(
        messages
            .iter()
            .all(|m| matches!(m, Message::Heartbeat { .. })),
        "{messages:?}"
    );
    assert_eq!(front.exit_code().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_by_the_drain() {
    // A client that keeps its connection open after GOAWAY is closed after a short
    // linger, well before the graceful timeout (10 s here).
    let dir = TempDir::new();
    let worker = Worker::spawn(dir.path("w0.sock"), "w0", WorkerMode::default());
    let front = Front::with_slots(&[&worker.path]).await;
    let mut client = front.client().await;
    assert_eq!(get(&mut client, "/").await.status, StatusCode::OK);

    let started = std::time::Instant::now();
    front.stop.send_replace(true);
    let closed = within("connection closed by the front", client.quic.closed()).await;
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(ref close) if close.error_code == 0x100u32.into()),
        "closed with H3_NO_ERROR: {closed}"
    );
    assert_eq!(front.exit_code().await, 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_on_the_socket_it_is_given_by_fd() {
    // `run` as the binary calls it: its own runtime, the UDP socket by fd number.
    let dir = TempDir::new();
    let worker = Worker::spawn(dir.path("w0.sock"), "w0", WorkerMode::default());
    let options = Options {
        via_run: true,
        ..Options::default()
    };
    let mut front = Front::with_slots_and(&[&worker.path], options).await;
    let mut client = front.client().await;
    let answer = get(&mut client, "/via-run").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("x-client"), client.local_addr().to_string());
    drop(client);
    front.supervisor.send(Message::Drain).await;
    assert_eq!(front.exit_code().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_supervisor_drains_and_exits_0() {
    let dir = TempDir::new();
    let worker = Worker::spawn(dir.path("w0.sock"), "w0", WorkerMode::default());
    let front = Front::with_slots(&[&worker.path]).await;
    let Front {
        supervisor, task, ..
    } = front;
    drop(supervisor);
    assert_eq!(within("front exit", task).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_is_a_config_error() {
    let dir = TempDir::new();
    let keyfile = dir.path("nokey.pem");
    std::fs::write(&keyfile, "not a key").unwrap();
    let options = Options {
        env: vec![("GENRO_ASGI_SSL_KEYFILE", keyfile.display().to_string())],
        ..Options::default()
    };
    let front = Front::start(options).await;
    assert_eq!(front.exit_code().await, genro_shared::exit::CONFIG);
}
