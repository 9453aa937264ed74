//! Small file helpers shared by the stores, the state directory and the commands.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Reading a file with a size limit failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file does not exist.
    #[error("{} does not exist", path.display())]
    NotFound {
        /// Which file.
        path: PathBuf,
    },
    /// The file could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than the limit.
    #[error("{} is larger than the limit of {max} bytes", path.display())]
    TooLarge {
        /// Which file.
        path: PathBuf,
        /// The limit, in bytes.
        max: u64,
    },
}

/// Read a file, refusing more than `max` bytes (without reading them all).
pub fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ReadError::NotFound {
            path: path.to_path_buf(),
        },
        _ => io(e),
    })?;
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf).map_err(io)?;
    if buf.len() as u64 > max {
        return Err(ReadError::TooLarge {
            path: path.to_path_buf(),
            max,
        });
    }
    Ok(buf)
}

/// Decompressing gzip data with a size limit failed.
#[derive(Debug, thiserror::Error)]
pub enum GunzipError {
    /// The data decompresses to more than the limit (a gzip bomb, or a document too large).
    #[error("it decompresses to more than the limit of {max} bytes")]
    TooLarge {
        /// The limit, in bytes.
        max: u64,
    },
    /// Not valid gzip (a bad header, a truncated stream, a CRC or length mismatch).
    #[error("it is not valid gzip: {source}")]
    Corrupt {
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The two bytes every gzip stream starts with (RFC 1952).
pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Whether `data` starts like a gzip stream.
pub fn is_gzip(data: &[u8]) -> bool {
    data.starts_with(&GZIP_MAGIC)
}

/// gzip `data` at the best compression, with a header that names no file and no time: the
/// same bytes always give the same stream.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::GzBuilder::new().mtime(0).write(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::best(),
    );
    // Writing to a Vec cannot fail.
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

/// Decompress gzip `data` (every member, as gunzip does), refusing to produce more than `max`
/// bytes: it stops after `max + 1`, so a bomb costs at most that much memory.
pub fn gunzip_limited(data: &[u8], max: u64) -> Result<Vec<u8>, GunzipError> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .take(max + 1)
        .read_to_end(&mut out)
        .map_err(|source| GunzipError::Corrupt { source })?;
    if out.len() as u64 > max {
        return Err(GunzipError::TooLarge { max });
    }
    Ok(out)
}

/// The directory a path is in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Create a new temporary file beside `name` in `dir`: a fresh name, `O_EXCL` (never an
/// existing file) and `O_NOFOLLOW` (never through a planted symlink).
fn create_temp(dir: &Path, name: &str) -> std::io::Result<(PathBuf, File)> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut last = None;
    for _ in 0..16 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(
            ".{name}.tmp.{}.{n}.{nanos:08x}",
            std::process::id()
        ));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free temporary name")))
}

/// Write `data` to `path` atomically: a new temporary file in the same directory (see
/// [`create_temp`]), fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = parent_dir(path);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let (tmp, mut f) = create_temp(dir, name)?;
    let result = (|| {
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_limited_names_the_file_and_the_limit() {
        let dir = std::env::temp_dir().join(format!("reyes-fsutil-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        write_atomic(&p, b"12345").unwrap();
        assert_eq!(read_limited(&p, 5).unwrap(), b"12345");
        let e = read_limited(&p, 4).unwrap_err();
        assert!(matches!(e, ReadError::TooLarge { max: 4, .. }), "{e}");
        assert!(e
            .to_string()
            .contains("is larger than the limit of 4 bytes"));
        let e = read_limited(&dir.join("missing"), 4).unwrap_err();
        assert!(matches!(e, ReadError::NotFound { .. }), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn gzip_round_trip_is_deterministic_and_bombs_are_refused() {
        let data = b"{\"format\":1}\n".repeat(1000);
        let z = gzip(&data);
        assert!(is_gzip(&z) && z.len() < data.len() / 10, "{}", z.len());
        assert_eq!(gzip(&data), z, "same input, same bytes");
        assert_eq!(gunzip_limited(&z, data.len() as u64).unwrap(), data);
        // One byte over the limit: refused, without decompressing the rest.
        let e = gunzip_limited(&z, data.len() as u64 - 1).unwrap_err();
        assert!(matches!(e, GunzipError::TooLarge { .. }), "{e}");
        // A bomb: 64 MiB of zeros in ~64 KiB.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 128 << 10, "{}", bomb.len());
        let e = gunzip_limited(&bomb, 1 << 20).unwrap_err();
        assert!(
            matches!(e, GunzipError::TooLarge { max } if max == 1 << 20),
            "{e}"
        );
        // Two members decompress as one stream, as gunzip does.
        let two = [gzip(b"ab"), gzip(b"cd")].concat();
        assert_eq!(gunzip_limited(&two, 10).unwrap(), b"abcd");
        // Truncated or garbage: corrupt, never a panic.
        for bad in [&z[..z.len() / 2], &b"\x1f\x8bxx"[..], &b"not gzip"[..]] {
            let e = gunzip_limited(bad, 1 << 20).unwrap_err();
            assert!(matches!(e, GunzipError::Corrupt { .. }), "{e}");
        }
    }
}
