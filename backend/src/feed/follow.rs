//! One client's follower: where its stream starts, what it replays from the table, how it
//! joins the live broadcast without a gap or a repeat, and when it gives up on the client.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

use super::{CLIENT_BUFFER, Feed, FeedRow, Filter, STALL_TIMEOUT};
use crate::store;

/// Rows replayed from the table at a time.
const REPLAY_PAGE: i64 = 500;

/// What the client's stream carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A feed row the client's filter wants (an `order` event, id = seq).
    Row(Arc<FeedRow>),
    /// The stream does not continue right after the id the client gave (a `reset` event).
    Reset(Reset),
}

/// Why a stream skips ahead, told to the client before anything else (the `data:` of a
/// `reset` event of `/api/orders/stream`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = StreamReset, example = json!({"reason": "pruned", "last_event_id": 42, "resumes_after": 1907}))]
pub struct Reset {
    /// `pruned`: rows after the client's id are no longer kept, the stream resumes at the
    /// oldest kept row; `unknown_id`: the id is newer than any row of this feed (a rebuilt
    /// database), the stream goes on from the newest row.
    #[schema(value_type = String, pattern = "^(pruned|unknown_id)$")]
    pub reason: &'static str,
    /// The id the client resumed from.
    pub last_event_id: i64,
    /// The stream goes on with the rows after this seq.
    pub resumes_after: i64,
}

/// Where a follower starts.
pub enum Start {
    /// From now on: the subscription, made when the client connected.
    Live(broadcast::Receiver<Arc<FeedRow>>),
    /// After this seq (from [`plan`]), telling the client `reset` first if there is one.
    After { after: i64, reset: Option<Reset> },
}

/// Why a follower stopped.
#[derive(Debug)]
pub enum Ended {
    /// The stream was dropped (the client went away).
    ClientGone,
    /// The client's buffer stayed full for [`STALL_TIMEOUT`]: its socket does not drain.
    TooSlow,
    /// The client fell behind the broadcast by more than it keeps.
    Lagged(u64),
    /// A live row was not the one after the last sent; the client should resume from its
    /// id, which replays the missing rows from the table. (Never expected: seqs are gapless
    /// and the tailer publishes them in order.)
    Gap { after: i64, got: i64 },
    /// The feed's tailer is gone (the process is stopping), or never started.
    FeedStopped,
    /// The table could not be read.
    Database(sqlx::Error),
}

/// Where a stream starts: `last_event_id` is the client's id (None: from now on), `bounds`
/// the oldest and newest seq kept. Returns the seq to replay after (None: live only) and
/// the reset to tell the client first, if its id cannot be resumed from as is.
pub fn plan(
    last_event_id: Option<i64>,
    bounds: Option<(i64, i64)>,
) -> (Option<i64>, Option<Reset>) {
    let Some(id) = last_event_id else {
        return (None, None);
    };
    let reset = |reason, resumes_after| {
        (
            Some(resumes_after),
            Some(Reset {
                reason,
                last_event_id: id,
                resumes_after,
            }),
        )
    };
    match bounds {
        // Nothing kept yet: the feed starts at 1, whatever the client had seen before.
        None if id == 0 => (Some(0), None),
        None => reset("unknown_id", 0),
        Some((_, newest)) if id > newest => reset("unknown_id", newest),
        Some((oldest, _)) if id < oldest - 1 => reset("pruned", oldest - 1),
        Some(_) => (Some(id), None),
    }
}

/// Feeds `out` for one client until it must stop, and says why. From a seq, the rows above
/// it come first from the table, then the live ones; from now, only live ones.
///
/// Joining the live broadcast from a seq: the table is replayed, the broadcast subscribed
/// to, and the table replayed again from where the first pass ended. A row the tailer
/// published before the subscription was committed before it, so the second pass reads it;
/// one published after is in the subscription; one in both is skipped by its seq. Each row
/// therefore goes out once, in seq order. (Subscribing first would do too, but a long
/// replay would then overrun the subscription.)
pub async fn follow(feed: Feed, filter: Filter, start: Start, out: mpsc::Sender<Item>) -> Ended {
    let (cursor, live, reset) = match start {
        Start::Live(live) => (None, Some(live), None),
        Start::After { after, reset } => (Some(after), None, reset),
    };
    let mut f = Follower {
        feed,
        filter,
        out,
        cursor,
    };
    match f.run(live, reset).await {
        Ok(never) => match never {},
        Err(ended) => ended,
    }
}

