//! A connection whose transaction is over, made fit for its pool: what its end could not send
//! (a ROLLBACK, the session's reset, SQLite's interrupt disarmed) is sent in a task, bounded;
//! a connection whose cleanup fails is closed, never pooled dirty.

use super::state::{Interrupt, State};
use super::CLEANUP_TIMEOUT;
use crate::dialect::Dialect;
use crate::driver::Conn;
use crate::trace;

/// What a connection needs once its transaction is over, before it can go back to the pool.
pub(super) struct Cleanup {
    rollback: Option<&'static str>,
    reset: Option<&'static str>,
    disarm: bool,
}

impl Cleanup {
    pub(super) fn of(st: &State, dialect: Dialect) -> Cleanup {
        Cleanup {
            rollback: st.life.is_open().then(|| dialect.rollback()),
            reset: st.reset,
            disarm: st.interrupt == Interrupt::Armed,
        }
    }

    /// Cleans `conn` up and returns it to its pool: at once if nothing needs a round trip,
    /// else in a task; closes it if that fails or takes too long.
    pub(super) fn spawn(self, mut conn: Conn) {
        if self.rollback.is_none() && self.reset.is_none() && !self.disarm {
            conn.set_clean(true);
            return;
        }
        conn.set_clean(false);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let cleaned = tokio::time::timeout(CLEANUP_TIMEOUT, async {
                    if let Some(rollback) = self.rollback {
                        conn.ending();
                        conn.run_control(rollback).await?;
                    }
                    if let Some(reset) = self.reset {
                        conn.run_control(reset).await?;
                    }
                    if self.disarm {
                        conn.get_mut().disarm_interrupt().await?;
                    }
                    Ok::<_, sqlx::Error>(())
                })
                .await;
                match cleaned {
                    Ok(Ok(())) => conn.set_clean(true),
                    Ok(Err(error)) => {
                        tracing::warn!(target: trace::TARGET, %error, "cleaning up a connection failed; closing it");
                    }
                    Err(_) => {
                        tracing::warn!(target: trace::TARGET, "cleaning up a connection took too long; closing it");
                    }
                }
            });
        }
    }
}
