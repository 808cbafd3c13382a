//! The HTML pages: templates embedded at build time and rendered with
//! minijinja, every value HTML-escaped; the headers every response gets.
//!
//! Pages need no script and no inline style, so the Content-Security-Policy
//! allows nothing but this site's own stylesheet; a queue id or address
//! that carries markup is shown as text.

use axum::extract::State;
use axum::http::header::{self, HeaderValue};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use minijinja::{AutoEscape, Environment, Value};

use crate::AppState;

/// The templates, by name.
const TEMPLATES: [(&str, &str); 14] = [
    ("base.html", include_str!("../templates/base.html")),
    ("error.html", include_str!("../templates/error.html")),
    ("confirm.html", include_str!("../templates/confirm.html")),
    ("status.html", include_str!("../templates/status.html")),
    ("home.html", include_str!("../templates/home.html")),
    ("login.html", include_str!("../templates/login.html")),
    ("admin.html", include_str!("../templates/admin.html")),
    (
        "dashboard.html",
        include_str!("../templates/dashboard.html"),
    ),
    ("domains.html", include_str!("../templates/domains.html")),
    ("tls.html", include_str!("../templates/tls.html")),
    (
        "tls_domain.html",
        include_str!("../templates/tls_domain.html"),
    ),
    ("reports.html", include_str!("../templates/reports.html")),
    ("policies.html", include_str!("../templates/policies.html")),
    (
        "report_list.html",
        include_str!("../templates/report_list.html"),
    ),
];

const STYLESHEET: &str = include_str!("../static/style.css");
const FAVICON: &str = include_str!("../static/favicon.svg");

/// The headers of every response. Tokens are in the URLs of the
/// confirmation pages, so no referrer leaves them; nothing may frame the
/// pages (clickjacking of the buttons); pages are not cached, as they show
/// state that changes and carry CSRF tokens.
const SECURITY_HEADERS: [(&str, &str); 6] = [
    (
        "content-security-policy",
        "default-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("x-content-type-options", "nosniff"),
    ("cross-origin-opener-policy", "same-origin"),
    ("permissions-policy", "camera=(), microphone=(), geolocation=()"),
];

/// The template environment.
pub struct Pages {
    env: Environment<'static>,
}

impl Pages {
    /// The environment with every template loaded, so that a broken
    /// template stops the program at start rather than at the first
    /// request. `prefix` and `organization` are available to every page.
    pub fn new(prefix: &str, organization: &str) -> Result<Pages, minijinja::Error> {
        let mut env = Environment::new();
        // Every template is HTML: escape everything, whatever the name.
        env.set_auto_escape_callback(|_| AutoEscape::Html);
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        for (name, source) in TEMPLATES {
            env.add_template(name, source)?;
        }
        // The prefix is checked to hold only URL path characters
        // (`crate::url_path_prefix`), so it goes into attributes as it is.
        env.add_global("prefix", Value::from_safe_string(prefix.to_owned()));
        env.add_global("organization", organization.to_owned());
        Ok(Pages { env })
    }

    /// Renders template `name` with `context`.
    pub fn render(&self, name: &str, context: Value) -> Result<String, minijinja::Error> {
        self.env.get_template(name)?.render(context)
    }

    /// A response with `status` and the rendered page; a template error is
    /// logged and answered with a plain 500.
    pub fn page(&self, status: StatusCode, name: &str, context: Value) -> Response {
        match self.render(name, context) {
            Ok(html) => (status, Html(html)).into_response(),
            Err(err) => {
                log::error!("page {name}: {err:#}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The page could not be shown (template error); the details are in the log.",
                )
                    .into_response()
            }
        }
    }

    /// An error page: what went wrong and what the reader can do.
    pub fn error(&self, status: StatusCode, title: &str, text: &str) -> Response {
        self.page(
            status,
            "error.html",
            minijinja::context! { title, text, status => status.as_u16() },
        )
    }
}

/// The answer to a form that could not be read: 413 for a body over
/// [`crate::MAX_BODY`], `None` for anything else (the caller refuses it in
/// its own words).
pub(crate) fn body_too_large(
    app: &AppState,
    rejection: &axum::extract::rejection::FormRejection,
) -> Option<Response> {
    (rejection.status() == StatusCode::PAYLOAD_TOO_LARGE).then(|| {
        app.pages().error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request too large",
            "The form sent was larger than any PostTLS form. Nothing was done.",
        )
    })
}

/// The answer to an internal error (database, task): logged, and a page that
/// says to try again.
pub(crate) fn internal(app: &AppState, err: &crate::WebError) -> Response {
    log::error!("{err}");
    app.pages().error(
        StatusCode::SERVICE_UNAVAILABLE,
        "Temporarily unavailable",
        "The PostTLS database could not be read or written just now. Nothing was changed. Please try again in a minute.",
    )
}

/// Adds [`SECURITY_HEADERS`] and, unless the response set its own,
/// `Cache-Control: no-store`.
pub async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// `GET /static/style.css`.
pub async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLESHEET,
    )
        .into_response()
}

/// `GET /static/favicon.svg`.
pub async fn favicon() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        FAVICON,
    )
        .into_response()
}

/// `GET /`: what this site is, for someone who opens it without a link.
pub async fn home(State(app): State<AppState>) -> Response {
    app.pages().page(
        StatusCode::OK,
        "home.html",
        minijinja::context! { title => "Encrypted mail" },
    )
}

/// Anything else: 404.
pub async fn not_found(State(app): State<AppState>) -> Response {
    app.pages().error(
        StatusCode::NOT_FOUND,
        "Page not found",
        "There is no page at this address. If you came from a notification mail, open the whole link from the mail; some mail programs break long links over two lines.",
    )
}
