//! `GET /api/orders/stream`: the order feed as Server-Sent Events (see [`crate::feed`] for
//! where the events come from and how a client is followed).

use std::{convert::Infallible, time::Duration};

use axum::{
    Extension,
    extract::{Query, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderValue},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use common::{
    domain::{InvalidValue, OrderId, Username},
    http_server::ConnectionControl,
};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiError, AppState};
use crate::{
    feed::{self, ClientSlot, Ended, Feed, Filter, Item, Start},
    store,
};

/// A comment line this often keeps proxies and clients from taking a quiet stream for a
/// dead one.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// After the server starts draining, how long a client has to take what its buffer still
/// holds before its connection is closed.
const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// The header a client resumes with (EventSource sends it when it reconnects).
pub const LAST_EVENT_ID: &str = "last-event-id";

/// Filters and resume point of `/api/orders/stream`. Read as text and parsed here, so a bad
/// one is named in a 400.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamParams {
    /// Only this buyer's orders.
    #[param(example = "alice")]
    pub username: Option<String>,
    /// Only this order.
    #[param(value_type = Option<String>, format = Uuid, example = "01920d3c-5e2a-7cc1-9a3e-6f1b2c3d4e5f")]
    pub order_id: Option<String>,
    /// Resume after this event id, for clients that cannot set the `Last-Event-ID` header;
    /// the header wins when both are given (a reconnecting EventSource sends the header,
    /// newer than the URL's parameter).
    #[param(value_type = Option<i64>, minimum = 0, example = 42)]
    pub last_event_id: Option<String>,
}

/// What a client asked for, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRequest {
    pub filter: Filter,
    pub last_event_id: Option<i64>,
}

impl StreamParams {
    /// The request these parameters and `headers` make. An empty `username` counts as
    /// absent; one that could never have bought is refused, as a typed parameter that is
    /// not well-formed is (a stream that can never send anything is worth saying at once).
    pub fn parse(&self, headers: &HeaderMap) -> Result<StreamRequest, InvalidValue> {
        let username = match self.username.as_deref() {
            None | Some("") => None,
            Some(u) => Some(Username::parse(u)?.as_str().to_string()),
        };
        let order_id = self
            .order_id
            .as_deref()
            .map(|s| {
                OrderId::parse(s)
                    .map_err(|_| InvalidValue::new("order_id", "must be an order id (UUID)"))
            })
            .transpose()?
            .map(|id| id.to_string());
        let mut ids = headers.get_all(LAST_EVENT_ID).iter();
        let header = match (ids.next(), ids.next()) {
            (Some(_), Some(_)) => {
                return Err(InvalidValue::new("Last-Event-ID", "given more than once"));
            }
            (Some(v), None) if !v.is_empty() => Some(
                v.to_str()
                    .ok()
                    .and_then(event_id)
                    .ok_or_else(|| InvalidValue::new("Last-Event-ID", EVENT_ID))?,
            ),
            _ => None,
        };
        let query = self
            .last_event_id
            .as_deref()
            .map(|s| event_id(s).ok_or_else(|| InvalidValue::new("last_event_id", EVENT_ID)))
            .transpose()?;
        Ok(StreamRequest {
            filter: Filter { username, order_id },
            last_event_id: header.or(query),
        })
    }
}

const EVENT_ID: &str = "must be an event id (a whole number, 0 or more)";

