//! The expressions of each IR match, as nft itself encodes them.

use super::*;

impl Encoder<'_> {
    /// The expressions of one match of a rule.
    pub(super) fn matcher(
        &mut self,
        place: &Place<'_>,
        m: &Match,
        x: &mut RuleExprs,
    ) -> Result<(), EncodeError> {
        match m {
            Match::Iif(name) => {
                let idx = (self.ifindex)(name).ok_or_else(|| EncodeError::UnknownInterface {
                    chain: place.chain.to_string(),
                    rule: place.index,
                    name: name.clone(),
                })?;
                x.push(meta(MetaKey::Iif));
                x.push(cmp(CmpOp::Eq, idx.to_ne_bytes()));
            }
            Match::CtState(states) => {
                let bits = states.iter().fold(0u32, |b, s| {
                    b | match s {
                        CtState::Established => NF_CT_STATE_ESTABLISHED_BIT,
                        CtState::Related => NF_CT_STATE_RELATED_BIT,
                    }
                });
                x.push(Expr::Ct(Ct));
                x.push(Expr::Bitwise(Bitwise {
                    mask: bits.to_ne_bytes().to_vec(),
                }));
                x.push(cmp(CmpOp::Neq, [0u8; 4]));
            }
            Match::Ipsec(present) => {
                x.push(meta(MetaKey::Secpath));
                x.push(cmp(CmpOp::Eq, [u8::from(*present)]));
            }
            Match::IpsecOut(present) => {
                x.push(Expr::RtIpsec(RtIpsec));
                x.push(cmp(CmpOp::Eq, [u8::from(*present)]));
            }
            Match::Saddr {
                family,
                addrs,
                negate,
            } => self.addr(place, *family, saddr_offset(*family), addrs, *negate, x)?,
            Match::Daddr {
                family,
                addrs,
                negate,
            } => self.addr(place, *family, daddr_offset(*family), addrs, *negate, x)?,
            Match::L4Proto(protos) => self.l4proto(place, protos, x)?,
            Match::Dport { proto, ports } => self.dport(place, *proto, ports, x)?,
            Match::Icmp { v6, types, code } => self.icmp(place, *v6, types, *code, x)?,
            Match::Limit { rate, burst } => x.push(Expr::Limit(Limit {
                rate: u64::from(*rate),
                burst: *burst,
            })),
        }
        Ok(())
    }

    /// `ip saddr` / `ip6 saddr` (or daddr: the header `offset`) against a named set, one
    /// interval or an anonymous set.
    fn addr(
        &mut self,
        place: &Place<'_>,
        f: Family,
        offset: u32,
        addrs: &AddrMatch,
        negate: bool,
        x: &mut RuleExprs,
    ) -> Result<(), EncodeError> {
        let width = family_bytes(f);
        x.need_family(f);
        match addrs {
            AddrMatch::Set(name) => {
                x.push(payload(PayloadBase::Network, offset, width));
                x.push(Expr::Lookup(Lookup {
                    set: name.to_string(),
                    set_id: self.set_ids.get(name).copied(),
                    verdict_map: false,
                    invert: negate,
                }));
            }
            AddrMatch::Literal(ranges) => match ranges.as_slice() {
                [] => return Err(self.empty(place, "address")),
                [r] => single_range(x, f, offset, r, negate),
                many => {
                    x.push(payload(PayloadBase::Network, offset, width));
                    let elements =
                        set::interval_elements(many.iter().map(|r| (r.lo, r.hi, None)), width)
                            .collect();
                    let l = self.anonymous(place, addr_key(f), true, elements, negate);
                    x.push(l);
                }
            },
        }
        Ok(())
    }

    /// `meta l4proto` one or a set of.
    fn l4proto(
        &mut self,
        place: &Place<'_>,
        protos: &[u8],
        x: &mut RuleExprs,
    ) -> Result<(), EncodeError> {
        x.push(meta(MetaKey::L4Proto));
        match protos {
            [] => return Err(self.empty(place, "protocol")),
            [p] => x.push(cmp(CmpOp::Eq, [*p])),
            many => {
                let elements = many
                    .iter()
                    .map(|p| Element::key(Key::from_u128(*p as u128, 1)))
                    .collect();
                let l = self.anonymous(place, KeyKind::L4Proto, false, elements, false);
                x.push(l);
            }
        }
        Ok(())
    }

    /// `tcp dport` / `udp dport`: one port, one range, or a set.
    fn dport(
        &mut self,
        place: &Place<'_>,
        proto: PortProto,
        ports: &[PortRange],
        x: &mut RuleExprs,
    ) -> Result<(), EncodeError> {
        let num = match proto {
            PortProto::Tcp => crate::proto::TCP,
            PortProto::Udp => crate::proto::UDP,
        };
        x.push(meta(MetaKey::L4Proto));
        x.push(cmp(CmpOp::Eq, [num]));
        x.push(payload(PayloadBase::Transport, 2, 2));
        match ports {
            [] => return Err(self.empty(place, "port")),
            [p] if p.first == p.last => {
                x.push(cmp(CmpOp::Eq, p.first.to_be_bytes()));
            }
            [p] => {
                x.push(cmp(CmpOp::Gte, p.first.to_be_bytes()));
                x.push(cmp(CmpOp::Lte, p.last.to_be_bytes()));
            }
            many => {
                let interval = many.iter().any(|p| p.first != p.last);
                let elements = port_elements(many, interval);
                let l = self.anonymous(place, KeyKind::Port(proto), interval, elements, false);
                x.push(l);
            }
        }
        Ok(())
    }

    /// `icmp type` / `icmpv6 type`, with or without a code.
    fn icmp(
        &mut self,
        place: &Place<'_>,
        v6: bool,
        types: &[u8],
        code: Option<u8>,
        x: &mut RuleExprs,
    ) -> Result<(), EncodeError> {
        let (f, l4, key) = if v6 {
            (Family::V6, crate::proto::ICMPV6, KeyKind::Icmpv6Type)
        } else {
            (Family::V4, crate::proto::ICMP, KeyKind::IcmpType)
        };
        x.need_family(f);
        x.push(meta(MetaKey::L4Proto));
        x.push(cmp(CmpOp::Eq, [l4]));
        match (types, code) {
            ([], _) => return Err(self.empty(place, "ICMP type")),
            ([t], Some(c)) => {
                x.push(payload(PayloadBase::Transport, 0, 2));
                x.push(cmp(CmpOp::Eq, [*t, c]));
            }
            ([t], None) => {
                x.push(payload(PayloadBase::Transport, 0, 1));
                x.push(cmp(CmpOp::Eq, [*t]));
            }
            (many, code) => {
                x.push(payload(PayloadBase::Transport, 0, 1));
                let elements = many
                    .iter()
                    .map(|t| Element::key(Key::from_u128(*t as u128, 1)))
                    .collect();
                let l = self.anonymous(place, key, false, elements, false);
                x.push(l);
                if let Some(c) = code {
                    x.push(payload(PayloadBase::Transport, 1, 1));
                    x.push(cmp(CmpOp::Eq, [c]));
                }
            }
        }
        Ok(())
    }
}

