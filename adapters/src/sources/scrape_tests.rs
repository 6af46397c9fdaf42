use super::*;
use keel_model::MetricName;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::thread::JoinHandle;

fn shared(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/prometheus")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Serves one connection: reads the request head, writes `response`, closes.
/// Returns the URL to scrape and the request the server saw.
fn serve_once(response: Vec<u8>) -> (String, JoinHandle<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/metrics", l.local_addr().unwrap());
    let h = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut request = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                break;
            }
            request.push_str(&line);
        }
        let mut w = s;
        // The client may give up first (a cap, a bad status); that is fine.
        let _ = w.write_all(&response);
        request
    });
    (url, h)
}

fn with_length(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Go's net/http framing, with varied chunk sizes.
fn chunked(body: &str) -> Vec<u8> {
    let mut out =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    let b = body.as_bytes();
    let (mut at, mut size) = (0, 1);
    while at < b.len() {
        let n = size.min(b.len() - at);
        out.extend_from_slice(format!("{n:X}\r\n").as_bytes());
        out.extend_from_slice(&b[at..at + n]);
        out.extend_from_slice(b"\r\n");
        at += n;
        size = size * 7 % 8191 + 1;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn target(url: &str) -> ScrapeTarget {
    ScrapeTarget::new(url, "n1").unwrap()
}

#[test]
fn content_length_scrape_of_a_real_node_exporter_body() {
    let body = shared("node-exporter-1.5.0-a.prom");
    let (url, server) = serve_once(with_length(&body));
    let (samples, stats) = scrape(&target(&url), 1000.0).unwrap();
    assert_eq!((samples, stats), parse_scrape(&body, "n1", 1000.0));
    let request = server.join().unwrap();
    let port = url.split(':').nth(2).unwrap().split('/').next().unwrap();
    for want in [
        "GET /metrics HTTP/1.1\r\n".to_string(),
        format!("Host: 127.0.0.1:{port}\r\n"),
        "Accept: text/plain".into(),
        "Accept-Encoding: identity\r\n".into(),
    ] {
        assert!(request.contains(&want), "{want:?} not in {request:?}");
    }
}

#[test]
fn chunked_scrape_of_a_real_node_exporter_body() {
    let body = shared("node-exporter-1.5.0-b.prom");
    let (url, server) = serve_once(chunked(&body));
    let (samples, stats) = scrape(&target(&url), 1008.0).unwrap();
    server.join().unwrap();
    assert!(stats.malformed.is_empty(), "{:?}", stats.malformed);
    assert_eq!(samples, parse_scrape(&body, "n1", 1008.0).0);
    let eth0 = samples
        .iter()
        .find(|s| s.name == MetricName::NetRxBytes && s.labels.device.as_deref() == Some("eth0"));
    assert!(eth0.is_some_and(|s| s.value > 8.0e7), "{eth0:?}");
}

#[test]
fn body_ended_by_close() {
    let body = shared("node-exporter-1.5.0-a.prom");
    let (url, server) = serve_once(format!("HTTP/1.0 200 OK\r\n\r\n{body}").into_bytes());
    let (samples, _) = scrape(&target(&url), 1.0e9).unwrap();
    server.join().unwrap();
    assert_eq!(samples, parse_scrape(&body, "n1", 1.0e9).0);
}

#[test]
fn a_refused_connection_names_the_url() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let e = scrape(&target(&url), 1.0e9).unwrap_err();
    assert!(matches!(e.kind, ScrapeErrorKind::Connect(_)), "{e:?}");
    assert!(
        e.to_string().starts_with(&format!("scrape {url}: connect")),
        "{e}"
    );
}

#[test]
fn a_404_names_status_and_url() {
    let (url, server) =
        serve_once(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found".to_vec());
    let e = scrape(&target(&url), 1.0e9).unwrap_err();
    server.join().unwrap();
    let ScrapeErrorKind::Status(line) = &e.kind else {
        panic!("{e:?}")
    };
    assert_eq!(line, "HTTP/1.1 404 Not Found");
    assert!(
        e.to_string().contains(&url) && e.to_string().contains("404"),
        "{e}"
    );
}

#[test]
fn garbage_and_gzip_are_protocol_errors() {
    for (resp, want) in [
        (&b"hello world\r\n\r\n"[..], ""),
        (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc",
            "gzip",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", ""),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n\xff\xfe",
            "not UTF-8",
        ),
        (b"HTTP/1.1 200", ""),
    ] {
        let (url, server) = serve_once(resp.to_vec());
        let e = scrape(&target(&url), 1.0e9).unwrap_err();
        server.join().unwrap();
        assert!(
            matches!(
                e.kind,
                ScrapeErrorKind::Protocol(_) | ScrapeErrorKind::Connect(_)
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains(want), "{e} lacks {want:?}");
        assert!(e.to_string().contains(&url), "{e}");
    }
}

#[test]
fn a_silent_server_times_out() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/metrics", l.local_addr().unwrap());
    let t = target(&url).with_timeout(Duration::from_millis(100));
    let e = scrape(&t, 1.0e9).unwrap_err();
    assert!(matches!(e.kind, ScrapeErrorKind::TimedOut(_)), "{e:?}");
    drop(l);
}

#[test]
fn the_cap_holds_for_every_framing() {
    let body = "x".repeat(100);
    for raw in [
        with_length(&body),
        chunked(&body),
        format!("HTTP/1.0 200 OK\r\n\r\n{body}").into_bytes(),
    ] {
        let client = Client::new(&Access::default(), DEFAULT_TIMEOUT).unwrap();
        let (url, server) = serve_once(raw.clone());
        assert_eq!(client.get_text(&url, ACCEPT, 100).unwrap(), body);
        server.join().unwrap();
        let (url, server) = serve_once(raw);
        assert!(matches!(
            client.get_text(&url, ACCEPT, 99),
            Err(HttpError::TooLarge(99))
        ));
        server.join().unwrap();
    }
}

#[test]
fn bearer_and_basic_credentials_are_sent_from_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let (url, server) = serve_once(with_length("up 1\n"));
    let t = target(&url)
        .with_access(Access {
            bearer_token_file: Some(token),
            ..Access::default()
        })
        .unwrap();
    scrape(&t, 1.0e9).unwrap();
    let request = server.join().unwrap();
    assert!(
        request.contains("authorization: Bearer s3cret\r\n")
            || request.contains("Authorization: Bearer s3cret\r\n"),
        "{request}"
    );
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "pw").unwrap();
    let (url, server) = serve_once(with_length("up 1\n"));
    let t = target(&url)
        .with_access(Access {
            basic_auth: Some(BasicAuth {
                username: "keel".into(),
                password_file: pass,
            }),
            ..Access::default()
        })
        .unwrap();
    scrape(&t, 1.0e9).unwrap();
    // base64("keel:pw")
    assert!(
        server
            .join()
            .unwrap()
            .to_ascii_lowercase()
            .contains("authorization: basic a2vlbdpwdw=="),
        "basic auth not sent"
    );
    // A missing token file is an error naming it, not an anonymous scrape.
    let t = target("http://127.0.0.1:9/metrics")
        .with_access(Access {
            bearer_token_file: Some(dir.path().join("nope")),
            ..Access::default()
        })
        .unwrap();
    let e = scrape(&t, 1.0e9).unwrap_err();
    assert!(matches!(e.kind, ScrapeErrorKind::Credentials(_)), "{e}");
    assert!(e.to_string().contains("nope"), "{e}");
    // A CA file with no certificate is refused when the target is made.
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate").unwrap();
    let e = target("https://127.0.0.1:9/metrics")
        .with_access(Access {
            tls_config: Some(TlsConfig { ca_file: Some(ca) }),
            ..Access::default()
        })
        .unwrap_err();
    assert!(e.to_string().contains("no PEM certificate"), "{e}");
}

#[test]
fn urls() {
    let u = Url::parse("http://10.0.0.7:9400/metrics?x=1#frag").unwrap();
    assert_eq!(
        (u.host.as_str(), u.port, u.path.as_str()),
        ("10.0.0.7", 9400, "/metrics?x=1")
    );
    assert_eq!(u.to_string(), "http://10.0.0.7:9400/metrics?x=1");
    let u = Url::parse("HTTP://[::1]:9100").unwrap();
    assert_eq!(
        (u.host.as_str(), u.port, u.path.as_str()),
        ("::1", 9100, "/")
    );
    assert_eq!(u.authority(), "[::1]:9100");
    let u = Url::parse("http://node-7.cluster?a").unwrap();
    assert_eq!((u.port, u.path.as_str()), (80, "/?a"));
    let u = Url::parse("https://vllm.cluster/metrics").unwrap();
    assert_eq!((u.tls, u.port), (true, 443));
    assert_eq!(u.to_string(), "https://vllm.cluster:443/metrics");
    for (bad, why) in [
        ("ftp://n:1/metrics", "scheme \"ftp\""),
        ("n:9100/metrics", "not an http:// or https:// URL"),
        ("http://:9100/", "no host"),
        ("http://n:0/", "bad port"),
        ("http://n:99999/", "bad port"),
        ("http://n:1:2/", "bad port"),
        ("http://u:p@n:1/", "credentials"),
        ("http://[::1/", "unclosed"),
        ("http://[zz]:1/", "IPv6"),
        ("http://n:1/a b", "space or control"),
        ("http://n:1/a\r\nX: y", "space or control"),
        ("http://n$x:1/", "bad character"),
    ] {
        let e = Url::parse(bad).unwrap_err();
        assert!(matches!(e.kind, ScrapeErrorKind::BadUrl(_)), "{bad}");
        let msg = e.to_string();
        assert!(msg.contains(bad) && msg.contains(why), "{bad}: {msg}");
    }
}

proptest::proptest! {
    #[test]
    fn arbitrary_urls_never_panic(url in "(?s).{0,60}", tail in "[\\[\\]:@/?#a-z0-9.]{0,30}") {
        let _ = Url::parse(&url);
        let _ = Url::parse(&format!("http://{tail}"));
    }
}
