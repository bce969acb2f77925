//! The snapshot data openraft streams between nodes: a file and its path.

use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::task::JoinHandle;

/// Writes a file and returns it open for reading, from its start.
pub type MakeFile = Box<dyn FnOnce() -> io::Result<File> + Send>;

/// The snapshot data openraft streams: a file on disk and its path.
///
/// openraft 0.9 only needs `AsyncRead + AsyncWrite + AsyncSeek`; the path
/// rides along so `install_snapshot` can publish a received file by renaming
/// it instead of copying it.
///
/// A snapshot to send may be [`SnapshotFile::deferred`]: its file is written
/// on the blocking pool when it is first read or sought, by the replication
/// task that sends it. openraft asks for the current snapshot at start
/// (only its description is used) and from its state machine worker, which
/// also applies entries: neither may wait for a file that copies every
/// payload.
pub struct SnapshotFile {
    path: PathBuf,
    source: Source,
}

enum Source {
    Open(tokio::fs::File),
    Deferred {
        make: Option<MakeFile>,
        job: Option<JoinHandle<io::Result<File>>>,
        /// A seek asked for before the file was there.
        seek: Option<io::SeekFrom>,
    },
}

impl fmt::Debug for SnapshotFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.source {
            Source::Open(_) => "open",
            Source::Deferred { job: None, .. } => "deferred",
            Source::Deferred { job: Some(_), .. } => "being written",
        };
        f.debug_struct("SnapshotFile")
            .field("path", &self.path)
            .field("state", &state)
            .finish()
    }
}

impl SnapshotFile {
    /// Opens an existing snapshot file for reading.
    pub async fn open(path: impl Into<PathBuf>) -> io::Result<SnapshotFile> {
        let path = path.into();
        let file = tokio::fs::File::open(&path).await?;
        Ok(SnapshotFile::from_tokio(path, file))
    }

    /// Creates a new file to receive a snapshot into; fails if it exists.
    pub async fn create(path: impl Into<PathBuf>) -> io::Result<SnapshotFile> {
        let path = path.into();
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        Ok(SnapshotFile::from_tokio(path, file))
    }

    /// Wraps a file this node opened itself (a snapshot it built or received).
    pub fn from_std(path: PathBuf, file: File) -> SnapshotFile {
        SnapshotFile::from_tokio(path, tokio::fs::File::from_std(file))
    }

    fn from_tokio(path: PathBuf, file: tokio::fs::File) -> SnapshotFile {
        SnapshotFile {
            path,
            source: Source::Open(file),
        }
    }

    /// A file `make` writes on the blocking pool when it is first read or
    /// sought; never, if it is dropped first. `path` names the snapshot in
    /// messages; `make` may leave no file there (it may remove the file
    /// once open, so that it goes when the handle does). Reading only.
    pub fn deferred(path: PathBuf, make: MakeFile) -> SnapshotFile {
        SnapshotFile {
            path,
            source: Source::Deferred {
                make: Some(make),
                job: None,
                seek: None,
            },
        }
    }

    /// Where the snapshot file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes what was written through this handle and fsyncs the file.
    pub async fn sync(&mut self) -> io::Result<()> {
        match &mut self.source {
            Source::Open(file) => {
                file.flush().await?;
                file.sync_all().await
            }
            Source::Deferred { .. } => Err(read_only()),
        }
    }

    /// The open file, once a deferred one is written.
    fn poll_file(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut tokio::fs::File>> {
        if let Source::Deferred { make, job, seek } = &mut self.source {
            let job = match (job.as_mut(), make.take()) {
                (Some(job), _) => job,
                (None, Some(make)) => job.insert(tokio::task::spawn_blocking(make)),
                (None, None) => {
                    return Poll::Ready(Err(io::Error::other(
                        "the deferred snapshot file failed to be written before",
                    )))
                }
            };
            let written = ready!(Pin::new(job).poll(cx));
            let seek = seek.take();
            let file = match written {
                Ok(Ok(file)) => file,
                Ok(Err(e)) => {
                    self.source = failed();
                    return Poll::Ready(Err(e));
                }
                Err(e) => {
                    self.source = failed();
                    return Poll::Ready(Err(io::Error::other(format!(
                        "writing the snapshot file {} stopped: {e}",
                        self.path.display()
                    ))));
                }
            };
            self.source = Source::Open(tokio::fs::File::from_std(file));
            if let (Some(position), Source::Open(file)) = (seek, &mut self.source) {
                Pin::new(file).start_seek(position)?;
            }
        }
        match &mut self.source {
            Source::Open(file) => Poll::Ready(Ok(file)),
            Source::Deferred { .. } => unreachable!("a deferred file is open once written"),
        }
    }
}

/// A deferred file whose writing failed: every later use fails too.
fn failed() -> Source {
    Source::Deferred {
        make: None,
        job: None,
        seek: None,
    }
}

fn read_only() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "a snapshot file written for sending is read only",
    )
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let file = ready!(self.get_mut().poll_file(cx))?;
        Pin::new(file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().source {
            Source::Open(file) => Pin::new(file).poll_write(cx, buf),
            Source::Deferred { .. } => Poll::Ready(Err(read_only())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().source {
            Source::Open(file) => Pin::new(file).poll_flush(cx),
            Source::Deferred { .. } => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().source {
            Source::Open(file) => Pin::new(file).poll_shutdown(cx),
            Source::Deferred { .. } => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        match &mut self.get_mut().source {
            Source::Open(file) => Pin::new(file).start_seek(position),
            // Done once the file is written (`poll_complete`).
            Source::Deferred { seek, .. } => {
                *seek = Some(position);
                Ok(())
            }
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let file = ready!(self.get_mut().poll_file(cx))?;
        Pin::new(file).poll_complete(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};

    use super::*;

    /// A deferred file is written at its first use, once, and reads and
    /// seeks like any other; one never used is never written.
    #[tokio::test]
    async fn a_deferred_file_is_written_at_first_use() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("made");
        let made = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let deferred = |path: PathBuf, made: std::sync::Arc<std::sync::atomic::AtomicU32>| {
            SnapshotFile::deferred(
                path.clone(),
                Box::new(move || {
                    made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    std::fs::write(&path, b"0123456789")?;
                    File::open(&path)
                }),
            )
        };
        drop(deferred(path.clone(), made.clone()));
        assert_eq!(made.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(!path.exists());

        let mut file = deferred(path.clone(), made.clone());
        assert_eq!(file.seek(io::SeekFrom::End(0)).await?, 10);
        file.seek(io::SeekFrom::Start(4)).await?;
        let mut rest = String::new();
        file.read_to_string(&mut rest).await?;
        assert_eq!(rest, "456789");
        assert_eq!(made.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(file.sync().await.is_ok(), "open by now");
        Ok(())
    }

    /// A failed write is reported to the reader, then and at every later use.
    #[tokio::test]
    async fn a_failed_write_fails_every_use() -> anyhow::Result<()> {
        let mut file = SnapshotFile::deferred(
            PathBuf::from("nowhere"),
            Box::new(|| Err(io::Error::other("disk full"))),
        );
        let mut buf = Vec::new();
        let first = file.read_to_end(&mut buf).await.map_err(|e| e.to_string());
        assert_eq!(first, Err("disk full".to_string()));
        assert!(file.read_to_end(&mut buf).await.is_err());
        Ok(())
    }
}
