//! The agent's HTTP endpoints for kubelet and Prometheus: `/healthz/live`, `/healthz/ready`,
//! `/metrics`.

use std::convert::Infallible;
use std::fmt::Write;
use std::net::SocketAddr;

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::follow::Shared;

/// What the endpoints report on.
#[derive(Clone)]
pub struct View {
    pub node: String,
    pub pool: String,
    pub followed: Shared,
}

impl View {
    /// Ready once the followed assignment names this node: only then does it know its part.
    pub fn ready(&self) -> Result<u64, String> {
        let st = self.followed.lock().unwrap_or_else(|e| e.into_inner());
        match &st.current {
            None => Err("no assignment yet".into()),
            Some(a) if !a.nodes.contains_key(&self.node) => Err(format!(
                "assignment epoch {} does not name {}",
                a.epoch, self.node
            )),
            Some(a) => Ok(a.epoch),
        }
    }

    pub fn metrics(&self) -> String {
        let st = self.followed.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP tern_agent_info Agent version and pool.\n# TYPE tern_agent_info gauge"
        );
        let _ = writeln!(
            out,
            "tern_agent_info{{version=\"{}\",pool=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            self.pool
        );
        let _ = writeln!(
            out,
            "# HELP tern_agent_assignment_epoch Epoch of the assignment this node follows.\n# TYPE tern_agent_assignment_epoch gauge"
        );
        let _ = writeln!(
            out,
            "tern_agent_assignment_epoch {}",
            st.current.as_ref().map_or(0, |a| a.epoch)
        );
        let _ = writeln!(
            out,
            "# HELP tern_agent_assignment_refused_total Assignments ignored (older epoch, conflicting content, other cluster).\n# TYPE tern_agent_assignment_refused_total counter"
        );
        let _ = writeln!(out, "tern_agent_assignment_refused_total {}", st.refused);
        let _ = writeln!(
            out,
            "# HELP tern_agent_assignment_unreadable_total Assignment files that could not be read or parsed.\n# TYPE tern_agent_assignment_unreadable_total counter"
        );
        let _ = writeln!(
            out,
            "tern_agent_assignment_unreadable_total {}",
            st.unreadable
        );
        out
    }
}

fn respond(req: &Request<Incoming>, view: &View) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz/live") => (StatusCode::OK, "ok\n".to_string()),
        (&Method::GET, "/healthz/ready") => match view.ready() {
            Ok(epoch) => (StatusCode::OK, format!("ready, assignment epoch {epoch}\n")),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        (&Method::GET, "/metrics") => (StatusCode::OK, view.metrics()),
        (&Method::GET, _) => (StatusCode::NOT_FOUND, "not found\n".into()),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        ),
    };
    Response::builder()
        .status(status)
        .header(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// Binds and serves in the background; returns the bound address.
pub async fn spawn(addr: SocketAddr, view: View) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let view = view.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let resp = respond(&req, &view);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                let _ = conn.await;
            });
        }
    });
    Ok(local)
}
