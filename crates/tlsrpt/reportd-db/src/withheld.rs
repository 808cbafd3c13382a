//! Destinations a record names that get no report (the amplification
//! limits), stored with a status of their own so that no report daemon
//! delivers them and `tlsrptctl` and the web pages can say why.

/// Why a destination that a record names gets no report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WithheldReason {
    /// Beyond the first `max_destinations_per_record` of its record.
    DestinationsPerRecord,
    /// Its record is beyond the first `max_records_per_domain` of the day.
    RecordsPerDomain,
    /// It already gets another report of this domain and day.
    AlreadyReported,
}

impl WithheldReason {
    /// Every reason, for finding the one a status names.
    pub const ALL: [WithheldReason; 3] = [
        WithheldReason::DestinationsPerRecord,
        WithheldReason::RecordsPerDomain,
        WithheldReason::AlreadyReported,
    ];

    /// The status stored in the `destinations` table. It is not NULL, so
    /// no report daemon (ours or upstream's) ever delivers the row.
    pub fn status(self) -> &'static str {
        match self {
            WithheldReason::DestinationsPerRecord => "withheld:max_destinations_per_record",
            WithheldReason::RecordsPerDomain => "withheld:max_records_per_domain",
            WithheldReason::AlreadyReported => "withheld:already_reported",
        }
    }

    /// The reason a stored status names, if it is a withheld one.
    pub fn from_status(status: &str) -> Option<WithheldReason> {
        WithheldReason::ALL
            .into_iter()
            .find(|reason| reason.status() == status)
    }
}

/// A destination the record named that gets no report, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withheld {
    pub destination: String,
    pub reason: WithheldReason,
}
