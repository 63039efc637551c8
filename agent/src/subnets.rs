//! Demo networks' subnets from a pool of our own (`DEMOFLEET_DEMO_SUBNETS`): Docker's
//! default address pools hold about thirty bridge networks, and every demo has one. The
//! pool is cut into /28 blocks (11 addresses for containers each), handed out first free
//! first, skipping any block that overlaps a network Docker already has.

use std::net::Ipv4Addr;
use std::str::FromStr;

/// Prefix length of one demo network.
pub const BLOCK_PREFIX: u8 = 28;

/// An IPv4 network, `address/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    base: u32,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let bad = || format!("{text:?} is not an IPv4 network such as 10.213.0.0/16");
        let (address, prefix) = text.split_once('/').ok_or_else(bad)?;
        let address: Ipv4Addr = address.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(bad)?;
        let base = u32::from(address) & mask(prefix);
        Ok(Cidr { base, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

impl Cidr {
    fn last(&self) -> u32 {
        self.base | !mask(self.prefix)
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.base <= other.last() && other.base <= self.last()
    }

    /// The pool's /28 blocks, in order; none if the pool is smaller than one.
    pub fn blocks(&self) -> impl Iterator<Item = Cidr> {
        let count = if self.prefix > BLOCK_PREFIX { 0 } else { 1u64 << (BLOCK_PREFIX - self.prefix) };
        let base = self.base;
        (0..count).map(move |i| Cidr { base: base + (i as u32) * (1 << (32 - BLOCK_PREFIX)), prefix: BLOCK_PREFIX })
    }
}

/// The first block of `pool` that overlaps none of `taken`.
pub fn first_free(pool: &Cidr, taken: &[Cidr]) -> Option<Cidr> {
    pool.blocks().find(|block| taken.iter().all(|t| !t.overlaps(block)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_skip_what_is_taken() {
        let pool: Cidr = "10.213.0.0/26".parse().unwrap();
        assert_eq!(pool.blocks().count(), 4);
        let taken: Vec<Cidr> = ["10.213.0.0/28", "10.213.0.20/30"].iter().map(|c| c.parse().unwrap()).collect();
        assert_eq!(first_free(&pool, &taken).unwrap().to_string(), "10.213.0.32/28");
        let everything: Cidr = "10.0.0.0/8".parse().unwrap();
        assert_eq!(first_free(&pool, &[everything]), None);
        assert_eq!("10.213.7.9/16".parse::<Cidr>().unwrap().to_string(), "10.213.0.0/16");
        assert!("10.213.0.0".parse::<Cidr>().is_err() && "fd00::/64".parse::<Cidr>().is_err());
        assert_eq!("10.213.0.0/30".parse::<Cidr>().unwrap().blocks().count(), 0);
    }
}
