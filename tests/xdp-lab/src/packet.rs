//! Building the generator's frame: Ethernet + IPv4 + UDP headers.

use std::net::Ipv4Addr;

use crate::bpf::GEN_HEADERS;

/// The smallest Ethernet frame without FCS.
pub const MIN_FRAME: usize = 60;

/// Headers of a UDP/IPv4 frame of `frame_len` bytes (payload zero), IP checksum
/// filled in, UDP checksum 0 (none, allowed for IPv4).
pub fn udp_headers(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    frame_len: usize,
) -> [u8; GEN_HEADERS] {
    let frame_len = frame_len.clamp(GEN_HEADERS, 1514);
    let ip_len = (frame_len - 14) as u16;
    let udp_len = ip_len - 20;
    let mut h = [0u8; GEN_HEADERS];
    h[0..6].copy_from_slice(&dst_mac);
    h[6..12].copy_from_slice(&src_mac);
    h[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut h[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = ipv4_checksum(ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let udp = &mut h[34..42];
    udp[0..2].copy_from_slice(&src_port.to_be_bytes());
    udp[2..4].copy_from_slice(&dst_port.to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    h
}

/// RFC 1071 checksum of an IPv4 header whose checksum field is zero.
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_rfc1071_style_example() {
        // Header from Wikipedia's IPv4 checksum example: checksum 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        // A header with its checksum in place sums to zero.
        assert_eq!(ipv4_checksum(&h), 0);
    }

    #[test]
    fn udp_headers_have_lengths_and_a_valid_checksum() {
        let h = udp_headers(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(203, 0, 113, 10),
            1000,
            9,
            64,
        );
        assert_eq!(&h[0..6], &[2, 0, 0, 0, 0, 2]);
        assert_eq!(u16::from_be_bytes([h[16], h[17]]), 50);
        assert_eq!(ipv4_checksum(&h[14..34]), 0);
        assert_eq!(u16::from_be_bytes([h[34], h[35]]), 1000);
        assert_eq!(u16::from_be_bytes([h[36], h[37]]), 9);
        assert_eq!(u16::from_be_bytes([h[38], h[39]]), 30);
    }
}
