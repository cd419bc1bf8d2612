//! What a web request asks for, or why it is refused: a pure decision over
//! the request's method, path, query and headers, made before anything is
//! registered or upgraded.
//!
//! The checks run in one order, so a request bad in several ways gets the
//! status of the first: path (404), method (405), origin (403), parameters
//! (400), token (401), upgrade (426). `maxClients` (503) is the caller's,
//! after these; headers over 8 KiB (431) are hyper's, before them.

use std::borrow::Cow;

use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONNECTION, HOST, ORIGIN, UPGRADE};
use hyper::{Method, Request, StatusCode};

use followermaze_protocol::auth::{AuthError, Key};
use followermaze_protocol::resume::{parse_hello, Hello};

/// The request header that resumes an event stream (what `EventSource`
/// sends by itself when it reconnects).
const LAST_EVENT_ID: &str = "last-event-id";

/// What the checks need besides the request.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    /// Allowed browser origins; empty: the page's own, `http://` + `Host`.
    pub(crate) allowed_origins: Vec<String>,
    /// When set, every stream needs a token for its user.
    pub(crate) auth: Option<std::sync::Arc<Key>>,
}

/// A request that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `GET /`: the page.
    Page,
    /// `OPTIONS /events` from an allowed origin: a CORS preflight.
    Preflight {
        /// The origin to allow.
        origin: String,
    },
    /// `GET /ws` with a WebSocket upgrade.
    WebSocket {
        /// The session it opens or resumes.
        hello: Hello,
        /// `Sec-WebSocket-Accept` for the 101 response.
        accept: String,
    },
    /// `GET /events`: an event stream.
    Events {
        /// The session it opens or resumes.
        hello: Hello,
        /// The browser origin to answer CORS for, when it sent one.
        origin: Option<String>,
    },
}

/// Why a request is refused: its status and a one-line reason, the
/// response's plain-text body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// 400, 401, 403, 404, 405 or 426.
    pub(crate) status: StatusCode,
    /// Said to the client as the body, and logged.
    pub(crate) reason: Cow<'static, str>,
    /// For a `401`, what was wrong with the token (counted by reason).
    pub(crate) auth: Option<AuthError>,
}

impl Refusal {
    /// A refusal with a fixed reason.
    fn new(status: StatusCode, reason: &'static str) -> Refusal {
        Refusal {
            status,
            reason: Cow::Borrowed(reason),
            auth: None,
        }
    }

    /// A `400` saying what is wrong with which parameter.
    fn bad(reason: String) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            reason: Cow::Owned(reason),
            auth: None,
        }
    }

    /// A `401` for a token's `reason`.
    fn token(reason: AuthError) -> Refusal {
        Refusal {
            status: StatusCode::UNAUTHORIZED,
            reason: Cow::Owned(format!(
                "token {reason}: a token signed with authSecret for this user is required \
                 (?token= or Authorization: Bearer)"
            )),
            auth: Some(reason),
        }
    }
}

/// Decides what `request` asks for under `rules`.
pub(crate) fn route<B>(request: &Request<B>, rules: &Rules) -> Result<Route, Refusal> {
    let path = request.uri().path();
    let method = request.method();
    let allowed = |methods: &[Method]| {
        if methods.contains(method) {
            Ok(())
        } else {
            Err(Refusal::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
            ))
        }
    };
    match path {
        "/" => {
            allowed(&[Method::GET, Method::HEAD])?;
            Ok(Route::Page)
        }
        "/ws" => {
            allowed(&[Method::GET])?;
            web_socket(request, rules)
        }
        "/events" => {
            allowed(&[Method::GET, Method::OPTIONS])?;
            let origin = check_origin(request.headers(), rules)?;
            if method == Method::OPTIONS {
                return match origin {
                    Some(origin) => Ok(Route::Preflight { origin }),
                    None => Err(Refusal::new(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "OPTIONS is a browser's CORS preflight: it needs an Origin",
                    )),
                };
            }
            let hello = session(request, rules, Resume::LastEventId)?;
            Ok(Route::Events { hello, origin })
        }
        _ => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "not found: try / (the page), /ws or /events",
        )),
    }
}

