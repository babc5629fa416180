//! Wake-ups between nodes: a node that queues work tells the others
//! through `NOTIFY wrun_jobs`, and each node listens on a connection of its
//! own, so a job queued through one node starts on another without waiting
//! for the next poll. Polling stays behind it: a notification lost while a
//! listener reconnects delays work by one poll, never loses it.
//!
//! A notification is sent in a small transaction of its own after the
//! work is committed, not inside the work's transaction (PostgreSQL
//! serialises the commits of transactions that notify), and a burst sends
//! one: while one is being sent, further ones are dropped.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;

use super::{PgStore, pg_error};
use crate::storage::StorageResult;

/// The channel.
const CHANNEL: &str = "wrun_jobs";

/// The longest wait before a lost listener connection is opened again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl PgStore {
    /// Tells every listening node that work was queued; a call while one is
    /// being sent is dropped (it would wake the same nodes).
    ///
    /// # Errors
    ///
    /// The database refused it (the others then find the work by polling).
    pub async fn notify_jobs(&self) -> StorageResult<()> {
        if self.notifying.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let result = async {
            self.client()
                .await?
                .execute("SELECT pg_notify($1, '')", &[&CHANNEL])
                .await
                .map_err(pg_error("waking the other nodes"))?;
            Ok(())
        }
        .await;
        self.notifying.store(false, Ordering::Release);
        result
    }

    /// Listens for work queued by any node on a connection of its own and
    /// wakes `wake` for each notification, until `wake` is the last owner
    /// (the runner is gone). A lost connection is opened again with
    /// backoff; every reconnection wakes `wake` once, since notifications
    /// may have been missed meanwhile.
    pub fn listen(&self, wake: Arc<Notify>) {
        let direct = Arc::clone(&self.direct);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                if Arc::strong_count(&wake) == 1 {
                    return;
                }
                let (config, tls) = &*direct;
                match config.connect(tls.clone()).await {
                    Ok((client, mut connection)) => {
                        let listening =
                            async { client.batch_execute(&format!("LISTEN {CHANNEL}")).await };
                        // The connection must be driven for LISTEN to
                        // complete; messages before it are none of ours.
                        let mut listening = std::pin::pin!(listening);
                        let ready = loop {
                            tokio::select! {
                                r = &mut listening => break r.is_ok(),
                                m = std::future::poll_fn(|cx| connection.poll_message(cx)) => {
                                    if m.is_none_or(|m| m.is_err()) {
                                        break false;
                                    }
                                }
                            }
                        };
                        if ready {
                            backoff = Duration::from_millis(100);
                            wake.notify_one();
                            while let Some(Ok(message)) =
                                std::future::poll_fn(|cx| connection.poll_message(cx)).await
                            {
                                if let AsyncMessage::Notification(_) = message {
                                    wake.notify_one();
                                }
                                if Arc::strong_count(&wake) == 1 {
                                    return;
                                }
                            }
                        }
                        tracing::warn!(
                            "the PostgreSQL listener's connection was lost; opening it again"
                        );
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the PostgreSQL listener cannot connect; retrying");
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        });
    }
}
