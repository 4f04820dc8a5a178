//! The netlink wire format every family shares: the 16-byte message header and the attribute
//! TLV (`struct nlattr`: native-endian length and type, the value, padding to 4 bytes; nested
//! attributes carry `NLA_F_NESTED`). One reader ([`attrs`]) and one writer ([`AttrWriter`]) for the
//! codecs netlink-packet-route does not cover (netconf, tc options, nf_tables, conntrack).

use netlink_packet_core::{NLA_F_NESTED, NLA_TYPE_MASK};

/// `sizeof(struct nlmsghdr)`.
pub const HEADER_LEN: usize = 16;

/// Rounds `len` up to netlink's 4-byte alignment.
pub const fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// A whole netlink message: header (length filled in) and `body`.
pub fn message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = HEADER_LEN + body.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: the kernel.
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(body);
    out
}

/// One attribute as read: its type (flag bits cleared), its value, and the whole TLV as received
/// (header and value, without padding) for sending it back unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr<'a> {
    /// `nla_type & NLA_TYPE_MASK`.
    pub kind: u16,
    /// The value, without header or padding.
    pub value: &'a [u8],
    /// Header and value.
    pub raw: &'a [u8],
}

impl<'a> Attr<'a> {
    /// The attributes nested in this one.
    pub fn nested(&self) -> Attrs<'a> {
        attrs(self.value)
    }

    /// The value with one trailing NUL removed (netlink strings are NUL-terminated).
    pub fn bytes_z(&self) -> &'a [u8] {
        self.value.strip_suffix(&[0]).unwrap_or(self.value)
    }

    /// The value as text (lossy), without its trailing NUL.
    pub fn string(&self) -> String {
        String::from_utf8_lossy(self.bytes_z()).into_owned()
    }

    /// A big-endian `u32` (nf_tables and ctnetlink numbers); `None` unless exactly 4 bytes.
    pub fn u32_be(&self) -> Option<u32> {
        <[u8; 4]>::try_from(self.value).ok().map(u32::from_be_bytes)
    }

    /// A native-endian `u32` (rtnetlink numbers); `None` unless exactly 4 bytes.
    pub fn u32_ne(&self) -> Option<u32> {
        <[u8; 4]>::try_from(self.value).ok().map(u32::from_ne_bytes)
    }

    /// A big-endian `u64`; `None` unless exactly 8 bytes.
    pub fn u64_be(&self) -> Option<u64> {
        <[u8; 8]>::try_from(self.value).ok().map(u64::from_be_bytes)
    }
}

/// The attributes of a buffer, in order; the walk stops at the first malformed one (a length
/// below the header or past the end), as the kernel's `nla_for_each_attr` does.
#[derive(Debug, Clone, Copy)]
pub struct Attrs<'a> {
    buf: &'a [u8],
}

/// Walks the attributes in `buf`.
pub fn attrs(buf: &[u8]) -> Attrs<'_> {
    Attrs { buf }
}

