//! The snapshot data openraft streams between nodes: a file and its path.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The snapshot data openraft streams: a file on disk and its path.
///
/// openraft 0.9 only needs `AsyncRead + AsyncWrite + AsyncSeek`; the path
/// rides along so `install_snapshot` can publish a received file by renaming
/// it instead of copying it.
#[derive(Debug)]
pub struct SnapshotFile {
    path: PathBuf,
    file: tokio::fs::File,
}

impl SnapshotFile {
    /// Opens an existing snapshot file for reading.
    pub async fn open(path: impl Into<PathBuf>) -> io::Result<SnapshotFile> {
        let path = path.into();
        let file = tokio::fs::File::open(&path).await?;
        Ok(SnapshotFile { path, file })
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
        Ok(SnapshotFile { path, file })
    }

    /// Wraps a file this node opened itself (a snapshot it built or received).
    pub fn from_std(path: PathBuf, file: File) -> SnapshotFile {
        SnapshotFile {
            path,
            file: tokio::fs::File::from_std(file),
        }
    }

    /// Where the snapshot file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes what was written through this handle and fsyncs the file.
    pub async fn sync(&mut self) -> io::Result<()> {
        self.file.flush().await?;
        self.file.sync_all().await
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().file).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        Pin::new(&mut self.get_mut().file).start_seek(position)
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Pin::new(&mut self.get_mut().file).poll_complete(cx)
    }
}
