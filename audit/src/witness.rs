//! The C2SP tlog-witness protocol's format and rules, with no I/O:
//! the `add-checkpoint` request body ([`AddCheckpoint`]), and the
//! decision a witness makes on one ([`judge`]) against the latest
//! checkpoint it cosigned for that origin.
//!
//! The store keeps the witness's state and applies the decision atomically
//! (`store::witness`); the broker serves it over HTTP.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use thiserror::Error;

use crate::note::{Checkpoint, VerifierKey, parse_note};
use crate::tree::verify_consistency;
use crate::{Hash, NoteError};

/// The most consistency proof lines a request may carry (C2SP: "MUST NOT
/// send more than 63").
pub const MAX_PROOF_LINES: usize = 63;
/// The `Content-Type` of a 409 answer's body.
pub const SIZE_CONTENT_TYPE: &str = "text/x.tlog.size";

/// An `add-checkpoint` request: the size the client believes the witness
/// last cosigned, a consistency proof from it, and the new signed note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    /// The previous checkpoint's size (0: none).
    pub old_size: u64,
    /// RFC 6962 §2.1.2 consistency proof from `old_size` to the note's size.
    pub proof: Vec<Hash>,
    /// The checkpoint, a signed note, verbatim.
    pub note: String,
}

/// Why a witness does not cosign, each with its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    /// 400: the request is malformed, or its old size exceeds the checkpoint's.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 403: no signature on the note verifies with a key trusted for the origin.
    #[error("no trusted signature: {0}")]
    Forbidden(NoteError),
    /// 404: the witness does not follow this origin.
    #[error("unknown log origin {0:?}")]
    UnknownLog(String),
    /// 409: the old size is not the latest cosigned size, or the same size
    /// came with another root (a fork). Carries the witness's latest size.
    #[error("conflict: the latest cosigned size is {latest}")]
    Conflict {
        /// The size of the latest checkpoint the witness cosigned.
        latest: u64,
    },
    /// 422: the consistency proof does not verify.
    #[error("the consistency proof does not verify: {0}")]
    Inconsistent(String),
}

impl Refusal {
    /// The HTTP status code C2SP assigns.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::Forbidden(_) => 403,
            Refusal::UnknownLog(_) => 404,
            Refusal::Conflict { .. } => 409,
            Refusal::Inconsistent(_) => 422,
        }
    }
}

impl AddCheckpoint {
    /// The request body: `old N`, proof lines, an empty line, the note.
    pub fn encode(&self) -> String {
        let mut body = format!("old {}\n", self.old_size);
        for hash in &self.proof {
            body.push_str(&STANDARD.encode(hash));
            body.push('\n');
        }
        body.push('\n');
        body.push_str(&self.note);
        body
    }

    /// Parses a request body, refusing anything C2SP does not allow.
    pub fn parse(body: &str) -> Result<Self, Refusal> {
        let bad = |why: &str| Refusal::BadRequest(why.to_string());
        let (head, note) = body.split_once("\n\n").ok_or_else(|| bad("no empty line before the checkpoint"))?;
        let mut lines = head.split('\n');
        let old = lines.next().and_then(|l| l.strip_prefix("old ")).ok_or_else(|| bad("no old size line"))?;
        let canonical =
            !old.is_empty() && old.bytes().all(|b| b.is_ascii_digit()) && (old == "0" || !old.starts_with('0'));
        let old_size = canonical
            .then(|| old.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| bad("old size is not a decimal number"))?;
        let proof = lines
            .map(|line| STANDARD.decode(line).ok().and_then(|h| Hash::try_from(h).ok()))
            .collect::<Option<Vec<Hash>>>()
            .ok_or_else(|| bad("a proof line is not a base64 32-byte hash"))?;
        if proof.len() > MAX_PROOF_LINES {
            return Err(bad("more than 63 proof lines"));
        }
        Ok(Self { old_size, proof, note: note.to_string() })
    }
}

/// The latest checkpoint a witness cosigned for one origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cosigned {
    /// Its size.
    pub size: u64,
    /// Its root.
    pub root: Hash,
}

/// The witness's rules, in the order C2SP gives them: is the origin
/// followed (404), is the note signed by a trusted key (403), is the old
/// size sane (400) and the one last cosigned (409), does an equal size have
/// an equal root (409), does the proof verify (422). `keys` are the keys
/// trusted for the note's origin (empty: not followed); `latest` is what
/// this witness last cosigned for it. On success, the checkpoint to cosign
/// and record.
pub fn judge(keys: &[VerifierKey], latest: Option<&Cosigned>, request: &AddCheckpoint) -> Result<Checkpoint, Refusal> {
    let parts = parse_note(&request.note).map_err(|e| Refusal::BadRequest(e.to_string()))?;
    let claimed = Checkpoint::parse_body(parts.text()).map_err(|e| Refusal::BadRequest(e.to_string()))?;
    if keys.is_empty() {
        return Err(Refusal::UnknownLog(claimed.origin));
    }
    let mut last = NoteError::NoSignature(claimed.origin);
    let checkpoint = keys
        .iter()
        .find_map(|key| key.open(&request.note).map_err(|e| last = e).ok())
        .ok_or(Refusal::Forbidden(last))?;
    if request.old_size > checkpoint.size {
        return Err(Refusal::BadRequest(format!(
            "old size {} is larger than the checkpoint's {}",
            request.old_size, checkpoint.size
        )));
    }
    let latest_size = latest.map_or(0, |l| l.size);
    if request.old_size != latest_size {
        return Err(Refusal::Conflict { latest: latest_size });
    }
    let Some(latest) = latest.filter(|l| l.size > 0) else {
        if !request.proof.is_empty() {
            return Err(Refusal::BadRequest("a proof from size 0 must be empty".into()));
        }
        return Ok(checkpoint);
    };
    if latest.size == checkpoint.size {
        return if latest.root == checkpoint.root {
            Ok(checkpoint)
        } else {
            Err(Refusal::Conflict { latest: latest.size })
        };
    }
    verify_consistency(latest.size, checkpoint.size, &latest.root, &checkpoint.root, &request.proof)
        .map_err(|e| Refusal::Inconsistent(e.to_string()))?;
    Ok(checkpoint)
}

/// The origin line of a request's note, to look up the keys and state
/// [`judge`] needs; a malformed note is a 400.
pub fn origin_of(request: &AddCheckpoint) -> Result<String, Refusal> {
    let parts = parse_note(&request.note).map_err(|e| Refusal::BadRequest(e.to_string()))?;
    Ok(Checkpoint::parse_body(parts.text()).map_err(|e| Refusal::BadRequest(e.to_string()))?.origin)
}

/// Parses a 409 answer's body: the witness's latest size and a newline.
pub fn parse_size_body(body: &str) -> Option<u64> {
    let size = body.strip_suffix('\n')?;
    (!size.is_empty() && size.bytes().all(|b| b.is_ascii_digit())).then(|| size.parse().ok()).flatten()
}
