//! One exchange with one witness: send the log's checkpoint with a
//! consistency proof from the size the witness last cosigned, follow its
//! 409s to the size it reports, and say what came of it. Used by the
//! rounds after each seal and by the check on start.

use sealmq_audit::CosignerKey;
use sealmq_audit::store::{Cosignatures, LogReader, SealedBlock, StoreError, now_ms};
use sealmq_audit::witness::{AddCheckpoint, SIZE_CONTENT_TYPE, parse_size_body};

use super::client::WitnessClient;

/// 409s followed in one exchange before giving up (each names a new size;
/// more than a few means the witness's state moves under us).
const MAX_CONFLICTS: usize = 3;

/// What one exchange with a witness showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It cosigned; the line is stored.
    Cosigned,
    /// It has cosigned a larger tree of this log than this database holds:
    /// the log was rolled back (an older copy of the database).
    Behind {
        /// The size the witness cosigned.
        witness_size: u64,
    },
    /// It has cosigned a tree this log does not extend: another history
    /// at the same size, or a proof from its size that does not verify.
    Fork {
        /// What the witness said.
        why: String,
    },
    /// It refused for another reason (unknown log 404, untrusted key 403,
    /// malformed 400, an unexpected status), or its answer was unusable.
    Refused {
        /// The HTTP status, 0 when there was no answer.
        status: u16,
        /// What happened.
        why: String,
    },
}

/// A witness as the log knows it.
pub struct Target<'a> {
    /// Its policy name.
    pub name: &'a str,
    /// Its key.
    pub key: &'a CosignerKey,
    /// Its submission prefix.
    pub url: &'a str,
}

/// Asks `target` to cosign `block`'s checkpoint, storing the cosignature.
pub async fn exchange(
    client: &WitnessClient,
    reader: &LogReader,
    store: &Cosignatures,
    target: &Target<'_>,
    block: &SealedBlock,
) -> Result<Outcome, StoreError> {
    let size = block.header.tree_size;
    let witness = target.key.to_string();
    // What this database believes the witness last cosigned; a guess, the
    // witness corrects it with a 409.
    let mut old = store.latest(&witness).await?.map(|(s, _)| s).filter(|&s| s <= size).unwrap_or(0);
    // A sealed checkpoint carries the log's signature only; cosignatures
    // are kept apart and merged when served.
    let note = &block.checkpoint;
    for _ in 0..=MAX_CONFLICTS {
        let proof = reader.consistency_proof(old, size).await?;
        let body = AddCheckpoint { old_size: old, proof, note: note.clone() }.encode();
        let answer = match client.add_checkpoint(target.url, body).await {
            Ok(answer) => answer,
            Err(e) => return Ok(Outcome::Refused { status: 0, why: e.to_string() }),
        };
        match answer.status {
            200 => return accept(store, target, &witness, size, note, &answer.body).await,
            409 => {
                let reported = (answer.content_type.as_deref().is_some_and(|t| t.starts_with(SIZE_CONTENT_TYPE)))
                    .then(|| parse_size_body(&answer.body))
                    .flatten();
                let Some(latest) = reported else {
                    return Ok(Outcome::Refused {
                        status: 409,
                        why: format!("malformed 409 answer {:?}", answer.body),
                    });
                };
                if latest > size {
                    return Ok(Outcome::Behind { witness_size: latest });
                }
                if latest == size && old == size {
                    return Ok(Outcome::Fork {
                        why: format!("the witness cosigned another tree of size {size} (409 on the same size)"),
                    });
                }
                old = latest;
            }
            422 => {
                return Ok(Outcome::Fork {
                    why: format!(
                        "the witness found no consistency from the size {old} it cosigned to {size} (422: {})",
                        answer.body.trim()
                    ),
                });
            }
            status => return Ok(Outcome::Refused { status, why: answer.body.trim().chars().take(300).collect() }),
        }
    }
    Ok(Outcome::Refused { status: 409, why: "the witness's size kept changing".into() })
}

/// Checks a 200 answer's lines with the witness's key and stores its line.
async fn accept(
    store: &Cosignatures,
    target: &Target<'_>,
    witness: &str,
    size: u64,
    note: &str,
    answer: &str,
) -> Result<Outcome, StoreError> {
    let mine: Vec<&str> = answer
        .split_inclusive('\n')
        .filter(|line| line.ends_with('\n') && target.key.check(&format!("{note}{line}")).ok().flatten().is_some())
        .collect();
    let Some(line) = mine.first() else {
        return Ok(Outcome::Refused {
            status: 200,
            why: "no valid cosignature from the witness's key in its answer".into(),
        });
    };
    store.record(witness, size, line, now_ms()).await?;
    tracing::debug!(witness = target.name, size, "cosigned");
    Ok(Outcome::Cosigned)
}
