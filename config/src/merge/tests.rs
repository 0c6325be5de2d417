use super::*;
use crate::ini::parse_ini;
use crate::layers::parse_set_flag;
use crate::tomlfile::parse_toml;

/// The reference file from the core issue, also loaded by the end-to-end tests.
const SAMPLE_INI: &str = include_str!("../../../tests/data/reference.ini");

const SAMPLE_TOML: &str = r#"[server]
host = "0.0.0.0"
port = 8000
workers = 4
debug = false
[ssl]
enabled = false
certfile = "/path/to/cert.pem"
keyfile = "/path/to/key.pem"
[logging]
level = "INFO"
format = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
file = "/var/log/app.log"
[metrics]
enabled = true
endpoint = "/metrics"
export_port = 9090
[watchdog]
enabled = true
interval = 30           # check every 30s
timeout = 60.0
critical = 300
[errors]
show_traceback = false
notify_critical = true
notify_webhook = "https://..."
[debug]
enabled = false
remote_pdb = false
debug_port = 8001
allowed_ips = ["127.0.0.1"]
secret = "xxxxx"
[application]
name = "myapp"
secret_key = "xxxxx"
"#;

const CWD: &str = "/work/here";

type Vars<'a> = &'a [(&'a str, &'a str)];

fn ini(text: &str) -> Result<RawLayer, ConfigError> {
    parse_ini(text, Path::new("conf/server.ini"))
}

fn env(vars: &[(&str, &str)]) -> RawLayer {
    parse_env(vars.iter().map(|(k, v)| (k.to_string(), v.to_string()))).expect("valid env")
}

fn run(file: &str, vars: &[(&str, &str)], flags: &[Override]) -> Result<Loaded, String> {
    let file = ini(file).map_err(|e| e.to_string())?;
    let cli = parse_overrides(flags).map_err(|e| e.to_string())?;
    merge(Some(file), env(vars), cli, Path::new(CWD), test_cpus).map_err(|e| e.to_string())
}

/// The machine of these tests: 3 CPUs.
fn test_cpus() -> CpuBudget {
    CpuBudget {
        cpus: 3,
        reason: "cgroup v2 cpu.max 300000/100000 at /sys/fs/cgroup/t; affinity 8 CPUs".into(),
    }
}

/// For merges with no `auto`: the machine is not looked at.
fn unasked() -> CpuBudget {
    panic!("the CPUs were looked up without an auto value")
}

#[test]
fn sample_ini_loads_unchanged() {
    let loaded = run(SAMPLE_INI, &[], &[]).expect("sample loads");
    let c = &loaded.config;
    assert_eq!(c.server.host, "0.0.0.0");
    assert_eq!(c.server.port, 8000);
    assert_eq!(c.server.workers, 4);
    assert!(!c.server.debug);
    assert!(!c.ssl.enabled);
    assert_eq!(
        c.ssl.certfile.as_deref(),
        Some(Path::new("/path/to/cert.pem"))
    );
    assert_eq!(
        c.ssl.keyfile.as_deref(),
        Some(Path::new("/path/to/key.pem"))
    );
    assert_eq!(c.logging.level, LogLevel::Info);
    assert_eq!(
        c.logging.format,
        "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
    );
    assert_eq!(
        c.logging.file.as_deref(),
        Some(Path::new("/var/log/app.log"))
    );
    assert!(c.metrics.enabled);
    assert_eq!(c.metrics.endpoint, "/metrics");
    assert_eq!(c.metrics.export_port, 9090);
    assert!(c.watchdog.enabled);
    assert_eq!(c.watchdog.interval, Duration::from_secs(30));
    assert_eq!(c.watchdog.timeout, Duration::from_secs(60));
    assert_eq!(c.watchdog.critical, Duration::from_secs(300));
    assert!(!c.errors.show_traceback);
    assert!(c.errors.notify_critical);
    assert_eq!(c.errors.notify_webhook.as_deref(), Some("https://..."));
    assert!(!c.debug.enabled);
    assert_eq!(c.debug.debug_port, 8001);
    assert_eq!(c.debug.allowed_ips, ["127.0.0.1"]);
    assert_eq!(c.debug.secret.as_deref(), Some("xxxxx"));
    assert_eq!(c.application.name, "myapp");
    assert_eq!(c.application.secret_key.as_deref(), Some("xxxxx"));
    assert_eq!(c.application.app_dir, Path::new("/work/here/conf"));
    assert_eq!(c.limits.max_header_size, 64 * 1024);
    assert_eq!(c.limits.max_body_size, 100 * 1024 * 1024);
    assert_eq!(c.server.event_loop, LoopKind::Auto);
    assert_eq!(c.server.proxy_protocol, ProxyProtocol::Off);
    assert_eq!(loaded.file.as_deref(), Some(Path::new("conf/server.ini")));
    assert_eq!(
        loaded.sources.get("watchdog.interval"),
        Some(&Source::File {
            path: "conf/server.ini".into(),
            line: Some(20)
        })
    );
    assert_eq!(loaded.sources.get("server.backlog"), Some(&Source::Default));
}