fn event_id(s: &str) -> Option<i64> {
    let s = s.trim();
    // Digits only: no sign, no `+`, so that an id reads one way.
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Follow orders as they change (Server-Sent Events).
///
/// Every status change and saga step as the backend applies it: one `order` event per
/// change of an order, whose `data:` is an `OrderEvent` (JSON): its buyer and product,
/// status, phase and version, and the timeline entries the change added (`steps`). Over
/// an order's events each timeline entry appears once, in order. Events carry increasing
/// ids; the stream starts from now, or with `Last-Event-ID` (or `last_event_id`) from the
/// event after that id: a client that reconnects with the last id it saw misses nothing
/// and gets nothing twice. Every replica serves the same feed (it is stored), so a client
/// may reconnect to any.
///
/// The feed keeps an hour of events (and at most the newest 100,000). A resume from an id
/// older than that first gets a `reset` event (its data a `StreamReset`), `{"reason":
/// "pruned", "last_event_id", "resumes_after"}`, and goes on from the oldest event kept; an id newer than any event
/// (a rebuilt database) gets `{"reason": "unknown_id", …}` and goes on from the newest.
/// A comment line is sent every 15 s of silence.
///
/// A client that does not keep up (its connection buffers stay full for 5 s, or it falls
/// 4,096 events behind) is disconnected, so that it never slows the marketplace or other
/// clients; it may reconnect with its last id. At most 256 clients stream from one server
/// at once (`503 overloaded` beyond).
#[utoipa::path(
    get,
    path = "/api/orders/stream",
    tag = "orders",
    params(
        StreamParams,
        ("Last-Event-ID" = Option<String>, Header,
            description = "Resume after this event id (what EventSource sends when it reconnects); wins over `last_event_id`",
            pattern = "^[0-9]+$", example = "42"),
    ),
    responses(
        (status = 200, description = "The stream: `order` events (id, and an `OrderEvent` as data), a \
`reset` event first when the resume point is not kept, and comment lines as keep-alives",
            content_type = "text/event-stream", body = String,
            example = json!("id: 42\nevent: order\ndata: {\"order_id\":\"01920d3c-5e2a-7cc1-9a3e-6f1b2c3d4e5f\",\"username\":\"alice\",\"product\":\"late_token\",\"status\":\"SUCCESS\",\"phase\":\"done\",\"version\":11,\"updated_at_ms\":1790856000131,\"steps\":[{\"seq\":9,\"at\":\"2026-10-01T12:00:00.130Z\",\"step\":\"order.complete\",\"event\":\"sent\"},{\"seq\":10,\"at\":\"2026-10-01T12:00:00.131Z\",\"step\":\"order.complete\",\"event\":\"done\"}]}\n\n")),
        (status = 400, description = "A parameter or the `Last-Event-ID` header is invalid or repeated; the detail starts with its name", body = ApiError,
            examples(
                ("order_id" = (value = json!({"error": "bad_request", "detail": "order_id: must be an order id (UUID)"}))),
                ("username" = (value = json!({"error": "bad_request", "detail": "username: must not be empty"}))),
                ("last_event_id" = (value = json!({"error": "bad_request", "detail": "last_event_id: must be an event id (a whole number, 0 or more)"}))),
                ("Last-Event-ID" = (value = json!({"error": "bad_request", "detail": "Last-Event-ID: must be an event id (a whole number, 0 or more)"}))),
            )),
        (status = 503, description = "The database is unavailable, or as many clients are streaming as the server serves", body = ApiError,
            examples(
                ("unavailable" = (value = json!({"error": "unavailable", "detail": "the database is unavailable, retry later"}))),
                ("overloaded" = (value = json!({"error": "overloaded", "detail": "256 clients are streaming from this server, the most it serves at once; retry after 5 s"}))),
            )),
    )
)]
pub async fn stream_orders(
    State(app): State<AppState>,
    headers: HeaderMap,
    control: Option<Extension<ConnectionControl>>,
    params: Result<Query<StreamParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    let request = params
        .parse(&headers)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let slot = app.feed.admit().ok_or_else(|| ApiError::Overloaded {
        detail: format!(
            "{} clients are streaming from this server, the most it serves at once",
            feed::MAX_CLIENTS
        ),
        retry_after_s: 5,
    })?;
    // Read before answering, so that a database that does not answer is a 503.
    let bounds = match request.last_event_id {
        Some(_) => store::feed::bounds(app.feed.db()).await?,
        None => None,
    };
    let start = match feed::plan(request.last_event_id, bounds) {
        (Some(after), reset) => Start::After { after, reset },
        // From now on: subscribed before answering, so that "now" is this request.
        (None, _) => Start::Live(
            app.feed
                .subscribe()
                .await
                // The tailer has not read its database yet.
                .map_err(|_| ApiError::Unavailable(sqlx::Error::PoolTimedOut))?,
        ),
    };
    let (out, buffered) = feed::buffer();
    let control = control.map(|Extension(c)| c);
    // Held by the body: the connection is busy as long as the stream goes on.
    let streaming = control.as_ref().map(ConnectionControl::streaming);
    tokio::spawn(run_follower(
        app.feed.clone(),
        request.filter,
        start,
        out,
        control,
        slot,
    ));
    let events = futures::stream::unfold(
        (buffered, streaming),
        |(mut buffered, streaming)| async move {
            let item = buffered.recv().await?;
            Some((Ok::<_, Infallible>(event(item)), (buffered, streaming)))
        },
    );
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    // A proxy that buffers answers (nginx, as the ingress) would hold events back.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Runs one client's follower until it ends or the server drains, then closes the
/// connection of a client that was dropped for not keeping up (its body is not polled any
/// more: it could not end by itself).
async fn run_follower(
    feed: Feed,
    filter: Filter,
    start: Start,
    out: tokio::sync::mpsc::Sender<Item>,
    control: Option<ConnectionControl>,
    _slot: ClientSlot,
) {
    let follow = feed::follow(feed.clone(), filter, start, out);
    let ended = match &control {
        Some(c) => tokio::select! {
            () = c.draining() => None,
            ended = follow => Some(ended),
        },
        None => Some(follow.await),
    };
    // The follower and its end of the buffer are gone here: the stream ends once the
    // client has taken what the buffer holds.
    if let Some(why) = &ended {
        feed.dropped(why);
    }
    let close = match ended {
        None => {
            tokio::time::sleep(DRAIN_GRACE).await;
            true
        }
        Some(Ended::ClientGone | Ended::FeedStopped) => false,
        Some(Ended::TooSlow) => {
            tracing::info!(
                "an order stream client stopped reading; disconnected (it may resume from its last id)"
            );
            true
        }
        Some(Ended::Lagged(n)) => {
            tracing::info!(
                behind = n,
                "an order stream client fell behind the live feed; disconnected (it may resume from its last id)"
            );
            true
        }
        Some(Ended::Gap { after, got }) => {
            tracing::warn!(
                after,
                got,
                "the live order feed skipped a row; client disconnected to resume from the table"
            );
            true
        }
        Some(Ended::Database(e)) => {
            tracing::warn!(error = %e, "reading the order feed failed; stream ended (the client may resume)");
            false
        }
    };
    if close && let Some(c) = control {
        c.close();
    }
}

fn event(item: Item) -> Event {
    match item {
        Item::Row(row) => Event::default()
            .id(row.seq.to_string())
            .event("order")
            .data(&row.payload),
        Item::Reset(reset) => Event::default()
            .event("reset")
            .data(serde_json::to_string(&reset).expect("a reset serializes")),
    }
}

#[cfg(test)]
mod tests;
