//! QEMU exit observation: each QEMU is held by a pidfd and watched by one task, which
//! also keeps its console log within bounds while it runs. An exit nobody asked for is
//! written to the catalog at once.
use super::{lock, Live, Manager};
use crate::model::VmState;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Manager {
    /// Watches `live` until its QEMU exits (`exit` resolves), then records the exit.
    pub(crate) fn watch_qemu(
        self: &Arc<Self>,
        id: &str,
        live: Arc<Live>,
        exit: impl std::future::Future<Output = crate::qemu::process::ExitDesc> + Send + 'static,
        tx: tokio::sync::watch::Sender<bool>,
    ) {
        let me = self.clone();
        let id = id.to_string();
        let console = self.slot(&id).console.clone();
        let span = tracing::info_span!("vm.watch", vm_id = %id, pid = live.pid());
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let mut gone = tx.subscribe();
                let watching = console.watch_while(async move {
                    let _ = gone.wait_for(|e| *e).await;
                });
                let waiting = async {
                    let desc = exit.await;
                    let _ = tx.send(true);
                    desc
                };
                let (desc, ()) = tokio::join!(waiting, watching);
                me.on_exit(&id, &live, desc).await;
                // `live` (and so its port) is let go here, after QEMU is gone.
            },
            span,
        ));
    }

    async fn on_exit(&self, id: &str, live: &Arc<Live>, desc: crate::qemu::process::ExitDesc) {
        if live.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Some(slot) = self.existing_slot(id) else { return };
        {
            let mut cur = lock(&slot.live);
            if !cur.as_ref().is_some_and(|l| Arc::ptr_eq(l, live)) {
                return;
            }
            *cur = None;
        }
        if let Some(g) = live.guest() {
            g.close().await;
        }
        let tail = self.console_tail(id, 20).await;
        let (state, reason) = match desc {
            None => (VmState::Stopped, "the guest powered itself off".to_string()),
            Some(d) => (VmState::Error, format!("qemu {d}; console tail:\n{tail}")),
        };
        let r2 = reason.clone();
        let res = self
            .catalog
            .update(
                id,
                Box::new(move |r| {
                    // A boot in progress reports its own failure.
                    if r.state == VmState::Running {
                        r.state = state;
                        r.error_reason = Some(r2);
                        r.ssh_port = None;
                    }
                }),
            )
            .await;
        match res {
            Ok(Some(r)) if r.state == state => self.emit_state(id, state, Some(reason)),
            Ok(_) => {}
            Err(e) => tracing::error!(vm_id = %id, error = %e, "could not record QEMU exit"),
        }
    }
}
