//! Request budgets: per client address before authentication, per device after it.
//!
//! Authenticating costs a database lookup, so whoever can reach the server could make every
//! request cost database work. The address budget is checked before that lookup, but only
//! failures are charged to it: devices behind a carrier NAT share one address, and a thousand
//! of them polling must never be refused because they are many. While an address has spent
//! its failure budget (wrong or revoked credentials, unknown enrollment or API tokens, no
//! credential at all), every request from it is refused with 429 before the database is
//! touched — good devices behind the same address included, for as long as it takes the
//! budget to refill one failure (a tenth of a second by default). That is the price of a
//! limit that holds: the database cannot tell good from bad without a lookup.
//!
//! After authentication, each device has its own budget of requests and of heartbeats, so one
//! misbehaving device cannot starve the others.
//!
//! The budgets are GCRA limiters from `governor`, keyed and sharded (no global lock); keys
//! that have refilled are dropped by [`Limits::evict_idle`], which the server runs on a timer.
//! Each replica keeps its own.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::{Clock as _, MonotonicClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

/// A budget: a sustained rate and the burst allowed on top.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// How many a period refills.
    pub count: NonZeroU32,
    /// The period.
    pub per: Per,
    /// How many may come at once.
    pub burst: NonZeroU32,
}

/// The period of a [`Rate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    /// Per second.
    Second,
    /// Per minute.
    Minute,
    /// Per hour.
    Hour,
}

impl Per {
    fn duration(self) -> Duration {
        match self {
            Per::Second => Duration::from_secs(1),
            Per::Minute => Duration::from_secs(60),
            Per::Hour => Duration::from_secs(3600),
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Per::Second => "s",
            Per::Minute => "min",
            Per::Hour => "h",
        }
    }
}

/// A rate that does not parse.
#[derive(Debug, thiserror::Error)]
#[error(
    "rate {given:?} is not COUNT/PERIOD,BURST with a PERIOD of s, min or h and both numbers at least 1 (e.g. 10/s,100)"
)]
pub struct RateError {
    /// What was given.
    pub given: String,
}

impl std::str::FromStr for Rate {
    type Err = RateError;

    /// `COUNT/PERIOD,BURST`, e.g. `50/s,100` or `30/min,5`.
    fn from_str(s: &str) -> Result<Self, RateError> {
        let err = || RateError { given: s.to_owned() };
        let (rate, burst) = s.split_once(',').ok_or_else(err)?;
        let (count, per) = rate.trim().split_once('/').ok_or_else(err)?;
        let per = match per.trim() {
            "s" => Per::Second,
            "min" => Per::Minute,
            "h" => Per::Hour,
            _ => return Err(err()),
        };
        let count = count.trim().parse().map_err(|_| err())?;
        let burst = burst.trim().parse().map_err(|_| err())?;
        Ok(Rate { count, per, burst })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{},{}", self.count, self.per.suffix(), self.burst)
    }
}

impl Rate {
    const fn new(count: u32, per: Per, burst: u32) -> Self {
        match (NonZeroU32::new(count), NonZeroU32::new(burst)) {
            (Some(count), Some(burst)) => Rate { count, per, burst },
            _ => panic!("a rate needs a count and a burst of at least 1"),
        }
    }

    fn quota(self) -> Quota {
        // `count` a period is one every `per / count`, never zero: a period is at least a
        // second and a count at most u32::MAX.
        let every = self.per.duration() / self.count.get();
        Quota::with_period(every.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(self.count))
            .allow_burst(self.burst)
    }

    /// The rate in words, for a 429's message: `50 per second, bursts of 100`.
    pub fn in_words(self) -> String {
        let per = match self.per {
            Per::Second => "second",
            Per::Minute => "minute",
            Per::Hour => "hour",
        };
        format!("{} per {per}, bursts of {}", self.count, self.burst)
    }
}