/// `ip saddr X` / `!= X` for one interval, the way nft encodes each notation.
fn single_range(x: &mut RuleExprs, f: Family, off: u32, r: &Range, negate: bool) {
    let width = family_bytes(f);
    let eq = if negate { CmpOp::Neq } else { CmpOp::Eq };
    if r.lo == r.hi {
        x.push(payload(PayloadBase::Network, off, width));
        x.push(cmp(eq, be(r.lo, width)));
        return;
    }
    match r.prefix_len() {
        Some(p) if p > 0 && p % 8 == 0 => {
            let n = p as usize / 8;
            x.push(payload(PayloadBase::Network, off, n));
            x.push(cmp(eq, be(r.lo, width)[..n].to_vec()));
        }
        Some(p) => {
            x.push(payload(PayloadBase::Network, off, width));
            x.push(Expr::Bitwise(Bitwise {
                mask: prefix_mask(p, width),
            }));
            x.push(cmp(eq, be(r.lo, width)));
        }
        None if !negate => {
            x.push(payload(PayloadBase::Network, off, width));
            x.push(cmp(CmpOp::Gte, be(r.lo, width)));
            x.push(cmp(CmpOp::Lte, be(r.hi, width)));
        }
        None => {
            x.push(payload(PayloadBase::Network, off, width));
            x.push(Expr::Range(RangeExpr {
                negate: true,
                from: be(r.lo, width),
                to: be(r.hi, width),
            }));
        }
    }
}

fn port_elements(ports: &[PortRange], interval: bool) -> Vec<Element> {
    if interval {
        set::interval_elements(
            ports
                .iter()
                .map(|p| (u128::from(p.first), u128::from(p.last), None)),
            2,
        )
        .collect()
    } else {
        ports
            .iter()
            .map(|p| Element::key(Key::from_u128(u128::from(p.first), 2)))
            .collect()
    }
}