/// The checks of `GET /ws`, after its method.
fn web_socket<B>(request: &Request<B>, rules: &Rules) -> Result<Route, Refusal> {
    let headers = request.headers();
    check_origin(headers, rules)?;
    let hello = session(request, rules, Resume::StreamAfter)?;
    let upgrade = has_token(headers.get(CONNECTION), "upgrade")
        && has_token(headers.get(UPGRADE), "websocket");
    if !upgrade {
        return Err(Refusal::new(
            StatusCode::UPGRADE_REQUIRED,
            "/ws is a WebSocket: it needs `Connection: Upgrade` and `Upgrade: websocket`",
        ));
    }
    if headers
        .get("sec-websocket-version")
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(Refusal::new(
            StatusCode::UPGRADE_REQUIRED,
            "only WebSocket version 13 is spoken",
        ));
    }
    let Some(key) = headers.get("sec-websocket-key") else {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade needs Sec-WebSocket-Key",
        ));
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    Ok(Route::WebSocket { hello, accept })
}

/// The request's `Origin`, if it sent one and it is allowed; a `403` if it
/// is not. Requests without one are not from a browser and are allowed.
fn check_origin(headers: &HeaderMap, rules: &Rules) -> Result<Option<String>, Refusal> {
    let Some(origin) = headers.get(ORIGIN) else {
        return Ok(None);
    };
    let origin = origin.to_str().unwrap_or_default();
    let allowed = if rules.allowed_origins.is_empty() {
        let host = headers.get(HOST).and_then(|host| host.to_str().ok());
        host.is_some_and(|host| origin.strip_prefix("http://") == Some(host))
    } else {
        rules
            .allowed_origins
            .iter()
            .any(|allowed| allowed == origin)
    };
    if allowed {
        Ok(Some(origin.to_owned()))
    } else {
        Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "origin not allowed (see webAllowedOrigins)",
        ))
    }
}

/// Where a resume's stream and position come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// `?stream=<s>&after=<n>` (WebSocket).
    StreamAfter,
    /// The `Last-Event-ID: <s>:<seq>` header, else `?lastEventId=`
    /// (Server-Sent Events).
    LastEventId,
}

/// The session a stream request opens or resumes, its token checked: the
/// same handshake a resumable TCP client sends, so it means the same.
fn session<B>(request: &Request<B>, rules: &Rules, resume: Resume) -> Result<Hello, Refusal> {
    let query = Query::parse(request.uri().query().unwrap_or_default());
    let user = query.get("user").unwrap_or_default();
    if user.is_empty() || !user.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(Refusal::bad(
            "user: expected ?user=<id>, a decimal user id".into(),
        ));
    }
    let (stream, after) = match resume {
        Resume::StreamAfter => (
            query.get("stream").unwrap_or_default(),
            query.get("after").unwrap_or_default(),
        ),
        Resume::LastEventId => {
            let header = request.headers().get(LAST_EVENT_ID);
            let id = match header {
                Some(id) => Cow::Borrowed(id.to_str().unwrap_or("?")),
                None => query.get("lastEventId").unwrap_or_default(),
            };
            match id.split_once(':') {
                None if id.is_empty() => (Cow::Borrowed(""), Cow::Borrowed("")),
                Some((stream, seq)) if !stream.is_empty() && !seq.is_empty() => {
                    (Cow::Owned(stream.to_owned()), Cow::Owned(seq.to_owned()))
                }
                _ => {
                    return Err(Refusal::bad(
                        "Last-Event-ID: expected <stream>:<position>".into(),
                    ))
                }
            }
        }
    };
    if stream.contains('|') || after.contains('|') {
        return Err(Refusal::bad("stream or position: no `|` allowed".into()));
    }
    let line = format!("{user}|{stream}|{after}");
    let hello = parse_hello(line.as_bytes()).map_err(|error| Refusal::bad(error.to_string()))?;
    if let Some(key) = &rules.auth {
        let token = bearer(request.headers())
            .map(Cow::Borrowed)
            .or_else(|| query.get("token"))
            .unwrap_or_default();
        key.check(token.as_bytes(), &user).map_err(Refusal::token)?;
    }
    Ok(hello)
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether a comma-separated header names `token` (case-insensitively).
fn has_token(header: Option<&HeaderValue>, token: &str) -> bool {
    header
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .split(',')
                .any(|item| item.trim().eq_ignore_ascii_case(token))
        })
}

