//! A blob download that survives a dropped connection: when the body breaks off, it asks again
//! with `Range: bytes=<received>-` and carries on from there (or skips what it already has when
//! the registry ignores ranges), so a big layer that fails mid-way does not start over.

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::queue::OWN_CONNECTION;
use super::upstream::UpstreamRef;
use crate::reference::Digest;
use crate::registry::describe_reqwest_error;

/// Times one blob download may resume after a broken body.
const MAX_RESUMES: u32 = 5;

struct State {
    upstream: UpstreamRef,
    /// Which of the upstream's sources (see `Upstream::source`).
    source: usize,
    repository: String,
    digest: Digest,
    size: u64,
    offset: u64,
    /// Bytes still to discard when a registry answered a range request with the whole body.
    skip: u64,
    body: Option<BoxStream<'static, Result<Bytes, reqwest::Error>>>,
    resumes: u32,
    failed: bool,
}

/// Streams `digest` from one of the upstream's sources, starting with the `first` response and
/// resuming on a broken body. The caller verifies the bytes.
pub fn resumable(
    upstream: UpstreamRef,
    source: usize,
    repository: &str,
    digest: &Digest,
    size: u64,
    first: reqwest::Response,
) -> BoxStream<'static, Result<Bytes, String>> {
    let state = State {
        upstream,
        source,
        repository: repository.to_string(),
        digest: digest.clone(),
        size,
        offset: 0,
        skip: 0,
        body: Some(first.bytes_stream().boxed()),
        resumes: 0,
        failed: false,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        if st.failed {
            return None;
        }
        loop {
            if st.body.is_none() {
                if st.offset >= st.size {
                    return None;
                }
                let client = st.upstream.source(st.source);
                match client
                    .get_blob_from(&st.repository, &st.digest, st.offset, st.size > OWN_CONNECTION)
                    .await {
                    Ok((response, at_offset)) => {
                        st.skip = if at_offset { 0 } else { st.offset };
                        st.body = Some(response.bytes_stream().boxed());
                    }
                    Err(e) => {
                        st.failed = true;
                        return Some((Err(format!("resuming at byte {}: {e}", st.offset)), st));
                    }
                }
            }
            let body = st.body.as_mut()?;
            match body.next().await {
                Some(Ok(mut chunk)) => {
                    if st.skip > 0 {
                        let drop = st.skip.min(chunk.len() as u64) as usize;
                        let _ = chunk.split_to(drop);
                        st.skip -= drop as u64;
                        if chunk.is_empty() {
                            continue;
                        }
                    }
                    st.offset += chunk.len() as u64;
                    st.upstream
                        .transfers
                        .received(&st.digest, chunk.len() as u64);
                    st.upstream.source(st.source).limit_bytes(chunk.len()).await;
                    return Some((Ok(chunk), st));
                }
                Some(Err(e)) if st.resumes < MAX_RESUMES && st.offset < st.size => {
                    st.resumes += 1;
                    tracing::warn!(digest = %st.digest, offset = st.offset, attempt = st.resumes, error = %describe_reqwest_error(&e), "blob download broke off; resuming");
                    st.body = None;
                    tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(st.resumes))).await;
                }
                Some(Err(e)) => {
                    st.failed = true;
                    return Some((Err(describe_reqwest_error(&e)), st));
                }
                None if st.offset < st.size && st.skip == 0 && st.resumes < MAX_RESUMES => {
                    // The body ended early without an error: ask for the rest.
                    st.resumes += 1;
                    tracing::warn!(digest = %st.digest, offset = st.offset, size = st.size, "blob body ended early; resuming");
                    st.body = None;
                }
                None => return None,
            }
        }
    })
    .boxed()
}

/// Downloads `blob` into the run's spool for every target: from a mirror first, then the
/// origin, within the host's transfer slots, verified on the way. A source that fails or sends
/// other bytes is dropped and the next starts the file over.
pub async fn into_spool(
    upstream: UpstreamRef,
    repository: String,
    blob: crate::manifest::Descriptor,
    mut writer: super::spool::SpoolWriter,
) -> Result<(), String> {
    let _slot = upstream.transfers.for_blob(blob.size, &blob.digest).await;
    let mut last_error = None;
    for source in (0..upstream.source_count()).filter(|s| upstream.usable(*s)) {
        let client = upstream.source(source);
        let origin = upstream.is_origin(source);
        let response = match client
            .get_blob_from(&repository, &blob.digest, 0, blob.size > OWN_CONNECTION)
            .await
        {
            Ok((response, _)) => response,
            Err(e) if !origin => {
                upstream.note_failure(source, &e);
                last_error = Some(e.to_string());
                continue;
            }
            Err(e) => return Err(upstream.error(e).to_string()),
        };
        let body = resumable(
            std::sync::Arc::clone(&upstream),
            source,
            &repository,
            &blob.digest,
            blob.size,
            response,
        );
        let mut stream = crate::verify::VerifiedStream::new(body, blob.digest.clone(), blob.size);
        let written = async {
            while let Some(piece) = stream.next_chunk().await? {
                writer.write(&piece).await?;
            }
            stream.finish().await
        }
        .await;
        match written {
            Ok(_) => {
                tracing::debug!(digest = %blob.digest, bytes = blob.size, from = client.host(), "blob downloaded into the spool");
                return Ok(());
            }
            Err(e) if !origin => {
                tracing::info!(mirror = client.host(), digest = %blob.digest, error = %e, "download from mirror failed; trying the next source");
                last_error = Some(e);
                writer.restart().await?;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| "no source for blob".into()))
}
