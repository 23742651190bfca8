//! The stream transport's framing: a `u32` big-endian length, then one sealed packet of at most
//! [`MAX_SEALED_LEN`] bytes. One exchange per connection: the dialling side writes a frame and,
//! for a push-pull request, reads the answer frame; then the connection closes. Every read,
//! write and connect has a deadline, so a peer that stalls costs one task for a few seconds
//! and never holds the runtime.

use std::time::Duration;

use tern_gossip::crypto::MAX_SEALED_LEN;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest wait to connect to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for one frame to be read or written.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes announced, at most {MAX_SEALED_LEN} allowed")]
    TooLarge(usize),
    #[error("the connection closed in the middle of a frame")]
    Truncated,
    #[error("no complete frame within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one frame within `within`. The buffer grows only as bytes arrive, so an announced
/// length costs nothing until the peer sends that much.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    within: Duration,
) -> Result<Vec<u8>, FrameError> {
    let read = async {
        let mut length = [0u8; 4];
        reader.read_exact(&mut length).await?;
        let length = u32::from_be_bytes(length) as usize;
        if length > MAX_SEALED_LEN {
            return Err(FrameError::TooLarge(length));
        }
        let mut frame = Vec::with_capacity(length.min(64 * 1024));
        (&mut *reader)
            .take(length as u64)
            .read_to_end(&mut frame)
            .await?;
        if frame.len() != length {
            return Err(FrameError::Truncated);
        }
        Ok(frame)
    };
    tokio::time::timeout(within, read)
        .await
        .map_err(|_| FrameError::Timeout(within))?
}

/// Writes one frame within `within`.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &[u8],
    within: Duration,
) -> Result<(), FrameError> {
    if frame.len() > MAX_SEALED_LEN {
        return Err(FrameError::TooLarge(frame.len()));
    }
    let write = async {
        writer
            .write_all(&(frame.len() as u32).to_be_bytes())
            .await?;
        writer.write_all(frame).await?;
        writer.flush().await?;
        Ok(())
    };
    tokio::time::timeout(within, write)
        .await
        .map_err(|_| FrameError::Timeout(within))?
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn frames_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, b"hello", T).await.unwrap();
        write_frame(&mut a, b"", T).await.unwrap();
        assert_eq!(read_frame(&mut b, T).await.unwrap(), b"hello");
        assert_eq!(read_frame(&mut b, T).await.unwrap(), b"");
    }

    #[tokio::test]
    async fn oversized_truncated_and_stalled_frames_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&((MAX_SEALED_LEN as u32) + 1).to_be_bytes())
            .await
            .unwrap();
        assert!(matches!(
            read_frame(&mut b, T).await,
            Err(FrameError::TooLarge(n)) if n == MAX_SEALED_LEN + 1
        ));

        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&10u32.to_be_bytes()).await.unwrap();
        a.write_all(b"abc").await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame(&mut b, T).await,
            Err(FrameError::Truncated)
        ));

        // A peer that announces a frame and then stalls.
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&100u32.to_be_bytes()).await.unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(
            read_frame(&mut b, Duration::from_millis(100)).await,
            Err(FrameError::Timeout(_))
        ));
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(a);

        let (mut a, _b) = tokio::io::duplex(16);
        assert!(matches!(
            write_frame(&mut a, &vec![0; MAX_SEALED_LEN + 1], T).await,
            Err(FrameError::TooLarge(_))
        ));
        // A reader that never reads: the write times out instead of hanging.
        assert!(matches!(
            write_frame(&mut a, &[0; 1024], Duration::from_millis(100)).await,
            Err(FrameError::Timeout(_))
        ));
    }
}