#[test]
fn toml_equivalent_gives_same_config() {
    let from_ini = run(SAMPLE_INI, &[], &[]).expect("ini");
    let toml = parse_toml(SAMPLE_TOML, Path::new("conf/server.toml")).expect("toml parses");
    let from_toml = merge(
        Some(toml),
        RawLayer::default(),
        RawLayer::default(),
        Path::new(CWD),
        unasked,
    )
    .expect("toml");
    assert_eq!(from_toml.config, from_ini.config);
    assert_eq!(
        from_toml.sources.get("server.port"),
        Some(&Source::File {
            path: "conf/server.toml".into(),
            line: Some(3)
        })
    );
}

#[test]
fn defaults_without_file() {
    let loaded = merge(
        None,
        RawLayer::default(),
        RawLayer::default(),
        Path::new(CWD),
        unasked,
    )
    .expect("defaults");
    let c = &loaded.config;
    assert_eq!(
        (c.server.host.as_str(), c.server.port, c.server.workers),
        ("127.0.0.1", 8000, 1)
    );
    assert_eq!(c.server.backlog, 1024);
    assert_eq!(c.server.graceful_timeout, Duration::from_secs(30));
    assert_eq!(c.server.keep_alive_timeout, Duration::from_secs(5));
    assert_eq!(c.server.run_dir, None);
    assert_eq!(c.server.threads, 1);
    assert_eq!(c.limits.max_concurrency, 1000);
    assert_eq!(c.ssl.min_version, TlsVersion::Tls12);
    assert_eq!(
        c.logging.format,
        "%(asctime)s %(levelname)s %(name)s %(message)s"
    );
    assert_eq!(c.logging.file, None);
    assert_eq!(c.errors.notify_webhook, None);
    assert_eq!(c.application.app_dir, Path::new(CWD));
    assert_eq!(c.application.lifespan, Lifespan::Auto);
    assert_eq!(c.ssl.keyfile_password, None);
    assert_eq!(loaded.file, None);
    assert_eq!(loaded.sources.len(), SCHEMA.len());
    assert!(loaded.sources.values().all(|s| *s == Source::Default));
}

#[test]
fn config_json_round_trips_and_matches_schema_names() {
    let loaded = run(SAMPLE_INI, &[], &[]).expect("sample loads");
    let json = serde_json::to_value(&loaded.config).expect("serializes");
    for def in SCHEMA {
        assert!(
            json[def.section].get(def.key).is_some(),
            "{} missing from JSON",
            def.full_name()
        );
    }
    let fields: usize = json
        .as_object()
        .map(|o| {
            o.values()
                .filter_map(|s| s.as_object())
                .map(|s| s.len())
                .sum()
        })
        .unwrap_or(0);
    assert_eq!(fields, SCHEMA.len());
    let back: Config = serde_json::from_value(json).expect("deserializes");
    assert_eq!(back, loaded.config);
}

#[test]
fn precedence_file_env_cli() {
    let file = "[server]\nport = 7000\nworkers = 2\nhost = 0.0.0.0\n";
    let vars = [
        ("GENRO_ASGI_SERVER_PORT", "8001"),
        ("GENRO_ASGI_SERVER_WORKERS", "3"),
        ("HOME", "/x"),
    ];
    let flags = [
        Override::new("server.port", "9000", "--port"),
        parse_set_flag("server.threads=4").expect("valid flag"),
    ];
    let loaded = run(file, &vars, &flags).expect("loads");
    let c = &loaded.config;
    assert_eq!(
        (
            c.server.port,
            c.server.workers,
            c.server.host.as_str(),
            c.server.threads
        ),
        (9000, 3, "0.0.0.0", 4)
    );
    let cases = [
        ("server.port", Source::Flag("--port".into())),
        (
            "server.threads",
            Source::Flag("--set server.threads=4".into()),
        ),
        (
            "server.workers",
            Source::Env("GENRO_ASGI_SERVER_WORKERS".into()),
        ),
        (
            "server.host",
            Source::File {
                path: "conf/server.ini".into(),
                line: Some(4),
            },
        ),
        ("server.debug", Source::Default),
    ];
    for (key, source) in cases {
        assert_eq!(loaded.sources.get(key), Some(&source), "{key}");
    }
}