/// The server's budgets. Each replica enforces them on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    /// Failed authentications per client address (see the module's doc): checked before the
    /// database, charged only for failures.
    pub failed_auth_per_address: Rate,
    /// Requests per authenticated device.
    pub device_requests: Rate,
    /// Heartbeats per device, on top of its requests.
    pub heartbeats: Rate,
    /// Proxies whose `X-Forwarded-For` names the client (see [`ClientKey::of`]); none by
    /// default, since anyone can write that header.
    pub trusted_proxies: Vec<IpAddr>,
}

impl RateLimits {
    /// Failed authentications: 10 a second per address, bursts of 100. A device that keeps
    /// polling with a revoked credential fails once per poll (every 30 s by default), so 300
    /// such devices behind one NAT address stay under it; a credential-guessing flood gets ten
    /// database lookups a second.
    pub const FAILED_AUTH_PER_ADDRESS: Rate = Rate::new(10, Per::Second, 100);
    /// Device requests: 50 a second sustained, bursts of 100 (a check-in every 30 s is normal).
    pub const DEVICE_REQUESTS: Rate = Rate::new(50, Per::Second, 100);
    /// Heartbeats: one a second sustained (the most a device is ever asked for), bursts of
    /// five (a few that queued up behind a slow link). Each is a database write, so a device
    /// that sends more is refused rather than let through.
    pub const HEARTBEATS: Rate = Rate::new(1, Per::Second, 5);
}

impl Default for RateLimits {
    /// Limiting is the safe choice, so it is the default; these are sized so that a fleet of
    /// thousands behind one address at its normal poll rate is never refused.
    fn default() -> Self {
        Self {
            failed_auth_per_address: Self::FAILED_AUTH_PER_ADDRESS,
            device_requests: Self::DEVICE_REQUESTS,
            heartbeats: Self::HEARTBEATS,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Where a request comes from, as far as budgets go: the client's IP address, with an IPv6
/// address cut to its /64 (one subscriber's prefix: anyone holding one can use all of it, so
/// a budget per full address would be no budget). Requests that arrive with no peer address
/// (in-process tests) share one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    /// The key of a request from `peer` with these `X-Forwarded-For` header values. The header
    /// is read only when `peer` is one of `trusted_proxies`: then the client is the nearest
    /// address in it, from the right, that is not itself a trusted proxy (each proxy appends
    /// the address it saw, so anything further left was written by the client and proves
    /// nothing). A header that does not parse leaves the proxy's own address.
    pub fn of<'h>(
        peer: Option<SocketAddr>,
        forwarded_for: impl IntoIterator<Item = &'h str>,
        trusted_proxies: &[IpAddr],
    ) -> Self {
        let Some(peer) = peer.map(|p| p.ip()) else { return Self::new(IpAddr::from([0, 0, 0, 0])) };
        if !trusted_proxies.contains(&peer) {
            return Self::new(peer);
        }
        let hops: Vec<&str> = forwarded_for.into_iter().flat_map(|v| v.split(',')).map(str::trim).collect();
        for hop in hops.into_iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) if trusted_proxies.contains(&ip) => continue,
                Ok(ip) => return Self::new(ip),
                Err(_) => break,
            }
        }
        Self::new(peer)
    }

    fn new(ip: IpAddr) -> Self {
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
            },
            v4 => v4,
        };
        Self(ip)
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
            v4 => write!(f, "{v4}"),
        }
    }
}

/// A refusal: the budget is spent; try again after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exceeded {
    /// When a request could next be let through.
    pub retry_after: Duration,
}

type Keyed<K, MW> = RateLimiter<K, DashMapStateStore<K>, MonotonicClock, MW>;

/// A budget per key (a device id).
#[derive(Debug)]
pub struct PerKey {
    rate: Rate,
    limiter: Keyed<String, governor::middleware::NoOpMiddleware<Instant>>,
}

impl PerKey {
    fn new(rate: Rate) -> Self {
        Self { rate, limiter: RateLimiter::dashmap_with_clock(rate.quota(), MonotonicClock) }
    }

