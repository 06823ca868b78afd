//! Growing a wiped buffer without leaving an unwiped copy behind.

use zeroize::Zeroizing;

/// Appends `data` to `buf`; when it must grow, the bytes move to a new zeroizing buffer and the
/// old one is wiped as it drops (a plain `Vec` would free its old allocation unwiped).
pub fn extend_zeroizing(buf: &mut Zeroizing<Vec<u8>>, data: &[u8]) {
    if buf.capacity() - buf.len() < data.len() {
        let wanted = (buf.len() + data.len()).max(buf.capacity() * 2);
        let mut bigger = Zeroizing::new(Vec::with_capacity(wanted));
        bigger.extend_from_slice(buf);
        *buf = bigger; // the old buffer is wiped as it drops
    }
    buf.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_keeps_contents() {
        let mut buf = Zeroizing::new(Vec::with_capacity(1));
        for i in 0..1000u32 {
            extend_zeroizing(&mut buf, &i.to_le_bytes());
        }
        assert_eq!(buf.len(), 4000);
        assert_eq!(&buf[4..8], &1u32.to_le_bytes());
    }
}
