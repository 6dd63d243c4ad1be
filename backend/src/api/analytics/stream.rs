//! The summary as a live stream (Server-Sent Events): one reader of the store for every
//! listener of this process, each client fed the newest value.

use std::{convert::Infallible, time::Duration};

use axum::{
    Extension,
    extract::State,
    http::HeaderValue,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use common::{db::Db, http_server::ConnectionControl};
use tokio::sync::{mpsc, watch};

use super::{Summary, UNAVAILABLE, summary_of};
use crate::api::{ApiError, AppState};

/// How often the summary of [`stream`] is read again while someone listens.
const SUMMARY_PERIOD: Duration = Duration::from_millis(500);

/// The summary, read again every [`SUMMARY_PERIOD`] while a client listens, for every
/// client of this process at once: a client costs a watch receiver, and a slow one only
/// ever sees the newest value.
#[derive(Clone)]
pub struct SummaryFeed {
    tx: watch::Sender<Option<Summary>>,
    /// The reader task ends when the last clone of the feed is dropped.
    alive: std::sync::Arc<()>,
}

impl SummaryFeed {
    /// Starts the reader task on `db`.
    pub fn start(db: Db) -> Self {
        let (tx, _) = watch::channel(None);
        let feed = Self {
            tx,
            alive: std::sync::Arc::new(()),
        };
        let sender = feed.tx.clone();
        let alive = std::sync::Arc::downgrade(&feed.alive);
        tokio::spawn(async move {
            while alive.strong_count() > 0 {
                tokio::time::sleep(SUMMARY_PERIOD).await;
                if sender.is_closed() {
                    continue;
                }
                match summary_of(&db).await {
                    Ok(s) => {
                        sender.send_if_modified(|old| {
                            let changed = old.as_ref() != Some(&s);
                            *old = Some(s);
                            changed
                        });
                    }
                    Err(e) => tracing::debug!(error = %e, "reading the sales summary failed"),
                }
            }
        });
        feed
    }
}

/// The summary, live (Server-Sent Events).
///
/// Sends `event: summary` with the [`Summary`] as JSON at once, then again whenever it
/// changes (read at most twice a second), with a keep-alive comment every 15 s. A slow
/// client is sent the newest summary, never a backlog; one that stops reading for
/// [`STALL`] while a newer summary waits is disconnected (it may connect again).
#[utoipa::path(
    get,
    path = "/api/analytics/stream",
    tag = "analytics",
    responses(
        (status = 200, description = "A stream of `summary` events", content_type = "text/event-stream", body = String,
            example = json!("event: summary\ndata: {\"orders\":127,\"orders_by_status\":{\"INSUFFICIENT_FUND\":4,\"INSUFFICIENT_INVENTORY\":0,\"SUCCESS\":120,\"TIMEOUT\":2,\"UNKNOWN\":1},\"tokens_sold\":240,\"revenue\":2400,\"customers\":17}\n\n")),
        (status = 503, description = "The database is unavailable", body = ApiError,
            example = json!({"error": "unavailable", "detail": "the database is unavailable, retry later"})),
    )
)]
pub async fn stream(
    State(app): State<AppState>,
    control: Option<Extension<ConnectionControl>>,
) -> Result<Response, ApiError> {
    let first = summary_of(&app.db).await?;
    let mut changes = app.summary.tx.subscribe();
    changes.mark_unchanged();
    let (out, buffered) = mpsc::channel::<Summary>(1);
    let control = control.map(|Extension(c)| c);
    // Held by the body: the connection is busy as long as the stream goes on.
    let streaming = control.as_ref().map(ConnectionControl::streaming);
    tokio::spawn(forward(first, changes, out, control));
    let events = futures::stream::unfold(
        (buffered, streaming),
        |(mut buffered, streaming)| async move {
            let next = buffered.recv().await?;
            let event = Event::default()
                .event("summary")
                .json_data(&next)
                .unwrap_or_else(|_| Event::default().event("error").data(UNAVAILABLE));
            Some((Ok::<_, Infallible>(event), (buffered, streaming)))
        },
    );
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(crate::api::stream::KEEP_ALIVE))
        .into_response();
    // A proxy that buffers answers would hold events back.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// How long a newer summary may wait for a client that stopped reading before it is
/// disconnected.
pub const STALL: Duration = Duration::from_secs(5);

/// Hands `first`, then each changed summary, to one client's body until the client goes,
/// stalls for [`STALL`], or the server drains; closes the connection of a stalled client
/// (hyper no longer polls its body, so the body could not end by itself).
async fn forward(
    first: Summary,
    mut changes: watch::Receiver<Option<Summary>>,
    out: mpsc::Sender<Summary>,
    control: Option<ConnectionControl>,
) {
    let follow = async {
        let mut next = Some(first);
        loop {
            let summary = match next.take() {
                Some(s) => s,
                None => {
                    if changes.changed().await.is_err() {
                        return false; // the backend is going away
                    }
                    let Some(s) = changes.borrow_and_update().clone() else {
                        continue;
                    };
                    s
                }
            };
            match tokio::time::timeout(STALL, out.send(summary)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return false, // the client went
                Err(_) => return true,
            }
        }
    };
    let stalled = match &control {
        Some(c) => tokio::select! {
            () = c.draining() => true,
            stalled = follow => stalled,
        },
        None => follow.await,
    };
    if stalled && let Some(c) = control {
        tracing::info!(
            "an analytics stream client stopped reading, or the server drains; disconnected"
        );
        c.close();
    }
}
