//! File routes: upload-files, list-dirs, read-file, create-dir, download-file,
//! download-folder. upload-files keeps 200 + `{ok, reason}` (compat-critical); the others
//! answer 404 unknown VM, 409 not running, 400 bad path.
use super::error::{validation, ApiError};
use super::json::{ApiJson, ApiQuery};
use super::AppState;
use crate::manager::guest_ops::{ArchiveFormat, ReadOutcome, UploadFile};
use crate::manager::ManagerError;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
pub struct VmFile {
    #[serde(default = "slash")]
    pub path: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub content_b64: Option<String>,
    /// Numeric mode, decimal in JSON (420 = 0o644); 0 means 0o644.
    pub mode: u32,
}

fn slash() -> String {
    "/".into()
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct VmUploadFiles {
    #[serde(default)]
    pub dest_path: Option<String>,
    #[serde(default)]
    pub clean: Option<bool>,
    pub files: Vec<VmFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FailedFile {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UploadResponse {
    pub ok: bool,
    pub reason: String,
    pub failed: Vec<FailedFile>,
}

fn decode(f: &VmFile) -> Result<Vec<u8>, String> {
    if let Some(t) = f.text.as_deref().filter(|t| !t.is_empty()) {
        return Ok(t.as_bytes().to_vec());
    }
    let raw = f.content_b64.as_deref().unwrap_or("");
    let cleaned: String = raw.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=')).collect();
    base64::engine::general_purpose::STANDARD.decode(cleaned).map_err(|e| format!("content_b64 is not valid base64: {e}"))
}

#[utoipa::path(post, path = "/vms/{vm_id}/upload-files", request_body = VmUploadFiles, responses((status = 200, body = UploadResponse), (status = 404)))]
pub async fn upload_files(
    State(st): State<AppState>,
    Path(vm_id): Path<String>,
    ApiJson(body): ApiJson<VmUploadFiles>,
) -> Result<Json<UploadResponse>, ApiError> {
    let fail = |reason: String| Json(UploadResponse { ok: false, reason, failed: vec![] });
    let dest = body.dest_path.filter(|d| !d.trim().is_empty()).unwrap_or_else(|| "/app".into());
    let clean = body.clean.unwrap_or(false);
    let files: Vec<(String, Result<UploadFile, String>)> = body
        .files
        .iter()
        .map(|f| {
            let mode = if f.mode == 0 { 0o644 } else { f.mode };
            (f.path.clone(), decode(f).map(|content| UploadFile { path: f.path.clone(), content, mode }))
        })
        .collect();
    match st.mgr.upload(&vm_id, &dest, clean, files).await {
        Err(ManagerError::NotFound) => Err(ManagerError::NotFound.into()),
        Err(e) => Ok(fail(e.to_string())),
        Ok(failed) if failed.is_empty() => Ok(Json(UploadResponse { ok: true, reason: String::new(), failed: vec![] })),
        Ok(failed) => {
            let failed: Vec<FailedFile> = failed.into_iter().map(|f| FailedFile { path: f.path, reason: f.reason }).collect();
            let list: Vec<String> = failed.iter().map(|f| format!("{{'path': {:?}, 'reason': {:?}}}", f.path, f.reason)).collect();
            Ok(Json(UploadResponse { ok: false, reason: format!("Failed files: [{}]", list.join(", ")), failed }))
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct UploadFileQuery {
    /// Absolute destination path in the guest.
    #[param(pattern = "^/")]
    pub path: String,
    /// File mode in octal, e.g. `644` or `0755` (default 644).
    #[param(pattern = "^[0-7]{1,5}$")]
    pub mode: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UploadFileResponse {
    pub ok: bool,
    pub path: String,
    pub bytes: u64,
}

/// Streamed single-file upload: the request body is the file's raw bytes, copied to the
/// guest in bounded chunks (no base64, memory does not grow with the file).
#[utoipa::path(put, path = "/vms/{vm_id}/upload-file", params(UploadFileQuery), request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = UploadFileResponse), (status = 400), (status = 404), (status = 409), (status = 422)))]
pub async fn upload_file(
    State(st): State<AppState>,
    Path(vm_id): Path<String>,
    ApiQuery(q): ApiQuery<UploadFileQuery>,
    body: Body,
) -> Result<(StatusCode, Json<UploadFileResponse>), ApiError> {
    let path = q.path;
    let mode = match q.mode.as_deref().filter(|m| !m.is_empty()) {
        None => 0o644,
        Some(m) => {
            u32::from_str_radix(m, 8).ok().filter(|m| *m <= 0o7777).ok_or_else(|| validation(&["query", "mode"], "mode must be octal digits, at most 7777"))?
        }
    };
    let stream = futures::TryStreamExt::map_err(body.into_data_stream(), std::io::Error::other);
    let reader = tokio_util::io::StreamReader::new(stream);
    let bytes = st.mgr.upload_stream(&vm_id, &path, reader, mode).await?;
    Ok((StatusCode::CREATED, Json(UploadFileResponse { ok: true, path: crate::util::normalize_abs(&path), bytes })))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DirEntry {
    pub path: String,
    pub name: String,
    pub path_type: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct VmPaths {
    #[serde(default = "root_paths")]
    pub paths: Vec<String>,
    /// find -maxdepth (default 1, capped at 20).
    #[serde(default = "one")]
    pub depth: u32,
}

fn root_paths() -> Vec<String> {
    vec!["/".into()]
}
fn one() -> u32 {
    1
}

#[utoipa::path(post, path = "/vms/{vm_id}/list-dirs", request_body = VmPaths, responses((status = 200, body = [DirEntry]), (status = 404), (status = 409)))]
pub async fn list_dirs(State(st): State<AppState>, Path(vm_id): Path<String>, ApiJson(body): ApiJson<VmPaths>) -> Result<Json<Vec<DirEntry>>, ApiError> {
    let entries = st.mgr.list_dirs(&vm_id, &body.paths, body.depth).await?;
    Ok(Json(entries.into_iter().map(|e| DirEntry { path: e.path, name: e.name, path_type: e.path_type }).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct VmPath {
    #[serde(default = "slash")]
    pub path: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadFileResponse {
    pub name: String,
    pub content: String,
    pub length: usize,
    pub found: bool,
}

#[utoipa::path(post, path = "/vms/{vm_id}/read-file", request_body = VmPath, responses((status = 200, body = ReadFileResponse), (status = 404), (status = 409), (status = 413)))]
pub async fn read_file(State(st): State<AppState>, Path(vm_id): Path<String>, ApiJson(body): ApiJson<VmPath>) -> Result<Json<ReadFileResponse>, ApiError> {
    let name = body.path.rsplit('/').next().unwrap_or("").to_string();
    Ok(Json(match st.mgr.read_file(&vm_id, &body.path).await? {
        ReadOutcome::Found(data) => {
            let content = utf8_ignore(&data);
            ReadFileResponse { name, length: content.chars().count(), content, found: true }
        }
        ReadOutcome::Missing => ReadFileResponse { name, content: String::new(), length: 0, found: false },
    }))
}

#[utoipa::path(post, path = "/vms/{vm_id}/create-dir", request_body = VmPath, responses((status = 200, body = crate::model::ElementResponse), (status = 404), (status = 409)))]
pub async fn create_dir(
    State(st): State<AppState>,
    Path(vm_id): Path<String>,
    ApiJson(body): ApiJson<VmPath>,
) -> Result<Json<crate::model::ElementResponse>, ApiError> {
    Ok(Json(match st.mgr.create_dir(&vm_id, &body.path).await {
        Ok(()) => crate::model::ElementResponse::ok(),
        Err(e @ (ManagerError::NotFound | ManagerError::NotRunning | ManagerError::Catalog(_))) => return Err(e.into()),
        Err(e) => crate::model::ElementResponse::fail(e.to_string()),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DownloadFileQuery {
    /// The file in the guest.
    pub path: String,
}

/// Decodes as UTF-8 dropping invalid bytes (the original's errors="ignore").
pub fn utf8_ignore(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len());
    for chunk in data.utf8_chunks() {
        s.push_str(chunk.valid());
    }
    s
}

pub fn content_type_for(name: &str) -> String {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    let t = match ext.as_str() {
        "txt" | "log" | "md" | "py" | "rs" | "sh" | "c" | "h" | "go" | "java" | "toml" | "ini" | "cfg" | "conf" => "text/plain",
        "html" | "htm" => "text/html",
        "css" => "text/css",
        "csv" => "text/csv",
        "js" | "mjs" => "text/javascript",
        "json" => "application/json",
        "xml" => "application/xml",
        "yaml" | "yml" => "application/yaml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "tar" => "application/x-tar",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    };
    if t.starts_with("text/") {
        format!("{t}; charset=utf-8")
    } else {
        t.to_string()
    }
}

fn disposition(name: &str) -> HeaderValue {
    let safe: String = name.chars().map(|c| if c == '"' || c == '\\' || c.is_control() { '_' } else { c }).collect();
    let ascii: String = safe.chars().map(|c| if c.is_ascii() { c } else { '_' }).collect();
    let encoded: String =
        safe.bytes().map(|b| if b.is_ascii_alphanumeric() || b".-_".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect();
    HeaderValue::from_str(&format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")).unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

fn stream_body(rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>) -> Body {
    Body::from_stream(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }))
}

#[utoipa::path(get, path = "/vms/{vm_id}/download-file", params(DownloadFileQuery), responses((status = 200, description = "file bytes"), (status = 400), (status = 404), (status = 409), (status = 422)))]
pub async fn download_file(State(st): State<AppState>, Path(vm_id): Path<String>, ApiQuery(q): ApiQuery<DownloadFileQuery>) -> Result<Response, ApiError> {
    let path = q.path;
    // Errors are honest 4xx/5xx with a JSON detail (the platform passes 4xx bodies through),
    // not the original's 200 + ok:false.
    let dl = st.mgr.download_file(&vm_id, &path).await?;
    let name = path.trim_end_matches('/').rsplit('/').next().filter(|s| !s.is_empty()).unwrap_or("download").to_string();
    let mut resp = stream_body(dl.body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_str(&content_type_for(&name)).unwrap_or(HeaderValue::from_static("application/octet-stream")));
    h.insert(header::CONTENT_DISPOSITION, disposition(&name));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(dl.size));
    Ok(resp)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DownloadFolderQuery {
    /// The folder in the guest (default /app).
    pub root: Option<String>,
    /// zip (default) or tar.gz
    #[param(pattern = r"^(zip|tar\.gz)$")]
    pub prefer_fmt: Option<String>,
}

#[utoipa::path(get, path = "/vms/{vm_id}/download-folder", params(DownloadFolderQuery), responses((status = 200, description = "zip or tar.gz stream"), (status = 400), (status = 404), (status = 409), (status = 422)))]
pub async fn download_folder(State(st): State<AppState>, Path(vm_id): Path<String>, ApiQuery(q): ApiQuery<DownloadFolderQuery>) -> Result<Response, ApiError> {
    let prefer_zip = match q.prefer_fmt.as_deref().unwrap_or("zip") {
        "zip" => true,
        "tar.gz" => false,
        _ => return Err(validation(&["query", "prefer_fmt"], "String should match pattern '^(zip|tar\\.gz)$'")),
    };
    let root = q.root.filter(|r| !r.is_empty()).unwrap_or_else(|| "/app".into());
    let (fmt, rx) = st.mgr.download_folder(&vm_id, &root, prefer_zip).await?;
    let base = root.trim_end_matches('/').rsplit('/').next().filter(|s| !s.is_empty()).unwrap_or("archive").to_string();
    let (ctype, name) = match fmt {
        ArchiveFormat::Zip => ("application/zip", format!("{base}.zip")),
        ArchiveFormat::TarGz => ("application/gzip", format!("{base}.tar.gz")),
    };
    let mut resp = stream_body(rx).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    resp.headers_mut().insert(header::CONTENT_DISPOSITION, disposition(&name));
    *resp.status_mut() = StatusCode::OK;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_ignore_drops_invalid_bytes() {
        assert_eq!(utf8_ignore(b"a\xffb\xc3\xa9"), "abé");
    }
}
