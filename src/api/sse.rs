//! Server-Sent Events helpers shared by the byte-stream routes (streamed exec, console).
use base64::Engine;
use serde::Serialize;
use utoipa::ToSchema;

pub type Event = axum::response::sse::Event;

/// Data of an output event: `text` when the bytes are UTF-8 (a character split between
/// chunks is held back for the next event), else `b64`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamData {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b64: Option<String>,
}

impl StreamData {
    pub fn raw(bytes: &[u8]) -> StreamData {
        StreamData { text: None, b64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)) }
    }
}

/// The next piece of a byte stream (`carry`: its incomplete trailing character); None
/// when nothing complete is there yet.
pub fn piece(carry: &mut Vec<u8>, bytes: &[u8]) -> Option<StreamData> {
    match crate::util::utf8_piece(carry, bytes) {
        Ok(t) if t.is_empty() => None,
        Ok(t) => Some(StreamData { text: Some(t), b64: None }),
        Err(raw) => Some(StreamData::raw(&raw)),
    }
}

pub fn event(kind: &str, data: &impl Serialize) -> Event {
    Event::default().event(kind).data(serde_json::to_string(data).unwrap_or_default())
}
