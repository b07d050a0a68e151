//! A cursor over one packet's payload. Every read names the message being
//! parsed and the field that ran out or was invalid, so errors read like
//! "malformed HandshakeV10 greeting: ends inside the connection id".

use super::lenenc;
use crate::WireError;

/// Reads fields off the front of a payload; never panics.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    message: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], message: &'static str) -> Self {
        Reader { buf, message }
    }

    /// An error about the message being read.
    pub(crate) fn error(&self, reason: &'static str) -> WireError {
        WireError::Malformed {
            message: self.message,
            reason,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Fails with `reason` unless everything was read.
    pub(crate) fn finish(&self, reason: &'static str) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.error(reason))
        }
    }

    pub(crate) fn take(&mut self, n: usize, reason: &'static str) -> Result<&'a [u8], WireError> {
        match (self.buf.get(..n), self.buf.get(n..)) {
            (Some(head), Some(tail)) => {
                self.buf = tail;
                Ok(head)
            }
            _ => Err(self.error(reason)),
        }
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        reason: &'static str,
    ) -> Result<[u8; N], WireError> {
        let bytes = self.take(N, reason)?;
        bytes.try_into().map_err(|_| self.error(reason))
    }

    pub(crate) fn u8(&mut self, reason: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(reason)?[0])
    }

    pub(crate) fn u16(&mut self, reason: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(reason)?))
    }

    pub(crate) fn u32(&mut self, reason: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(reason)?))
    }

    /// A string ending in NUL; the NUL is consumed but not returned.
    pub(crate) fn nul_terminated(&mut self, reason: &'static str) -> Result<&'a [u8], WireError> {
        let nul = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.error(reason))?;
        let value = self.take(nul, reason)?;
        self.take(1, reason)?;
        Ok(value)
    }

    /// A length-encoded integer in its minimal form (see [`lenenc`]).
    pub(crate) fn lenenc_int(&mut self, reason: &'static str) -> Result<u64, WireError> {
        match lenenc::parse_int(self.buf) {
            Ok(Some((value, used))) if lenenc::int_len(value) == used => {
                self.take(used, reason)?;
                Ok(value)
            }
            Ok(Some(_)) => Err(self.error("length-encoded integer is not minimally encoded")),
            Ok(None) => Err(self.error(reason)),
            Err(_) => Err(self.error("invalid first byte of a length-encoded integer")),
        }
    }

    /// A length-encoded string: a minimal length-encoded integer, then that
    /// many bytes.
    pub(crate) fn lenenc_bytes(&mut self, reason: &'static str) -> Result<&'a [u8], WireError> {
        let len = self.lenenc_int(reason)?;
        let len = usize::try_from(len).map_err(|_| self.error(reason))?;
        self.take(len, reason)
    }
}

/// Appends `value` and a NUL, refusing a value with a NUL inside.
pub(crate) fn put_nul_terminated(
    out: &mut Vec<u8>,
    value: &[u8],
    what: &'static str,
) -> Result<(), WireError> {
    if value.contains(&0) {
        return Err(WireError::NulInString { what });
    }
    out.extend_from_slice(value);
    out.push(0);
    Ok(())
}
