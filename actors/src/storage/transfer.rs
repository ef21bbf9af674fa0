//! Volume upload and download over a data stream. The stream itself belongs
//! to the connection's stream engine; this module only needs the small
//! [`VolStream`] interface from it (see `stream_glue.rs`), so the transfer
//! logic is the same whoever carries the bytes.
//!
//! The volume is marked in use for the whole transfer (a delete is refused
//! meanwhile) and its facts are read again at the end.

use std::io::SeekFrom;
use std::path::PathBuf;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::disk;
use super::ops;
use crate::error::{Error, Result};

/// libvirtd's largest stream data packet.
const CHUNK: usize = 262_120;

/// What the client sent on the stream.
pub enum Incoming {
    Data(Bytes),
    /// The client asked to finish: confirm with [`VolStream::finish`].
    Finish,
    /// The client aborted the transfer.
    Abort,
}

/// The daemon's end of one data stream.
#[allow(async_fn_in_trait)]
pub trait VolStream {
    /// Sends bytes; `false` once the client is gone.
    async fn send(&mut self, data: &[u8]) -> bool;
    /// What the client sends next; `None` once the stream is gone.
    async fn recv(&mut self) -> Option<Incoming>;
    /// End of data from the daemon's side.
    fn eof(&mut self);
    /// Confirms the client's finish.
    fn finish(self);
    /// Ends the stream with an error the client sees.
    fn fail(self, error: Error);
}

fn sys(e: std::io::Error, what: String) -> Error {
    Error::System(format!("{what}: {}", disk::strip_os_error(&e)))
}

/// Sends `length` bytes (0: to the end) of `path` from `offset`, then waits
/// for the client's finish. Returns the stream when the client finished, for
/// the caller to confirm once the volume is released (so a client that
/// deletes the volume right after its finish is confirmed finds it free).
pub async fn send_file<S: VolStream>(
    mut io: S,
    path: PathBuf,
    offset: u64,
    length: u64,
) -> Option<S> {
    let result: Result<()> = async {
        let mut f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| sys(e, format!("Unable to open '{}'", path.display())))?;
        f.seek(SeekFrom::Start(offset))
            .await
            .map_err(|e| sys(e, format!("Unable to seek {} to {offset}", path.display())))?;
        let mut left = if length == 0 { u64::MAX } else { length };
        let mut buf = vec![0u8; CHUNK];
        while left > 0 {
            let want = left.min(CHUNK as u64) as usize;
            let n = f
                .read(&mut buf[..want])
                .await
                .map_err(|e| sys(e, format!("Unable to read {}", path.display())))?;
            if n == 0 {
                break;
            }
            if !io.send(&buf[..n]).await {
                return Err(Error::OperationAborted(
                    "stream closed by the client".into(),
                ));
            }
            left -= n as u64;
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            io.eof();
            if let Some(Incoming::Finish) = io.recv().await {
                return Some(io);
            }
            None
        }
        Err(Error::OperationAborted(_)) => None,
        Err(e) => {
            io.fail(e);
            None
        }
    }
}

/// Writes what the client sends into `path` from `offset`, at most
/// `length` bytes (0: no limit), until the client finishes. Returns the
/// stream to confirm, as [`send_file`] does, once the data is on disk.
pub async fn receive_file<S: VolStream>(
    mut io: S,
    path: PathBuf,
    offset: u64,
    length: u64,
) -> Option<S> {
    let opened = async {
        let mut f = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .await
            .map_err(|e| sys(e, format!("Unable to open '{}'", path.display())))?;
        f.seek(SeekFrom::Start(offset))
            .await
            .map_err(|e| sys(e, format!("Unable to seek {} to {offset}", path.display())))?;
        Ok::<_, Error>(f)
    }
    .await;
    let mut f = match opened {
        Ok(f) => f,
        Err(e) => {
            io.fail(e);
            return None;
        }
    };
    let mut written: u64 = 0;
    loop {
        match io.recv().await {
            Some(Incoming::Data(d)) => {
                if length != 0 && written + d.len() as u64 > length {
                    io.fail(Error::InvalidArg(format!(
                        "upload of more than the requested {length} bytes"
                    )));
                    return None;
                }
                if let Err(e) = f.write_all(&d).await {
                    io.fail(sys(e, format!("Unable to write {}", path.display())));
                    return None;
                }
                written += d.len() as u64;
            }
            Some(Incoming::Finish) => {
                let synced = f.flush().await.and(f.sync_all().await);
                match synced {
                    Ok(()) => return Some(io),
                    Err(e) => {
                        io.fail(sys(e, format!("cannot sync file '{}'", path.display())));
                        return None;
                    }
                }
            }
            Some(Incoming::Abort) | None => return None,
        }
    }
}

