//! Message files (pickup, replay, outboxes): read a piece at a time, so a file of any size
//! takes bounded memory. Files may have LF or CRLF line endings; the message read has CRLF.

use super::body::{BodyBuilder, SpoolPlace, CHUNK};
use super::{header_end, CrlfStream, Message};
use std::io::{self, Read};
use std::path::Path;

/// The largest header block a file may have.
pub const MAX_HEADER: usize = 256 * 1024;

/// Reads the message in `path`: its header block in memory, its body spooled to `place` once
/// it passes the spool threshold. Blocking.
pub fn read(path: &Path, place: Option<&SpoolPlace>) -> io::Result<Message> {
    read_limited(path, place, u64::MAX)
}

/// [`read`], refusing (`InvalidData`) a file that is not a regular file (a symlink is never
/// followed) or is larger than `max` bytes.
pub fn read_limited(path: &Path, place: Option<&SpoolPlace>, max: u64) -> io::Result<Message> {
    use std::os::unix::fs::OpenOptionsExt;
    let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                invalid("a symlink: only regular files are taken".into())
            } else {
                e
            }
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(invalid("not a regular file".into()));
    }
    if meta.len() > max {
        return Err(invalid(format!(
            "{} bytes, larger than the size limit of {max} bytes",
            meta.len()
        )));
    }
    let mut file = file.take(max.saturating_add(1));
    let mut crlf = CrlfStream::default();
    let mut buffer = vec![0u8; CHUNK];
    let mut head = Vec::new();
    let at = loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            if file.limit() == 0 {
                return Err(invalid(format!(
                    "larger than the size limit of {max} bytes"
                )));
            }
            // The whole file was read before the header block ended: it is small.
            return Ok(Message::parse(&head));
        }
        crlf.push(&buffer[..n], &mut head);
        if let Some(at) = header_end(&head) {
            break at;
        }
        if head.len() > MAX_HEADER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the header block is larger than {MAX_HEADER} bytes"),
            ));
        }
    };
    let mut body = BodyBuilder::new(place.cloned());
    body.push(&head[at..])?;
    head.truncate(at);
    let mut out = Vec::with_capacity(CHUNK + CHUNK / 8);
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        out.clear();
        crlf.push(&buffer[..n], &mut out);
        body.push(&out)?;
    }
    if file.limit() == 0 {
        // It grew past the limit while being read.
        return Err(invalid(format!(
            "larger than the size limit of {max} bytes"
        )));
    }
    Ok(Message::with_body(&head, body.finish()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_file_is_read_with_its_body_spooled_and_crlf_endings() {
        let dir = std::env::temp_dir().join(format!("mta-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.eml");
        let line = "x".repeat(99) + "\n";
        let body = line.repeat(5000);
        std::fs::write(&path, format!("Subject: big\nTo: a@b.test\n\n{body}")).unwrap();
        let place = SpoolPlace::named(&dir.join("spool"));
        let m = read(&path, Some(&place)).unwrap();
        assert_eq!(m.header("subject").as_deref(), Some("big"));
        assert!(m.body().is_spooled());
        assert_eq!(
            m.to_vec().unwrap(),
            crate::message::to_crlf(format!("Subject: big\nTo: a@b.test\n\n{body}").as_bytes())
        );
        std::fs::write(&path, "Subject: small\n\nhi\n").unwrap();
        let m = read(&path, Some(&place)).unwrap();
        assert!(!m.body().is_spooled());
        assert_eq!(m.to_vec().unwrap(), b"Subject: small\r\n\r\nhi\r\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
