//! `pool_status`: the pool's counts, and the library's own (transactions holding a
//! connection, callers waiting for one), as a health route shows them.

use std::time::Duration;

use transactional::Propagation::*;

use crate::common::{scope, AppResult};
use crate::conformance;

conformance! {
    /// Idle, then one transaction holding a connection (only once it has used it: BEGIN is
    /// lazy), then a second caller waiting while the only connection is held, then idle again.
    async fn pool_status_counts_transactions_and_waiters(env: Env<D>, pool(1, Duration::from_secs(5))) {
        let status = || transactional::pool_status("default").unwrap();
        env.run(async {
            let idle = status();
            assert_eq!(idle.data_source, "default");
            assert_eq!(idle.max_size, 1);
            assert_eq!((idle.transactions, idle.waiting), (0, 0));
            assert_eq!(idle.in_use, 0);

            let (holding_tx, holding) = tokio::sync::oneshot::channel();
            let (release_tx, release) = tokio::sync::oneshot::channel::<()>();
            let holder = async {
                let r: AppResult<()> = scope(Required)
                    .run(async {
                        assert_eq!(status().transactions, 0, "nothing used yet: no connection");
                        env.insert(1).await?;
                        holding_tx.send(()).unwrap();
                        release.await.unwrap();
                        Ok(())
                    })
                    .await;
                r.unwrap();
            };
            let observer = async {
                holding.await.unwrap();
                let held = status();
                assert_eq!((held.transactions, held.in_use, held.idle), (1, 1, 0), "{held}");
                // A second transaction waits for the only connection.
                let waiter = async {
                    let r: AppResult<()> = scope(RequiresNew).run(env.insert(2)).await;
                    r.unwrap();
                };
                let watch = async {
                    for _ in 0..100 {
                        if status().waiting == 1 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    let waiting = status();
                    assert_eq!((waiting.transactions, waiting.waiting), (1, 1), "{waiting}");
                    assert!(waiting.to_string().contains("1 waiting"), "{waiting}");
                    release_tx.send(()).unwrap();
                };
                tokio::join!(waiter, watch);
            };
            tokio::join!(holder, observer);
            env.eventually("the pool is idle again", || async {
                let s = status();
                s.transactions == 0 && s.waiting == 0 && s.in_use == 0
            })
            .await;
        })
        .await;
        assert_eq!(env.ids().await, [1, 2]);
        assert!(transactional::pool_status("no_such_source").is_err());
    }
}