#[test]
fn paths_resolve_against_their_source() {
    let file = "[ssl]\ncertfile = certs/cert.pem\nkeyfile = ./key.pem\n[application]\napp_dir = ../src\n[logging]\nfile = /abs/log\n";
    let vars = [("GENRO_ASGI_SSL_CA_CERTS", "ca.pem")];
    let flags = [Override::new("server.run_dir", "run", "--run-dir")];
    let c = run(file, &vars, &flags).expect("loads").config;
    assert_eq!(
        c.ssl.certfile.as_deref(),
        Some(Path::new("/work/here/conf/certs/cert.pem"))
    );
    assert_eq!(
        c.ssl.keyfile.as_deref(),
        Some(Path::new("/work/here/conf/key.pem"))
    );
    assert_eq!(c.application.app_dir, Path::new("/work/here/conf/../src"));
    assert_eq!(c.logging.file.as_deref(), Some(Path::new("/abs/log")));
    assert_eq!(
        c.ssl.ca_certs.as_deref(),
        Some(Path::new("/work/here/ca.pem"))
    );
    assert_eq!(
        c.server.run_dir.as_deref(),
        Some(Path::new("/work/here/run"))
    );
}

#[test]
fn every_boolean_spelling() {
    let cases = [
        ("true", true),
        ("True", true),
        ("yes", true),
        ("YES", true),
        ("on", true),
        ("On", true),
        ("1", true),
        ("false", false),
        ("FALSE", false),
        ("no", false),
        ("No", false),
        ("off", false),
        ("OFF", false),
        ("0", false),
    ];
    for (text, want) in cases {
        let c = run(&format!("[server]\ndebug = {text}\n"), &[], &[])
            .expect(text)
            .config;
        assert_eq!(c.server.debug, want, "{text}");
    }
}

