//! QEMU exit observation: a child we spawned is awaited; an adopted one is polled. An
//! exit nobody asked for is written to the catalog at once.
use super::{Manager, Running};
use crate::model::VmState;
use crate::qemu::process;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Child;
use tokio::sync::watch;

impl Manager {
    pub(crate) fn watch_child(self: &Arc<Self>, id: &str, mut child: Child, port: u16) -> Running {
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        let (tx, rx) = watch::channel(false);
        let stopping = Arc::new(AtomicBool::new(false));
        let me = self.clone();
        let (vid, stop_flag) = (id.to_string(), stopping.clone());
        let span = tracing::info_span!("vm.watch", vm_id = %id, pid);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let status = child.wait().await;
                let _ = tx.send(true);
                let desc = match status {
                    Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                        (Some(0), _) => None,
                        (Some(c), _) => Some(format!("exit code {c}")),
                        (None, Some(sig)) => Some(format!("killed by signal {sig}")),
                        _ => Some("unknown status".to_string()),
                    },
                    Err(e) => Some(format!("wait failed: {e}")),
                };
                me.on_exit(&vid, pid, port, &stop_flag, desc).await;
            },
            span,
        ));
        Running { pid, port, exited: rx, stopping }
    }

    pub(crate) fn watch_adopted(self: &Arc<Self>, id: &str, pid: i32, port: u16) -> Running {
        let (tx, rx) = watch::channel(false);
        let stopping = Arc::new(AtomicBool::new(false));
        let me = self.clone();
        let (vid, stop_flag) = (id.to_string(), stopping.clone());
        let span = tracing::info_span!("vm.watch", vm_id = %id, pid);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                while process::is_alive(pid) {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                let _ = tx.send(true);
                me.on_exit(&vid, pid, port, &stop_flag, Some("exited (adopted process; status unknown)".into())).await;
            },
            span,
        ));
        Running { pid, port, exited: rx, stopping }
    }

    async fn on_exit(&self, id: &str, pid: i32, port: u16, stopping: &AtomicBool, desc: Option<String>) {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let slot = self.slot(id);
        {
            let mut r = slot.running.lock().unwrap_or_else(|p| p.into_inner());
            if r.as_ref().map(|r| r.pid) != Some(pid) {
                return;
            }
            *r = None;
        }
        let pool = slot.pool.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(p) = pool {
            p.close().await;
        }
        self.ports.release(port);
        let tail = crate::manager::console::console_tail(&self.files(id).console, 20);
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
        if let Err(e) = res {
            tracing::error!(vm_id = %id, error = %e, "could not record QEMU exit");
        }
        self.emit_state(id, state, Some(reason));
    }
}
