//! Multipart uploads whose id is known before their first part. A store
//! keeps the parts of an upload that is neither completed nor aborted —
//! and bills for them — while no listing shows them as objects. An upload
//! cut short by a killed operator or a timed-out run can only be aborted by
//! whoever knows its id, so the backup records the id (in its status)
//! before any part is sent, and the next run aborts what it finds there.
//!
//! `object_store`'s `WriteMultipart` keeps the id to itself; this writer
//! drives the store's `MultipartStore` API instead, with the same fixed
//! part size and bounded parts in flight.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{MultipartId, PutPayload};

type PartUpload = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<PartId, object_store::Error>> + Send>,
>;

/// Writes one multipart upload in parts of `part_size` bytes, at most
/// `in_flight` of them being sent at once.
pub struct PartWriter {
    store: Arc<dyn MultipartStore>,
    path: Path,
    id: MultipartId,
    part_size: usize,
    in_flight: usize,
    buffer: BytesMut,
    sending: FuturesOrdered<PartUpload>,
    parts: Vec<PartId>,
    next_part: usize,
}

impl PartWriter {
    /// A writer for the upload `id` of `path`, begun with
    /// [`MultipartStore::create_multipart`].
    pub fn new(
        store: Arc<dyn MultipartStore>,
        path: Path,
        id: MultipartId,
        part_size: usize,
        in_flight: usize,
    ) -> Self {
        PartWriter {
            store,
            path,
            id,
            part_size,
            in_flight: in_flight.max(1),
            buffer: BytesMut::new(),
            sending: FuturesOrdered::new(),
            parts: vec![],
            next_part: 0,
        }
    }

    /// Appends `data`, sending every full part; waits while `in_flight`
    /// parts are being sent, so memory stays bounded.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), object_store::Error> {
        self.buffer.extend_from_slice(data);
        while self.buffer.len() >= self.part_size {
            let part = self.buffer.split_to(self.part_size).freeze();
            self.send(part).await?;
        }
        Ok(())
    }

    async fn send(&mut self, part: Bytes) -> Result<(), object_store::Error> {
        while self.sending.len() >= self.in_flight {
            self.collect_one().await?;
        }
        let (store, path, id, index) = (
            self.store.clone(),
            self.path.clone(),
            self.id.clone(),
            self.next_part,
        );
        self.next_part += 1;
        self.sending.push_back(Box::pin(async move {
            store
                .put_part(&path, &id, index, PutPayload::from_bytes(part))
                .await
        }));
        Ok(())
    }

    async fn collect_one(&mut self) -> Result<(), object_store::Error> {
        if let Some(part) = self.sending.next().await {
            self.parts.push(part?);
        }
        Ok(())
    }

    /// Sends what is left and completes the upload: only now does the
    /// object exist.
    pub async fn finish(mut self) -> Result<(), object_store::Error> {
        // A store wants at least one part, even of an empty object.
        if !self.buffer.is_empty() || self.next_part == 0 {
            let last = self.buffer.split().freeze();
            self.send(last).await?;
        }
        while !self.sending.is_empty() {
            self.collect_one().await?;
        }
        self.store
            .complete_multipart(&self.path, &self.id, self.parts)
            .await
            .map(drop)
    }

    /// Aborts the upload: the store drops its parts.
    pub async fn abort(self) -> Result<(), object_store::Error> {
        drop(self.sending);
        abort(self.store.as_ref(), &self.path, &self.id).await
    }
}

/// Aborts upload `id` of `path`. An upload the store no longer knows
/// (aborted or completed already) is no error: nothing is left of it.
pub async fn abort(
    store: &dyn MultipartStore,
    path: &Path,
    id: &MultipartId,
) -> Result<(), object_store::Error> {
    match store.abort_multipart(path, id).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn parts_arrive_in_order_and_the_object_exists_only_when_finished() {
        let memory = Arc::new(InMemory::new());
        let path = Path::from("a/b.db");
        let id = memory.create_multipart(&path).await.expect("create");
        let mut writer = PartWriter::new(memory.clone(), path.clone(), id, 4, 2);
        let data: Vec<u8> = (0..=250u8).collect();
        for chunk in data.chunks(7) {
            writer.write(chunk).await.expect("write");
        }
        assert!(memory.head(&path).await.is_err(), "no object before finish");
        writer.finish().await.expect("finish");
        let stored = memory
            .get(&path)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        assert_eq!(stored.as_ref(), data.as_slice());
    }

    #[tokio::test]
    async fn an_empty_upload_is_one_empty_part() {
        let memory = Arc::new(InMemory::new());
        let path = Path::from("empty.db");
        let id = memory.create_multipart(&path).await.expect("create");
        PartWriter::new(memory.clone(), path.clone(), id, 4, 2)
            .finish()
            .await
            .expect("finish");
        let stored = memory.get(&path).await.expect("get");
        assert_eq!(stored.meta.size, 0);
    }

    #[tokio::test]
    async fn an_aborted_upload_leaves_nothing() {
        let memory = Arc::new(InMemory::new());
        let path = Path::from("gone.db");
        let id = memory.create_multipart(&path).await.expect("create");
        let mut writer = PartWriter::new(memory.clone(), path.clone(), id.clone(), 4, 2);
        writer.write(b"0123456789").await.expect("write");
        writer.abort().await.expect("abort");
        assert!(memory.head(&path).await.is_err());
        // The store no longer takes parts for it. (That aborting an upload
        // S3 no longer knows is no error is proven against S3 itself, in
        // the operator-restart test.)
        let late = memory
            .put_part(&path, &id, 0, PutPayload::from_static(b"late"))
            .await;
        assert!(late.is_err());
    }
}