#[test]
fn value_errors_name_origin_key_and_expectation() {
    let cases: &[(&str, Vars, &[Override], &str)] = &[
        ("[server]\nhost = x\nport = 80a\n", &[], &[], "conf/server.ini:3: [server] port = \"80a\": expected an integer between 0 and 65535"),
        ("[server]\nport = 70000\n", &[], &[], "conf/server.ini:2: [server] port = \"70000\": expected an integer between 0 and 65535"),
        ("[server]\nworkers = 0\n", &[], &[], "conf/server.ini:2: [server] workers = \"0\": expected an integer between 1 and 512, or auto (the CPUs this process may use)"),
        ("[server]\nworkers = automatic\n", &[], &[], "conf/server.ini:2: [server] workers = \"automatic\": expected an integer between 1 and 512, or auto (the CPUs this process may use)"),
        ("", &[("GENRO_ASGI_SERVER_WORKERS", "auto-ish")], &[], "environment variable GENRO_ASGI_SERVER_WORKERS: [server] workers = \"auto-ish\": expected an integer between 1 and 512, or auto (the CPUs this process may use)"),
        ("", &[], &[Override { key: "server.workers".into(), value: "-2".into(), origin: "--workers".into() }], "--workers: [server] workers = \"-2\": expected an integer between 1 and 512, or auto (the CPUs this process may use)"),
        ("[server]\nloop = trio\n", &[], &[], "conf/server.ini:2: [server] loop = \"trio\": expected one of auto, asyncio, uvloop"),
        ("[server]\nproxy_protocol = v3\n", &[], &[], "conf/server.ini:2: [server] proxy_protocol = \"v3\": expected one of off, v1, v2, auto"),
        ("[logging]\nlevel = verbose\n", &[], &[], "conf/server.ini:2: [logging] level = \"verbose\": expected one of TRACE, DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("[server]\ndebug = maybe\n", &[], &[], "conf/server.ini:2: [server] debug = \"maybe\": expected a boolean (true/false, yes/no, on/off, 1/0)"),
        ("[limits]\nmax_header_size = 1k\n", &[], &[], "conf/server.ini:2: [limits] max_header_size = \"1k\": expected a size in bytes (e.g. 65536, 64k, 100m, 1g) between 8 KiB and 16 MiB"),
        ("[application]\napp = main\n", &[], &[], "conf/server.ini:2: [application] app = \"main\": expected module:attribute, e.g. myproject.main:app"),
        ("[metrics]\nendpoint = metrics\n", &[], &[], "conf/server.ini:2: [metrics] endpoint = \"metrics\": expected a URL path starting with '/'"),
        ("[errors]\nnotify_webhook = example.com\n", &[], &[], "conf/server.ini:2: [errors] notify_webhook = \"example.com\": expected an http:// or https:// URL"),
        ("", &[("GENRO_ASGI_SERVER_PORT", "x")], &[], "environment variable GENRO_ASGI_SERVER_PORT: [server] port = \"x\": expected an integer between 0 and 65535"),
        ("", &[], &[Override { key: "server.port".into(), value: "x".into(), origin: "--port".into() }], "--port: [server] port = \"x\": expected an integer between 0 and 65535"),
        ("", &[], &[Override { key: "server.prot".into(), value: "1".into(), origin: "--set server.prot=1".into() }], "--set server.prot=1: unknown key server.prot (did you mean server.port?)"),
        // an overridden bad file value is still an error
        ("[server]\nport = bad\n", &[("GENRO_ASGI_SERVER_PORT", "1")], &[], "conf/server.ini:2: [server] port = \"bad\": expected an integer between 0 and 65535"),
    ];
    for (file, vars, flags, want) in cases {
        assert_eq!(
            run(file, vars, flags).map(|_| ()),
            Err(want.to_string()),
            "{file:?}"
        );
    }
}

#[test]
fn cross_key_rules() {
    let cases: &[(&str, Vars, Option<&str>)] = &[
        ("[ssl]\nenabled = true\n", &[], Some("conf/server.ini:2: [ssl] enabled = true requires ssl.certfile and ssl.keyfile to be set")),
        ("[ssl]\nenabled = true\ncertfile = c.pem\n", &[], Some("conf/server.ini:2: [ssl] enabled = true requires ssl.keyfile to be set")),
        ("[ssl]\nenabled = true\ncertfile = c.pem\nkeyfile = k.pem\n", &[], None),
        ("", &[("GENRO_ASGI_ERRORS_SHOW_TRACEBACK", "true")], Some("environment variable GENRO_ASGI_ERRORS_SHOW_TRACEBACK: [errors] show_traceback = true requires [server] debug = true (tracebacks are only shown in debug mode)")),
        ("[server]\ndebug = on\n[errors]\nshow_traceback = yes\n", &[], None),
        ("[debug]\nenabled = true\nsecret = s3\n", &[], Some("conf/server.ini:2: [debug] enabled = true requires [server] debug = true (the remote debugger lets whoever attaches run code in the app's frames: a development tool, never for production)")),
        ("[server]\ndebug = true\n[debug]\nenabled = true\n", &[], Some("conf/server.ini:4: [debug] enabled = true requires [debug] secret (GENRO_ASGI_DEBUG_SECRET): `genro-asgi debug attach` must send it")),
        ("[server]\ndebug = true\n[debug]\nenabled = true\n", &[("GENRO_ASGI_DEBUG_SECRET", "s3")], None),
        ("[watchdog]\ncritical = 10\n", &[], Some("conf/server.ini:2: [watchdog] critical = 10 must be >= [watchdog] timeout = 60 (default)")),
        ("[watchdog]\ncritical = 60\n", &[], None),
        ("[websocket]\ndrain_grace = 40\n", &[], Some("conf/server.ini:2: [websocket] drain_grace = 40 must be <= [server] graceful_timeout = 30 (default)")),
        ("[server]\ngraceful_timeout = 60\n[websocket]\ndrain_grace = 40\n", &[], None),
        ("[server]\ngraceful_timeout = 1\n", &[], None),
        ("[errors]\nnotify_critical = true\n", &[], Some("conf/server.ini:2: [errors] notify_critical = true requires [errors] notify_webhook = an http(s) URL to post to")),
        ("[errors]\nnotify_critical = true\nnotify_webhook = http://127.0.0.1:9/x\n", &[], None),
        ("[server]\nproxy_protocol = v2\nforwarded_allow_ips =\n", &[], Some("conf/server.ini:2: [server] proxy_protocol requires [server] forwarded_allow_ips to name the load balancers that send the header (every other peer is refused)")),
        ("[server]\nproxy_protocol = auto\n", &[], None),
        ("[server]\nproxy_protocol = v1\nuds = /tmp/a.sock\n", &[], Some("conf/server.ini:2: [server] proxy_protocol is read on the TCP listener; with [server] uds the local proxy's forwarding headers name the client")),
        ("[http3]\nenabled = yes\n", &[], Some("conf/server.ini:2: [http3] enabled = true requires [ssl] enabled = true with a certificate (QUIC is always encrypted)")),
    ];
    for (file, vars, want) in cases {
        let got = run(file, vars, &[]).map(|_| ());
        assert_eq!(got, want.map_or(Ok(()), |w| Err(w.to_string())), "{file:?}");
    }
}

