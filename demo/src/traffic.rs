//! The storefront's traffic: five kinds of request, the share of each in the mix, and the HTTP
//! request a visitor of each kind sends.
//!
//! Invariants: the mix's shares are positive and sum to 1; every request a kind makes is one the
//! storefront serves (see `storefront::route`), and only the bot's user-agent contains "bot".

use crate::rng::Rng;
use surgeguard_harness::client::Req;

/// A kind of traffic, as the tables and plots report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Checkout,
    Cart,
    Browse,
    Search,
    Bot,
}

impl Kind {
    /// Every kind, most important first (the order of the table and the plots).
    pub const ALL: [Kind; 5] = [Kind::Checkout, Kind::Cart, Kind::Browse, Kind::Search, Kind::Bot];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Checkout => "checkout",
            Kind::Cart => "cart",
            Kind::Browse => "browse",
            Kind::Search => "search",
            Kind::Bot => "bot",
        }
    }

    pub fn index(self) -> usize {
        match self {
            Kind::Checkout => 0,
            Kind::Cart => 1,
            Kind::Browse => 2,
            Kind::Search => 3,
            Kind::Bot => 4,
        }
    }
}

/// A browser's user-agent (no "bot" in it).
pub const BROWSER_UA: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
/// The scraper's user-agent: the shipped configuration classifies "bot" as sheddable.
pub const BOT_UA: &str = "Mozilla/5.0 (compatible; pricescraper-bot/2.1)";
/// Of the cart requests, this share are writes (`POST /cart`); the rest are reads.
pub const CART_WRITE_SHARE: f64 = 1.0 / 3.0;

const PRODUCTS: u64 = 5_000;
const SESSIONS: u64 = 20_000;
/// What search requests look for (the PostgreSQL backend's products carry the same words).
pub const SEARCH_WORDS: [&str; 12] = [
    "shoes",
    "jacket",
    "lamp",
    "coffee",
    "headphones",
    "backpack",
    "sofa",
    "kettle",
    "watch",
    "tent",
    "keyboard",
    "mug",
];

/// The share of each kind in the offered load.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    /// Indexed by [`Kind::index`].
    pub shares: [f64; 5],
}

impl Default for Mix {
    /// A storefront's day: mostly product pages, some search and cart, few checkouts, and a
    /// scraper crawling the catalogue.
    fn default() -> Mix {
        let mut shares = [0.0; 5];
        shares[Kind::Checkout.index()] = 0.05;
        shares[Kind::Cart.index()] = 0.15;
        shares[Kind::Browse.index()] = 0.50;
        shares[Kind::Search.index()] = 0.15;
        shares[Kind::Bot.index()] = 0.15;
        Mix { shares }
    }
}

impl Mix {
    pub fn share(&self, kind: Kind) -> f64 {
        self.shares[kind.index()]
    }

    /// Draws a kind with probability equal to its share.
    pub fn pick(&self, rng: &mut Rng) -> Kind {
        let total: f64 = self.shares.iter().sum();
        let mut u = rng.unit() * total;
        for kind in Kind::ALL {
            let s = self.share(kind);
            if u < s {
                return kind;
            }
            u -= s;
        }
        Kind::Browse
    }
}

/// The request a visitor of `kind` sends next.
pub fn request(kind: Kind, rng: &mut Rng) -> Req {
    let session = format!("session={}", rng.below(SESSIONS) + 1);
    match kind {
        Kind::Browse => Req::get(&format!("/products/{}", rng.below(PRODUCTS) + 1))
            .header("user-agent", BROWSER_UA)
            .header("cookie", &session),
        Kind::Search => {
            let word = SEARCH_WORDS[rng.below(SEARCH_WORDS.len() as u64) as usize];
            Req::get(&format!("/search?q={word}")).header("user-agent", BROWSER_UA).header("cookie", &session)
        }
        Kind::Cart => {
            let req = if rng.unit() < CART_WRITE_SHARE {
                Req::get(&format!("/cart?add={}", rng.below(PRODUCTS) + 1)).method("POST")
            } else {
                Req::get("/cart")
            };
            req.header("user-agent", BROWSER_UA).header("cookie", &session)
        }
        Kind::Checkout => {
            Req::get("/checkout").method("POST").header("user-agent", BROWSER_UA).header("cookie", &session)
        }
        // The scraper walks the catalogue's listing pages, which are the heavier queries.
        Kind::Bot => Req::get(&format!("/products?page={}", rng.below(PRODUCTS / 50) + 1)).header("user-agent", BOT_UA),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_mix_sums_to_one_and_is_mostly_browsing() {
        let mix = Mix::default();
        assert!((mix.shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(mix.shares.iter().all(|s| *s > 0.0));
        assert!(mix.share(Kind::Browse) > mix.share(Kind::Checkout));
    }

    #[test]
    fn picking_follows_the_shares() {
        let mix = Mix::default();
        let mut rng = Rng::new(3);
        let mut counts = [0u32; 5];
        let n = 50_000;
        for _ in 0..n {
            counts[mix.pick(&mut rng).index()] += 1;
        }
        for kind in Kind::ALL {
            let got = f64::from(counts[kind.index()]) / f64::from(n);
            assert!((got - mix.share(kind)).abs() < 0.01, "{kind:?}: {got}");
        }
    }

    #[test]
    fn only_the_bot_says_bot_in_its_user_agent() {
        let mut rng = Rng::new(4);
        for kind in Kind::ALL {
            for _ in 0..20 {
                let req = request(kind, &mut rng);
                let ua =
                    req.headers.iter().find(|(k, _)| k == "user-agent").map(|(_, v)| v.clone()).unwrap_or_default();
                assert_eq!(ua.contains("bot"), kind == Kind::Bot, "{kind:?}: {ua}");
            }
        }
    }

    #[test]
    fn each_kind_goes_to_its_pages() {
        let mut rng = Rng::new(5);
        let mut cart_methods = std::collections::BTreeSet::new();
        for _ in 0..50 {
            assert!(request(Kind::Browse, &mut rng).path.starts_with("/products/"));
            assert!(request(Kind::Search, &mut rng).path.starts_with("/search?q="));
            let checkout = request(Kind::Checkout, &mut rng);
            assert_eq!((checkout.method.as_str(), checkout.path.as_str()), ("POST", "/checkout"));
            let cart = request(Kind::Cart, &mut rng);
            assert!(cart.path.starts_with("/cart"));
            cart_methods.insert(cart.method);
            assert!(request(Kind::Bot, &mut rng).path.starts_with("/products?page="));
        }
        assert_eq!(cart_methods.into_iter().collect::<Vec<_>>(), ["GET", "POST"]);
    }
}
