//! How job records are sealed, the same on every backend: a JSON value
//! encrypted with the workspace's data key (AES-256-GCM) and bound by its
//! associated data to its workspace, job and part, so a record copied to
//! another job, step or workspace does not open.

use serde_json::Value;
use wrun_runtime::recipe::Resume;
use zeroize::Zeroizing;

use crate::keys::{self, DataKey};
use crate::storage::{StorageError, StorageResult};

/// The associated data of a sealed job part: `payload`, `error`,
/// `history:<idx>` or `checkpoint:<idx>`.
pub(crate) fn job_aad(workspace: &str, job: &str, part: &str) -> Vec<u8> {
    format!("wrun:job:v1:{workspace}\0{job}\0{part}").into_bytes()
}

/// Seals a JSON value with `dk`, bound to `aad`.
pub(crate) fn seal_json(dk: &DataKey, aad: &[u8], value: &Value) -> StorageResult<Vec<u8>> {
    let plain = Zeroizing::new(
        serde_json::to_vec(value).map_err(|e| StorageError::Damaged {
            what: "a job record".into(),
            reason: e.to_string(),
        })?,
    );
    keys::seal(dk, &plain, aad).map_err(|e| StorageError::Damaged {
        what: "a job record".into(),
        reason: e.to_string(),
    })
}

/// Opens a sealed JSON value; `what` names it in the error.
pub(crate) fn open_json(
    dk: &DataKey,
    sealed: &[u8],
    aad: &[u8],
    what: &str,
) -> StorageResult<Value> {
    let plain = keys::open(dk, sealed, aad).map_err(|e| StorageError::Damaged {
        what: what.into(),
        reason: e.to_string(),
    })?;
    serde_json::from_slice(&plain).map_err(|e| StorageError::Damaged {
        what: what.into(),
        reason: e.to_string(),
    })
}

/// Where a job resumes: after its last step committed in order, with the
/// outputs and marked values of those steps' checkpoints. `steps` are the
/// job's committed steps as stored (index, name, sealed checkpoint), in
/// index order.
pub(crate) fn resume(
    dk: &DataKey,
    workspace: &str,
    job: &str,
    steps: Vec<(i64, String, Option<Vec<u8>>)>,
) -> StorageResult<Resume> {
    let mut resume = Resume::default();
    for (idx, step, checkpoint) in steps {
        let idx = usize::try_from(idx).unwrap_or(usize::MAX);
        // Steps are committed in order; a gap would mean a lost commit.
        if idx != resume.next {
            break;
        }
        if let Some(sealed) = checkpoint {
            let v = open_json(
                dk,
                &sealed,
                &job_aad(workspace, job, &format!("checkpoint:{idx}")),
                &format!("the checkpoint of job {job} step {idx}"),
            )?;
            if let Some(output) = v.get("output") {
                resume.outputs.insert(step, output.clone());
            }
            if let Some(marked) = v.get("marked").and_then(Value::as_array) {
                resume
                    .marked
                    .extend(marked.iter().filter_map(|m| m.as_str().map(String::from)));
            }
        }
        resume.next = idx + 1;
    }
    Ok(resume)
}