/// A query string's parameters, percent-decoded; the first of a repeated
/// name wins.
#[derive(Debug)]
struct Query<'a> {
    /// `name=value` pairs as sent.
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Query<'a> {
    /// Splits `query` (without its `?`).
    fn parse(query: &'a str) -> Query<'a> {
        let pairs = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .collect();
        Query { pairs }
    }

    /// The decoded value of `name`, if present.
    fn get(&self, name: &str) -> Option<Cow<'a, str>> {
        let (_, value) = self.pairs.iter().find(|(key, _)| *key == name)?;
        Some(percent_decode(value))
    }
}

/// Decodes `%XX` escapes and `+` (a space); a malformed escape is kept as
/// sent, and bytes that do not decode to UTF-8 are replaced.
fn percent_decode(text: &str) -> Cow<'_, str> {
    if !text.contains(['%', '+']) {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|&byte| (byte as char).to_digit(16));
        match bytes[index] {
            b'%' => match (hex(index + 1), hex(index + 2)) {
                (Some(high), Some(low)) => {
                    out.push((high * 16 + low) as u8);
                    index += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        index += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use followermaze_protocol::resume::StreamId;

    fn rules() -> Rules {
        Rules {
            allowed_origins: Vec::new(),
            auth: None,
        }
    }

    fn get(uri: &str) -> hyper::http::request::Builder {
        Request::builder().uri(uri).header(HOST, "127.0.0.1:9080")
    }

    fn upgrade(builder: hyper::http::request::Builder) -> hyper::http::request::Builder {
        builder
            .header(CONNECTION, "keep-alive, Upgrade")
            .header(UPGRADE, "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
    }

    fn status(result: Result<Route, Refusal>) -> u16 {
        match result {
            Ok(route) => panic!("expected a refusal, got {route:?}"),
            Err(refusal) => refusal.status.as_u16(),
        }
    }

    fn resumable(user: u64, stream: Option<&str>, after: u64) -> Hello {
        Hello::Resumable {
            user,
            stream: stream.map(|text| StreamId::parse(text.as_bytes()).unwrap()),
            after,
        }
    }

    #[test]
    fn a_web_socket_opens_or_resumes_the_same_session_as_the_tcp_handshake() {
        let first = upgrade(get("/ws?user=7")).body(()).unwrap();
        let accept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".to_owned(); // RFC 6455's example
        assert_eq!(
            route(&first, &rules()),
            Ok(Route::WebSocket {
                hello: resumable(7, None, 0),
                accept: accept.clone()
            })
        );
        let again = upgrade(get("/ws?user=7&stream=k3j9&after=18842"))
            .body(())
            .unwrap();
        assert_eq!(
            route(&again, &rules()),
            Ok(Route::WebSocket {
                hello: resumable(7, Some("k3j9"), 18842),
                accept: accept.clone()
            })
        );
        // `after` without `stream` is a first connection, as over TCP.
        let after_only = upgrade(get("/ws?user=7&after=5")).body(()).unwrap();
        assert_eq!(
            route(&after_only, &rules()),
            Ok(Route::WebSocket {
                hello: resumable(7, None, 5),
                accept
            })
        );
    }

    #[test]
    fn an_event_stream_resumes_from_its_last_event_id_header_before_the_query() {
        let header = get("/events?user=3&lastEventId=old:1")
            .header("Last-Event-ID", "k3j9:42")
            .body(())
            .unwrap();
        let expected = Route::Events {
            hello: resumable(3, Some("k3j9"), 42),
            origin: None,
        };
        assert_eq!(route(&header, &rules()), Ok(expected));
        let query = get("/events?user=3&lastEventId=k3j9%3A42")
            .body(())
            .unwrap();
        assert_eq!(
            route(&query, &rules()),
            Ok(Route::Events {
                hello: resumable(3, Some("k3j9"), 42),
                origin: None
            })
        );
        let empty = get("/events?user=3&lastEventId=").body(()).unwrap();
        assert_eq!(
            route(&empty, &rules()),
            Ok(Route::Events {
                hello: resumable(3, None, 0),
                origin: None
            })
        );
    }

    #[test]
    fn each_bad_request_gets_its_status() {
        let cases: Vec<(&str, hyper::http::request::Builder, u16)> = vec![
            ("unknown path", get("/nope"), 404),
            ("POST /", get("/").method(Method::POST), 405),
            (
                "PUT /events",
                get("/events?user=1").method(Method::PUT),
                405,
            ),
            ("no user", get("/events"), 400),
            ("user not a number", get("/events?user=x1"), 400),
            ("user with a bar", upgrade(get("/ws?user=1|2|3")), 400),
            (
                "bad stream",
                upgrade(get("/ws?user=1&stream=UP&after=1")),
                400,
            ),
            (
                "bad position",
                upgrade(get("/ws?user=1&stream=ab&after=-1")),
                400,
            ),
            (
                "bad Last-Event-ID",
                get("/events?user=1").header("Last-Event-ID", "nocolon"),
                400,
            ),
            ("ws without upgrade", get("/ws?user=1"), 426),
            (
                "ws version 8",
                get("/ws?user=1")
                    .header(CONNECTION, "Upgrade")
                    .header(UPGRADE, "websocket")
                    .header("sec-websocket-version", "8"),
                426,
            ),
            (
                "foreign origin",
                get("/events?user=1").header(ORIGIN, "http://evil.example"),
                403,
            ),
            (
                "foreign origin and bad user: the origin's status",
                upgrade(get("/ws?user=x")).header(ORIGIN, "http://evil.example"),
                403,
            ),
        ];
        for (what, builder, expected) in cases {
            let request = builder.body(()).unwrap();
            assert_eq!(status(route(&request, &rules())), expected, "{what}");
        }
    }

    #[test]
    fn origins_default_to_the_page_s_own_and_can_be_listed() {
        let own = get("/events?user=1")
            .header(ORIGIN, "http://127.0.0.1:9080")
            .body(())
            .unwrap();
        assert!(matches!(
            route(&own, &rules()),
            Ok(Route::Events { origin: Some(origin), .. }) if origin == "http://127.0.0.1:9080"
        ));
        let listed = Rules {
            allowed_origins: vec!["https://app.example".into()],
            ..rules()
        };
        assert_eq!(status(route(&own, &listed)), 403);
        let app = get("/events?user=1")
            .header(ORIGIN, "https://app.example")
            .body(())
            .unwrap();
        assert!(route(&app, &listed).is_ok());
        let preflight = get("/events")
            .method(Method::OPTIONS)
            .header(ORIGIN, "https://app.example")
            .body(())
            .unwrap();
        assert_eq!(
            route(&preflight, &listed),
            Ok(Route::Preflight {
                origin: "https://app.example".into()
            })
        );
    }

    #[test]
    fn tokens_are_checked_before_any_upgrade_from_the_query_or_the_header() {
        let key = Arc::new(Key::new(b"secret"));
        let rules = Rules {
            auth: Some(Arc::clone(&key)),
            ..rules()
        };
        let now = SystemTime::now();
        let good = key.mint("7", Duration::from_secs(60), now);
        let other = key.mint("8", Duration::from_secs(60), now);
        let query = upgrade(get(&format!("/ws?user=7&token={good}")))
            .body(())
            .unwrap();
        assert!(route(&query, &rules).is_ok());
        let header = get("/events?user=7")
            .header(AUTHORIZATION, format!("Bearer {good}"))
            .body(())
            .unwrap();
        assert!(route(&header, &rules).is_ok());
        // The token is checked before the upgrade: 401, not 426.
        let no_upgrade = get(&format!("/ws?user=7&token={other}")).body(()).unwrap();
        assert_eq!(status(route(&no_upgrade, &rules)), 401);
        let missing = upgrade(get("/ws?user=7")).body(()).unwrap();
        let refusal = route(&missing, &rules).unwrap_err();
        assert_eq!(refusal.status, StatusCode::UNAUTHORIZED);
        assert!(
            refusal.reason.starts_with("token missing"),
            "{}",
            refusal.reason
        );
    }

    #[test]
    fn percent_escapes_decode_and_malformed_ones_stay() {
        assert_eq!(percent_decode("a%3Ab+c"), "a:b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("plain"), "plain");
    }
}
