//! What the store's tests count.

use mailtls_common::day::Day;
use tlsrpt_datagram::Aggregate;

/// The libtlsrpt vectors that parse, each counted `times` on `day`.
pub fn aggregate(day: Day, times: u64) -> Aggregate {
    let mut agg = Aggregate::new();
    for (_, bytes) in mailtls_test_support::vectors() {
        if let Ok(delivery) = tlsrpt_datagram::parse(&bytes) {
            agg.add_n(day, &delivery, times);
        }
    }
    assert!(!agg.is_empty());
    agg
}
