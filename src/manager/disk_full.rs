//! A guest whose disk write finds the host's disk full is stopped by QEMU (its default
//! `werror=enospc`), so that nothing the guest wrote is lost. The service hears that on
//! the VM's events monitor, says so (a `disk_full` step; guest calls answer 409 meanwhile
//! instead of hanging), and lets the guest continue once the host has room again.
use super::{lock, Live, Manager};
use crate::qemu::qmp::Qmp;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often a frozen VM's host disk is looked at again.
const RETRY_EVERY: Duration = Duration::from_secs(2);

impl Manager {
    pub(crate) fn watch_disk_full(self: &Arc<Self>, id: &str, live: &Arc<Live>) {
        let (me, id, weak) = (self.clone(), id.to_string(), Arc::downgrade(live));
        let socket = self.files(&id).events;
        tokio::spawn(async move {
            // QEMU creates the socket as it starts; a VM adopted from an older service has none.
            let Ok(mut q) = Qmp::connect(&socket, Duration::from_secs(10)).await else { return };
            while let Ok(Some(ev)) = q.next_event().await {
                let data = &ev["data"];
                if ev["event"] != "BLOCK_IO_ERROR" || data["action"] != "stop" {
                    continue;
                }
                let why = if data["nospace"] == true {
                    format!("QEMU stopped the guest: a write to its disk found the host's disk full ({}); it continues once space is freed", me.free_here(&id))
                } else {
                    format!("QEMU stopped the guest on a disk error: {}", data["reason"].as_str().unwrap_or("no reason given"))
                };
                tracing::warn!(vm_id = %id, "{why}");
                set_frozen(&weak, Some(why.clone()));
                me.emit_step(&id, "disk_full", Some(why));
                if !me.continue_when_room(&id, &weak, &mut q).await {
                    return;
                }
                set_frozen(&weak, None);
                me.emit_step(&id, "disk_full_cleared", Some(format!("the guest continues ({})", me.free_here(&id))));
            }
        });
    }

    fn free_here(&self, id: &str) -> String {
        match super::capacity::disk_free_mib(&self.files(id).dir) {
            Ok(mib) => format!("{mib} MiB free"),
            Err(e) => format!("free space unknown: {e}"),
        }
    }

    /// Retries `cont` while QEMU holds the guest on an I/O error and the host has room;
    /// false when QEMU went away meanwhile.
    async fn continue_when_room(&self, id: &str, live: &Weak<Live>, q: &mut Qmp) -> bool {
        loop {
            tokio::time::sleep(RETRY_EVERY).await;
            if live.upgrade().is_none_or(|l| *l.exited.borrow()) {
                return false;
            }
            let Ok(status) = q.call("query-status", None).await else { return false };
            if status["status"] != "io-error" {
                // Continued (or stopped on purpose since, by a pause): no longer frozen.
                return true;
            }
            let room = super::capacity::disk_free_mib(&self.files(id).dir).is_ok_and(|mib| mib >= self.cfg.min_free_disk_mib.max(1));
            if room {
                let _ = q.call("cont", None).await;
            }
        }
    }
}

fn set_frozen(live: &Weak<Live>, why: Option<String>) {
    if let Some(l) = live.upgrade() {
        *lock(&l.frozen) = why;
    }
}