struct Follower {
    feed: Feed,
    filter: Filter,
    out: mpsc::Sender<Item>,
    /// The last seq handled (sent, or not wanted by the filter); None before the first
    /// live row of a stream that started from now.
    cursor: Option<i64>,
}

/// A follower that never stops by itself: it returns only through an [`Ended`].
enum Never {}

impl Follower {
    async fn run(
        &mut self,
        live: Option<broadcast::Receiver<Arc<FeedRow>>>,
        reset: Option<Reset>,
    ) -> Result<Never, Ended> {
        if let Some(reset) = reset {
            self.send(Item::Reset(reset)).await?;
        }
        let mut live = match live {
            Some(live) => live,
            None => {
                self.replay().await?;
                let live = self
                    .feed
                    .subscribe()
                    .await
                    .map_err(|_| Ended::FeedStopped)?;
                self.replay().await?;
                live
            }
        };
        loop {
            let row = tokio::select! {
                () = self.out.closed() => return Err(Ended::ClientGone),
                received = live.recv() => match received {
                    Ok(row) => row,
                    Err(broadcast::error::RecvError::Lagged(n)) => return Err(Ended::Lagged(n)),
                    Err(broadcast::error::RecvError::Closed) => return Err(Ended::FeedStopped),
                },
            };
            match self.cursor {
                Some(c) if row.seq <= c => continue,
                Some(c) if row.seq > c + 1 => {
                    return Err(Ended::Gap {
                        after: c,
                        got: row.seq,
                    });
                }
                _ => {}
            }
            self.cursor = Some(row.seq);
            if self.filter.matches(&row) {
                self.send(Item::Row(row)).await?;
            }
        }
    }

    /// Sends the table's rows above the cursor, a page at a time, until none is left, and
    /// leaves the cursor at the newest row it has looked at (with a filter, rows it did not
    /// want count as handled). Rows pruned under its feet (the pruner deletes from the
    /// oldest end) are told as a reset.
    async fn replay(&mut self) -> Result<(), Ended> {
        let db = self.feed.db().clone();
        loop {
            let cursor = self.cursor.unwrap_or(0);
            // Every row up to this one is committed, so the page below sees all of them.
            let newest_before = store::feed::bounds(&db)
                .await
                .map_err(Ended::Database)?
                .map_or(0, |(_, newest)| newest);
            let rows = store::feed::after(&db, cursor, &self.filter, REPLAY_PAGE)
                .await
                .map_err(Ended::Database)?;
            // Read after the page: if the row after the cursor is still there, nothing
            // above it had been pruned when the page was read (pruning removes a prefix).
            let bounds = store::feed::bounds(&db).await.map_err(Ended::Database)?;
            if let Some((oldest, _)) = bounds
                && oldest > cursor + 1
            {
                self.cursor = Some(oldest - 1);
                self.send(Item::Reset(Reset {
                    reason: "pruned",
                    last_event_id: cursor,
                    resumes_after: oldest - 1,
                }))
                .await?;
                continue;
            }
            let full = rows.len() as i64 == REPLAY_PAGE;
            for row in rows {
                self.cursor = Some(row.seq);
                self.send(Item::Row(Arc::new(row))).await?;
            }
            if !full {
                // A short page saw every row up to `newest_before` the filter wants.
                self.cursor = Some(self.cursor.unwrap_or(0).max(newest_before));
                return Ok(());
            }
        }
    }

    /// Queues `item` for the client, waiting at most [`STALL_TIMEOUT`] for room.
    async fn send(&self, item: Item) -> Result<(), Ended> {
        match tokio::time::timeout(STALL_TIMEOUT, self.out.send(item)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Ended::ClientGone),
            Err(_) => Err(Ended::TooSlow),
        }
    }
}

/// The channel a follower feeds and the stream drains: [`CLIENT_BUFFER`] items.
pub fn buffer() -> (mpsc::Sender<Item>, mpsc::Receiver<Item>) {
    mpsc::channel(CLIENT_BUFFER)
}

#[cfg(test)]
mod tests;