#[test]
fn secrets_never_leak() {
    let secret = "hunter2-topsecret";
    let bad_toml = format!("[ssl]\nkeyfile_password = [{{a = \"{secret}\"}}]\n");
    let errors = [
        parse_toml(&bad_toml, Path::new("s.toml"))
            .map(|_| ())
            .map_err(|e| e.to_string()),
        parse_set_flag(&format!("debug.secrte={secret}"))
            .map(|_| ())
            .map_err(|e| e.to_string()),
        parse_env([("GENRO_ASGI_DEBUG_SECRTE".to_string(), secret.to_string())])
            .map(|_| ())
            .map_err(|e| e.to_string()),
        run(
            &format!("[debug]\nsecret = {secret}\n[errors]\nshow_traceback = true\n"),
            &[],
            &[],
        )
        .map(|_| ()),
    ];
    for err in errors {
        let text = err.expect_err("must fail");
        assert!(!text.contains(secret), "{text}");
    }
    let flag = parse_set_flag(&format!("application.secret_key={secret}")).expect("valid");
    assert!(!flag.origin.contains(secret));
    let loaded = run(
        &format!("[debug]\nsecret = {secret}\n"),
        &[("GENRO_ASGI_SSL_KEYFILE_PASSWORD", secret)],
        &[flag],
    )
    .expect("loads");
    assert_eq!(
        loaded.config.application.secret_key.as_deref(),
        Some(secret)
    );
    let rendered = loaded.render();
    assert!(!rendered.contains(secret), "{rendered}");
    assert!(rendered.contains("[debug] secret = ********"));
    assert!(rendered.contains("--set application.secret_key=<secret>"));
}

#[test]
fn render_lines() {
    let flags = [Override::new("server.port", "9000", "--port")];
    let loaded = run(
        "[server]\nworkers = 2\n",
        &[("GENRO_ASGI_SERVER_HOST", "::")],
        &flags,
    )
    .expect("loads");
    let text = loaded.render();
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    let cases = [
        ("[server] port ", "[server] port = 9000 (--port)"),
        (
            "[server] workers ",
            "[server] workers = 2 (conf/server.ini:2)",
        ),
        (
            "[server] host ",
            "[server] host = :: (env GENRO_ASGI_SERVER_HOST)",
        ),
        ("[server] backlog ", "[server] backlog = 1024 (default)"),
        (
            "[server] graceful_timeout ",
            "[server] graceful_timeout = 30 (default)",
        ),
        (
            "[limits] max_header_size ",
            "[limits] max_header_size = 65536 (default)",
        ),
        (
            "[debug] allowed_ips ",
            "[debug] allowed_ips = 127.0.0.1, ::1 (default)",
        ),
        (
            "[ssl] keyfile_password ",
            "[ssl] keyfile_password = (default)",
        ),
        (
            "[server] max_requests ",
            "[server] max_requests = 0 (default)",
        ),
        ("[metrics] enabled ", "[metrics] enabled = false (default)"),
    ];
    for (prefix, want) in cases {
        assert_eq!(line(prefix).as_deref(), Some(want), "{text}");
    }
    assert_eq!(
        text.lines().filter(|l| l.starts_with('[')).count(),
        SCHEMA.len()
    );
}

