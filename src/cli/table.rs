//! Human output: tables of VMs and images, a VM's fields.
use serde_json::Value;

/// Left-aligned columns as wide as their widest cell.
fn print_table(head: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(head.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// "3m", "2h", "5d" since or until `t` (epoch seconds).
fn span(secs: f64) -> String {
    let s = secs.abs() as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn vms(v: &Value) {
    let now = crate::model::now();
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|vm| {
            let ssh = match vm["ssh_port"].as_u64() {
                Some(p) => format!("{}:{p}", vm["ssh_host"].as_str().unwrap_or("127.0.0.1")),
                None => "-".into(),
            };
            vec![
                text(&vm["id"]),
                text(&vm["state"]),
                vm["created_at"].as_f64().map(|t| span(now - t)).unwrap_or_else(|| "-".into()),
                vm["expires_at"].as_f64().map(|t| span(t - now)).unwrap_or_else(|| "-".into()),
                vm["booted_from"].as_str().unwrap_or("-").to_string(),
                ssh,
                vm["error_reason"].as_str().map(|r| r.lines().next().unwrap_or_default().chars().take(60).collect()).unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["ID", "STATE", "AGE", "EXPIRES", "FROM", "SSH", "REASON"], &rows);
}

pub fn images(v: &Value) {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let size = i["virtual_size"].as_u64().map(super::progress::human).unwrap_or_else(|| "-".into());
            let built = i["built_at"].as_f64().map(|t| format!("{} ago", span(crate::model::now() - t))).unwrap_or_else(|| "-".into());
            vec![text(&i["name"]), text(&i["boot"]), size, built, text(&i["ssh_user"])]
        })
        .collect();
    print_table(&["NAME", "BOOT", "DISK", "BUILT", "USER"], &rows);
}

pub fn jobs(v: &Value) {
    let now = crate::model::now();
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|j| {
            let exit = match (j["exit_code"].as_i64(), j["signal"].as_str()) {
                (Some(c), _) => c.to_string(),
                (None, Some(s)) => format!("SIG{s}"),
                _ => "-".into(),
            };
            let age = j["started_at"].as_f64().map(|t| span(now - t)).unwrap_or_else(|| "-".into());
            vec![text(&j["job_id"]), text(&j["pid"]), text(&j["status"]), exit, age, text(&j["command"])]
        })
        .collect();
    print_table(&["JOB", "PID", "STATUS", "EXIT", "AGE", "COMMAND"], &rows);
}

pub fn ports(v: &Value) {
    let rows: Vec<Vec<String>> =
        v.as_array().into_iter().flatten().map(|p| vec![text(&p["port"]), text(&p["address"]), text(&p["process"]), text(&p["pid"])]).collect();
    print_table(&["PORT", "ADDRESS", "PROCESS", "PID"], &rows);
}

/// One field per line, by name.
pub fn fields(v: &Value) {
    let Some(map) = v.as_object() else {
        println!("{v}");
        return;
    };
    let width = map.keys().map(|k| k.len()).max().unwrap_or(0);
    for (k, val) in map {
        let shown = match (k.as_str(), val.as_f64()) {
            ("created_at" | "updated_at" | "booted_at" | "expires_at", Some(t)) => {
                let d = crate::model::now() - t;
                if d >= 0.0 {
                    format!("{t:.0} ({} ago)", span(d))
                } else {
                    format!("{t:.0} (in {})", span(d))
                }
            }
            _ => text(val),
        };
        println!("{k:<width$}  {shown}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn spans_pick_a_unit() {
        assert_eq!(super::span(5.0), "5s");
        assert_eq!(super::span(-600.0), "10m");
        assert_eq!(super::span(3.0 * 86400.0), "3d");
    }
}