    /// The budget.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes one request from `key`'s budget.
    pub fn take(&self, key: &str) -> Result<(), Exceeded> {
        let clock = MonotonicClock;
        // `check_key` wants an owned key; a device id is a short string.
        self.limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| Exceeded { retry_after: not_until.wait_time_from(clock.now()) })
    }
}

/// Failed authentications per client address: refused before the database once spent.
#[derive(Debug)]
pub struct FailedAuth {
    rate: Rate,
    limiter: Keyed<ClientKey, StateInformationMiddleware>,
    /// Addresses that have spent their budget, and until when. governor can only take from a
    /// budget, not look at it, and the check before the database must not take: good requests
    /// are not charged. So the moment a failure spends the last of an address's budget is noted
    /// here, and the check reads only this.
    spent: dashmap::DashMap<ClientKey, Instant>,
}

impl FailedAuth {
    fn new(rate: Rate) -> Self {
        Self {
            rate,
            limiter: RateLimiter::dashmap_with_clock(rate.quota(), MonotonicClock).with_middleware(),
            spent: dashmap::DashMap::new(),
        }
    }

    /// The budget.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Before any database work: refused while `client` has spent its failure budget.
    pub fn admit(&self, client: ClientKey) -> Result<(), Exceeded> {
        let Some(until) = self.spent.get(&client).map(|u| *u) else { return Ok(()) };
        let now = Instant::now();
        if until > now {
            return Err(Exceeded { retry_after: until - now });
        }
        self.spent.remove_if(&client, |_, u| *u <= now);
        Ok(())
    }

    /// After an authentication failed: charges it to `client`. Refused when the budget was
    /// already spent (several requests raced past [`FailedAuth::admit`]); when this failure
    /// spends the last of it, the address is refused from the next request on.
    pub fn charge(&self, client: ClientKey) -> Result<(), Exceeded> {
        let now = Instant::now();
        match self.limiter.check_key(&client) {
            Ok(snapshot) => {
                if snapshot.remaining_burst_capacity() == 0 {
                    // The next failure conforms within one replenish interval at the latest.
                    let until = now + snapshot.quota().replenish_interval();
                    self.spent.insert(client, until);
                }
                Ok(())
            }
            Err(not_until) => {
                let retry_after = not_until.wait_time_from(MonotonicClock.now());
                self.spent.insert(client, now + retry_after);
                Err(Exceeded { retry_after })
            }
        }
    }
}

/// Every budget the server keeps.
#[derive(Debug)]
pub struct Limits {
    trusted_proxies: Vec<IpAddr>,
    failed_auth: FailedAuth,
    device_requests: PerKey,
    heartbeats: PerKey,
}

impl Limits {
    /// Empty budgets at `rates`.
    pub fn new(rates: &RateLimits) -> Self {
        Self {
            trusted_proxies: rates.trusted_proxies.clone(),
            failed_auth: FailedAuth::new(rates.failed_auth_per_address),
            device_requests: PerKey::new(rates.device_requests),
            heartbeats: PerKey::new(rates.heartbeats),
        }
    }

    /// The budget key of a request from `peer` (see [`ClientKey::of`]).
    pub fn client_key(&self, peer: Option<SocketAddr>, headers: &axum::http::HeaderMap) -> ClientKey {
        let forwarded = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
        ClientKey::of(peer, forwarded, &self.trusted_proxies)
    }

    /// Failed authentications per client address.
    pub fn failed_auth(&self) -> &FailedAuth {
        &self.failed_auth
    }

    /// Requests per device.
    pub fn device_requests(&self) -> &PerKey {
        &self.device_requests
    }

    /// Heartbeats per device.
    pub fn heartbeats(&self) -> &PerKey {
        &self.heartbeats
    }

    /// Forgets every key whose budget has refilled (it would start full anyway), so memory
    /// follows the clients active lately, not every client ever seen.
    pub fn evict_idle(&self) {
        self.failed_auth.limiter.retain_recent();
        let now = Instant::now();
        self.failed_auth.spent.retain(|_, until| *until > now);
        self.device_requests.limiter.retain_recent();
        self.heartbeats.limiter.retain_recent();
    }