#[test]
fn static_mounts_are_resolved_and_bad_entries_named() {
    let loaded = run(
        "[application]\napp_dir = /srv/app\n[static]\nmounts = /static/=assets, /media=/m\nexclusive = /media/\nmax_age = /static=60\n",
        &[("GENRO_ASGI_STATIC_PRECOMPRESSED", "no")],
        &[],
    )
    .expect("loads");
    let s = &loaded.config.statics;
    assert_eq!(s.mounts, ["/static=/srv/app/assets", "/media=/m"]);
    assert_eq!(s.exclusive, ["/media"]);
    assert_eq!(s.max_age, ["/static=60"]);
    assert!(!s.precompressed);
    let rendered = loaded.render();
    assert!(
        rendered.contains("[static] mounts = /static=/srv/app/assets, /media=/m"),
        "{rendered}"
    );
    let cases: &[(&str, Vars, &str)] = &[
        ("[static]\nmounts = static=/x\n", &[], "conf/server.ini:2: [static] mounts = \"static=/x\": expected PREFIX=DIRECTORY"),
        ("[static]\nmounts = /a=/x, /a/=/y\n", &[], "conf/server.ini:2: [static] mounts = \"/a/=/y\": expected each prefix mounted once (/a is mounted twice)"),
        ("[static]\nmounts = /a=/x\n", &[("GENRO_ASGI_STATIC_EXCLUSIVE", "/b")], "environment variable GENRO_ASGI_STATIC_EXCLUSIVE: [static] exclusive = \"/b\": expected the prefix of a [static] mounts entry (/b is not mounted; mounted: /a)"),
        ("[static]\nmounts = /a=/x\nimmutable = /a\n", &[], "conf/server.ini:3: [static] immutable = \"/a\": expected a mount with a max_age too"),
    ];
    for (file, vars, want) in cases {
        let err = run(file, vars, &[]).expect_err(want);
        assert!(err.starts_with(want), "{err}\nwanted: {want}");
    }
}