/// A volume transfer's target, marked in use until [`finish_transfer`].
pub struct Transfer {
    pub pool: String,
    pub name: String,
    pub path: PathBuf,
}

/// Marks the volume in use; refuses volumes still being created.
pub async fn begin_transfer(
    drv: &actix::Addr<super::driver::StorageDriver>,
    vol: qemud_protocol::remote::NonnullStorageVol,
) -> Result<Transfer> {
    let (pool, facts, _) = ops::begin_use(drv, vol).await?;
    Ok(Transfer {
        pool,
        name: facts.name,
        path: PathBuf::from(facts.path),
    })
}

/// Unmarks the volume and reads its facts again.
pub async fn finish_transfer(drv: &actix::Addr<super::driver::StorageDriver>, t: Transfer) {
    let _ = ops::end_use(drv, t.pool, t.name, Ok(())).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// An in-memory stream: what the daemon sent, and a script of what the
    /// client sends.
    #[derive(Default)]
    struct Memory {
        sent: Vec<u8>,
        script: VecDeque<Incoming>,
        eof: bool,
        outcome: std::rc::Rc<std::cell::RefCell<Option<std::result::Result<(), String>>>>,
        sink: std::rc::Rc<std::cell::RefCell<Vec<u8>>>,
    }

    impl VolStream for Memory {
        async fn send(&mut self, data: &[u8]) -> bool {
            self.sent.extend_from_slice(data);
            self.sink.borrow_mut().extend_from_slice(data);
            true
        }
        async fn recv(&mut self) -> Option<Incoming> {
            self.script.pop_front()
        }
        fn eof(&mut self) {
            self.eof = true;
        }
        fn finish(self) {
            *self.outcome.borrow_mut() = Some(Ok(()));
        }
        fn fail(self, error: Error) {
            *self.outcome.borrow_mut() = Some(Err(error.to_string()));
        }
    }

    #[actix_rt::test]
    async fn download_range_and_upload_at_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.img");
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();

        let m = Memory {
            script: VecDeque::from([Incoming::Finish]),
            ..Memory::default()
        };
        let (outcome, sink) = (m.outcome.clone(), m.sink.clone());
        // Finished: the caller confirms (after releasing the volume).
        send_file(m, p.clone(), 100, 300_000)
            .await
            .unwrap()
            .finish();
        assert_eq!(*outcome.borrow(), Some(Ok(())));
        assert_eq!(&sink.borrow()[..], &data[100..300_100]);

        let m = Memory {
            script: VecDeque::from([
                Incoming::Data(Bytes::from_static(b"hello")),
                Incoming::Data(Bytes::from_static(b" world")),
                Incoming::Finish,
            ]),
            ..Memory::default()
        };
        let outcome = m.outcome.clone();
        receive_file(m, p.clone(), 10, 0).await.unwrap().finish();
        assert_eq!(*outcome.borrow(), Some(Ok(())));
        let now = std::fs::read(&p).unwrap();
        assert_eq!(&now[10..21], b"hello world");
        assert_eq!(now.len(), data.len(), "an upload never truncates");

        // More than asked for is refused.
        let m = Memory {
            script: VecDeque::from([
                Incoming::Data(Bytes::from_static(b"toolong")),
                Incoming::Finish,
            ]),
            ..Memory::default()
        };
        let outcome = m.outcome.clone();
        assert!(receive_file(m, p.clone(), 0, 3).await.is_none());
        assert!(matches!(&*outcome.borrow(), Some(Err(_))));
    }
}