    /// How many keys are kept, for tests of eviction.
    pub fn keys(&self) -> usize {
        self.failed_auth.limiter.len()
            + self.failed_auth.spent.len()
            + self.device_requests.limiter.len()
            + self.heartbeats.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print_back() {
        for text in ["10/s,100", "1/min,1", "3600/h,5"] {
            let rate: Rate = text.parse().unwrap();
            assert_eq!(rate.to_string(), text);
        }
        for bad in ["10/s", "0/s,1", "1/s,0", "1/day,1", "x/s,1", "1,1", ""] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_and_mapped_v4_as_v4() {
        let key = |s: &str| ClientKey::of(Some(SocketAddr::new(s.parse().unwrap(), 1)), [], &[]).to_string();
        assert_eq!(key("2001:db8:1:2:3:4:5:6"), key("2001:db8:1:2:ffff::1"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
    }

    #[test]
    fn forwarded_for_is_read_only_from_trusted_proxies() {
        let proxies: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
        let cases: &[(&str, &[&str], &str)] = &[
            // Not a proxy we trust: the header is anyone's to write.
            ("198.51.100.9", &["203.0.113.5"], "198.51.100.9"),
            // One proxy: the address it saw.
            ("10.0.0.1", &["203.0.113.5"], "203.0.113.5"),
            // The client's own claims further left prove nothing.
            ("10.0.0.1", &["192.0.2.66, 203.0.113.5"], "203.0.113.5"),
            // Two proxies, in one header or two.
            ("10.0.0.1", &["203.0.113.5, 10.0.0.2"], "203.0.113.5"),
            ("10.0.0.1", &["203.0.113.5", "10.0.0.2"], "203.0.113.5"),
            // Nothing usable: the proxy's own address.
            ("10.0.0.1", &[], "10.0.0.1"),
            ("10.0.0.1", &["unknown"], "10.0.0.1"),
            ("10.0.0.1", &["10.0.0.2"], "10.0.0.1"),
            // IPv6 clients behind the proxy, by their /64.
            ("10.0.0.1", &["2001:db8:1:2::7"], "2001:db8:1:2::/64"),
        ];
        for (peer, header, client) in cases {
            let peer = SocketAddr::new(peer.parse().unwrap(), 443);
            assert_eq!(
                ClientKey::of(Some(peer), header.iter().copied(), &proxies).to_string(),
                *client,
                "{peer} {header:?}"
            );
        }
    }

    #[test]
    fn an_address_is_refused_before_the_lookup_once_its_failures_spend_the_budget() {
        let limits =
            Limits::new(&RateLimits { failed_auth_per_address: Rate::new(1, Per::Hour, 3), ..RateLimits::default() });
        let (a, b) = (ClientKey::of(Some("192.0.2.1:1".parse().unwrap()), [], &[]), ClientKey::of(None, [], &[]));
        for _ in 0..3 {
            assert_eq!(limits.failed_auth().admit(a), Ok(()), "the burst is let through");
            assert_eq!(limits.failed_auth().charge(a), Ok(()));
        }
        let refused = limits.failed_auth().admit(a).unwrap_err();
        assert!(refused.retry_after > Duration::from_secs(3000), "{refused:?}");
        assert_eq!(limits.failed_auth().admit(b), Ok(()), "another address keeps its budget");
        // A race past `admit` is refused when charged.
        assert!(limits.failed_auth().charge(a).is_err());
    }

    #[test]
    fn idle_keys_are_evicted() {
        let limits = Limits::new(&RateLimits::default());
        for i in 0..100u8 {
            let _ = limits.failed_auth().charge(ClientKey::of(Some(SocketAddr::from(([10, 0, 0, i], 1))), [], &[]));
            let _ = limits.device_requests().take(&format!("device-{i}"));
        }
        assert_eq!(limits.keys(), 200);
        // One charge at 10 a second refills within a tenth of a second.
        std::thread::sleep(Duration::from_millis(200));
        limits.evict_idle();
        assert_eq!(limits.keys(), 0);
    }
}