#[test]
fn load_requires_static_directories() {
    let dir = std::env::temp_dir().join(format!("genro-config-static-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("assets")).expect("tmp dir");
    std::fs::write(dir.join("file"), "x").expect("write");
    let path = dir.join("server.ini");
    std::fs::write(&path, "[static]\nmounts = /a=assets\n").expect("write");
    let loaded = load(Some(&path), Vec::new(), &[]).expect("loads");
    assert_eq!(
        loaded.config.statics.mounts,
        [format!("/a={}", dir.join("assets").display())]
    );
    for (mounts, why) in [
        ("/a=missing", "No such file or directory"),
        ("/a=file", "is not a directory"),
    ] {
        std::fs::write(&path, format!("[static]\nmounts = {mounts}\n")).expect("write");
        let err = load(Some(&path), Vec::new(), &[])
            .expect_err(mounts)
            .to_string();
        let want = format!(
            "{}:2: [static] mounts = \"/a={}\": expected an existing directory (",
            path.display(),
            dir.join(&mounts[3..]).display()
        );
        assert!(err.starts_with(&want) && err.contains(why), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn file_formats_by_extension() {
    let cases = [
        ("a.ini", true),
        ("a.cfg", true),
        ("a.toml", true),
        ("A.INI", true),
        ("a.yaml", false),
        ("config", false),
    ];
    for (name, ok) in cases {
        let text = "[server]\nport = 1\n";
        assert_eq!(parse_file(text, Path::new(name)).is_ok(), ok, "{name}");
    }
    let err = parse_file("", Path::new("conf/app.yaml"))
        .map(|_| ())
        .map_err(|e| e.to_string());
    assert_eq!(err, Err("conf/app.yaml: unsupported config file extension \"yaml\" (expected .ini, .cfg or .toml)".into()));
}

#[test]
fn load_reads_files_and_reports_io_errors() {
    let dir = std::env::temp_dir().join(format!("genro-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("server.ini");
    std::fs::write(&path, "[server]\nport = 9100\n").expect("write");
    let loaded = load(
        Some(&path),
        [("GENRO_ASGI_INTERNAL_CONFIG".to_string(), "{}".to_string())],
        &[],
    )
    .expect("loads");
    assert_eq!(loaded.config.server.port, 9100);
    assert_eq!(loaded.config.application.app_dir, dir);
    let missing = dir.join("missing.ini");
    let err = load(Some(&missing), Vec::new(), &[]).expect_err("missing file");
    assert!(
        err.to_string().starts_with("cannot read config file"),
        "{err}"
    );
    assert_eq!(err.exit_code(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}
#[test]
fn workers_auto_from_every_source() {
    let flag = [Override::new("server.workers", "Auto", "--workers")];
    let cases: &[(&str, Vars, &[Override], &str)] = &[
        ("[server]\nworkers = auto\n", &[], &[], "conf/server.ini:2"),
        (
            "",
            &[("GENRO_ASGI_SERVER_WORKERS", "auto")],
            &[],
            "env GENRO_ASGI_SERVER_WORKERS",
        ),
        ("[server]\nworkers = 7\n", &[], &flag, "--workers"),
    ];
    for (file, vars, flags, source) in cases {
        let loaded = run(file, vars, flags).expect("loads");
        assert_eq!(loaded.config.server.workers, 3, "{file:?}");
        assert_eq!(loaded.workers_auto, Some(test_cpus()));
        assert_eq!(
            loaded.workers_note().as_deref(),
            Some("[server] workers = auto: 3 (cgroup v2 cpu.max 300000/100000 at /sys/fs/cgroup/t; affinity 8 CPUs)")
        );
        let rendered = loaded.render();
        let line = rendered
            .lines()
            .find(|l| l.starts_with("[server] workers "))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "));
        assert_eq!(
            line,
            Some(format!("[server] workers = auto: 3 ({source})")),
            "{file:?}"
        );
    }
    let toml = parse_toml("[server]\nworkers = \"auto\"\n", Path::new("s.toml")).expect("toml");
    let loaded = merge(
        Some(toml),
        RawLayer::default(),
        RawLayer::default(),
        Path::new(CWD),
        test_cpus,
    )
    .expect("toml auto");
    assert_eq!(loaded.config.server.workers, 3);
    // A number anywhere above `auto` wins, and the machine is not looked at.
    let file = ini("[server]\nworkers = auto\n").expect("ini");
    let loaded = merge(
        Some(file),
        env(&[("GENRO_ASGI_SERVER_WORKERS", "2")]),
        RawLayer::default(),
        Path::new(CWD),
        unasked,
    )
    .expect("env number over file auto");
    assert_eq!(
        (loaded.config.server.workers, &loaded.workers_auto),
        (2, &None)
    );
    assert_eq!(loaded.workers_note(), None);
}

#[test]
fn workers_auto_stays_in_range() {
    let huge = || CpuBudget {
        cpus: 4096,
        reason: "affinity 4096 CPUs".into(),
    };
    let file = ini("[server]\nworkers = auto\n").expect("ini");
    let loaded = merge(
        Some(file),
        RawLayer::default(),
        RawLayer::default(),
        Path::new(CWD),
        huge,
    )
    .expect("loads");
    assert_eq!(loaded.config.server.workers, 512);
    assert_eq!(
        loaded.workers_note().as_deref(),
        Some("[server] workers = auto: 512 (affinity 4096 CPUs; 4096 capped at the maximum 512)")
    );
}

#[test]
fn load_counts_cpus_under_the_internal_root() {
    let dir = std::env::temp_dir().join(format!("genro-config-cpu-root-{}", std::process::id()));
    let cgroup = dir.join("sys/fs/cgroup/svc");
    std::fs::create_dir_all(dir.join("proc/self")).expect("tmp dir");
    std::fs::create_dir_all(&cgroup).expect("tmp dir");
    std::fs::write(dir.join("proc/self/cgroup"), "0::/svc\n").expect("write");
    std::fs::write(cgroup.join("cpu.max"), "100000 100000\n").expect("write");
    let env = [
        ("GENRO_ASGI_SERVER_WORKERS".to_string(), "auto".to_string()),
        (
            crate::cpus::ENV_CPU_ROOT.to_string(),
            dir.display().to_string(),
        ),
    ];
    let loaded = load(None, env, &[]).expect("loads");
    assert_eq!(loaded.config.server.workers, 1);
    let note = loaded.workers_note().unwrap_or_default();
    let want = format!(
        "[server] workers = auto: 1 (cgroup v2 cpu.max 100000/100000 at {}; affinity ",
        cgroup.display()
    );
    assert!(note.starts_with(&want), "{note}");
    let _ = std::fs::remove_dir_all(&dir);
}