impl<'a> Attrs<'a> {
    /// The first attribute of type `kind`.
    pub fn get(self, kind: u16) -> Option<Attr<'a>> {
        self.into_iter().find(|a| a.kind == kind)
    }

    /// Every attribute of type `kind` (list elements).
    pub fn all(self, kind: u16) -> impl Iterator<Item = Attr<'a>> {
        self.into_iter().filter(move |a| a.kind == kind)
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Attr<'a>;

    fn next(&mut self) -> Option<Attr<'a>> {
        let header = self.buf.get(..4)?;
        let len = usize::from(u16::from_ne_bytes([header[0], header[1]]));
        let kind = u16::from_ne_bytes([header[2], header[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > self.buf.len() {
            self.buf = &[];
            return None;
        }
        let attr = Attr { kind, value: &self.buf[4..len], raw: &self.buf[..len] };
        self.buf = self.buf.get(align(len)..).unwrap_or(&[]);
        Some(attr)
    }
}

/// Attributes being written: native-endian headers, values padded to 4 bytes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AttrWriter(Vec<u8>);

impl AttrWriter {
    /// An empty attribute list.
    pub fn new() -> AttrWriter {
        AttrWriter(Vec::new())
    }

    /// The bytes written so far.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The bytes written, taken out.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Appends bytes that are already attributes (or a fixed header before them), padded.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self.0.resize(align(self.0.len()), 0);
        self
    }

    /// An attribute with `value` as it is.
    pub fn bytes_attr(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(align(self.0.len()), 0);
        self
    }

    /// A NUL-terminated string attribute.
    pub fn str_attr(&mut self, kind: u16, value: &str) -> &mut Self {
        let mut bytes = Vec::with_capacity(value.len() + 1);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
        self.bytes_attr(kind, &bytes)
    }

    /// A big-endian `u32` attribute (nf_tables, ctnetlink).
    pub fn u32_be(&mut self, kind: u16, value: u32) -> &mut Self {
        self.bytes_attr(kind, &value.to_be_bytes())
    }

    /// A native-endian `i32` attribute (rtnetlink).
    pub fn i32_ne(&mut self, kind: u16, value: i32) -> &mut Self {
        self.bytes_attr(kind, &value.to_ne_bytes())
    }

    /// A nested attribute (`NLA_F_NESTED` set) whose body `fill` writes.
    pub fn nest(&mut self, kind: u16, fill: impl FnOnce(&mut AttrWriter)) -> &mut Self {
        let mut inner = AttrWriter::new();
        fill(&mut inner);
        self.bytes_attr(kind | NLA_F_NESTED, &inner.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_endian = "little")]
    fn writer_golden_bytes() {
        let mut w = AttrWriter::new();
        w.str_attr(1, "nat").u32_be(2, 0x0102_0304).nest(3, |n| {
            n.bytes_attr(1, &[9]).i32_ne(2, -1);
        });
        assert_eq!(
            w.bytes(),
            &[
                8, 0, 1, 0, b'n', b'a', b't', 0, //
                8, 0, 2, 0, 1, 2, 3, 4, //
                20, 0, 3, 0x80, 5, 0, 1, 0, 9, 0, 0, 0, 8, 0, 2, 0, 0xff, 0xff, 0xff, 0xff,
            ][..]
        );
        assert_eq!(
            message(0x0a04, 5, 7, &[1, 2, 3, 4]),
            [20, 0, 0, 0, 4, 10, 5, 0, 7, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn walker_reads_what_the_writer_wrote() {
        let mut w = AttrWriter::new();
        w.str_attr(1, "abc").u32_be(2, 42).nest(3, |n| {
            n.bytes_attr(4, &[1, 2, 3]).str_attr(4, "x");
        });
        let bytes = w.into_bytes();
        let all: Vec<_> = attrs(&bytes).collect();
        assert_eq!(all.iter().map(|a| a.kind).collect::<Vec<_>>(), [1, 2, 3], "NLA_F_NESTED is masked off");
        assert_eq!(all[0].string(), "abc");
        assert_eq!(all[1].u32_be(), Some(42));
        assert_eq!(all[1].u32_ne(), Some(u32::from_ne_bytes(42u32.to_be_bytes())));
        assert_eq!(all[0].raw, &bytes[..8]);
        let inner: Vec<_> = all[2].nested().all(4).map(|a| a.value.to_vec()).collect();
        assert_eq!(inner, [vec![1, 2, 3], b"x\0".to_vec()]);
        assert_eq!(attrs(&bytes).get(2).and_then(|a| a.u64_be()), None);
    }

    #[test]
    fn malformed_attributes_stop_the_walk() {
        assert_eq!(attrs(&[8, 0, 1, 0, 1, 2]).count(), 0, "length past the end");
        assert_eq!(attrs(&[2, 0, 1, 0, 8, 0, 1, 0, 0, 0, 0, 0]).count(), 0, "length below the header");
        assert_eq!(attrs(&[]).count(), 0);
        // The last attribute may end without its padding.
        assert_eq!(attrs(&[5, 0, 1, 0, 7]).map(|a| a.value.to_vec()).collect::<Vec<_>>(), [vec![7]]);
    }
}
