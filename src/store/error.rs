//! The store's error, and how a database error is classified: the
//! database away, a transaction it gave up, or a statement that failed.

/// A store error: the database failed, or a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The per-provider credential limit is reached.
    #[error("the organization already has {limit} credentials of this provider")]
    QuotaExceeded {
        /// The limit in force.
        limit: i64,
        /// How many there are (at least the limit, unless it was lowered).
        count: i64,
    },
    /// Another writer changed the row first (or holds its refresh lease).
    #[error("the record changed while it was being written")]
    Conflict,
    /// The organization's data key changed since the secrets were sealed:
    /// seal again under the current key and write again.
    #[error("the organization's data key was rotated meanwhile")]
    KeyRotated,
    /// The external account is already connected in another credential.
    #[error("this account is already connected in another credential")]
    AccountTaken,
    /// The authorization a grant comes from was ended meanwhile (its user
    /// was removed): nothing was stored.
    #[error("the connection was ended before it finished: {0}")]
    FlowEnded(String),
    /// The `Idempotency-Key` is already kept for another create (one that
    /// raced this one): read what it names.
    #[error("the idempotency key is already used")]
    IdempotencyKeyTaken,
    /// A row that must exist does not.
    #[error("not found")]
    NotFound,
    /// A stored column does not hold what it must (never silently ignored).
    #[error("row {id}: column {column} is malformed")]
    Corrupt {
        /// The row: a credential's or API key's id, `audit event N`, an
        /// event's sequence number, a page session's id.
        id: String,
        /// The column.
        column: &'static str,
    },
    /// The database cannot be reached or cannot write now (down, restarting,
    /// out of connections, read-only, disk full): try again shortly.
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The database gave the transaction up so that others could go on (it
    /// was a deadlock's victim, or could not be serialized), or gave up a
    /// lock it waited for longer than the lock timeout: none of it was
    /// written, and the same write can succeed later.
    #[error("the database gave the transaction up: {0}")]
    GaveWay(#[source] sqlx::Error),
    /// The database failed.
    #[error(transparent)]
    Database(sqlx::Error),
}

impl StoreError {
    /// The same error for another waiter of a failed group write (a
    /// database error cannot be cloned: its words are kept, and its kind).
    pub fn duplicate(&self) -> Self {
        let words = |e: &sqlx::Error| sqlx::Error::Io(std::io::Error::other(e.to_string()));
        match self {
            Self::QuotaExceeded { limit, count } => Self::QuotaExceeded {
                limit: *limit,
                count: *count,
            },
            Self::Conflict => Self::Conflict,
            Self::KeyRotated => Self::KeyRotated,
            Self::AccountTaken => Self::AccountTaken,
            Self::FlowEnded(why) => Self::FlowEnded(why.clone()),
            Self::IdempotencyKeyTaken => Self::IdempotencyKeyTaken,
            Self::NotFound => Self::NotFound,
            Self::Corrupt { id, column } => Self::Corrupt { id: id.clone(), column },
            Self::Unavailable(e) => Self::Unavailable(words(e)),
            Self::GaveWay(e) => Self::GaveWay(words(e)),
            Self::Database(e) => Self::Database(words(e)),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if unavailable(&e) {
            Self::Unavailable(e)
        } else if gave_way(&e) {
            Self::GaveWay(e)
        } else {
            Self::Database(e)
        }
    }
}

/// Is this the database being away (rather than a statement being wrong)?
fn unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // PostgreSQL: connection exceptions (08…), shutting down or
            // starting up (57P01–57P03), too many connections (53300),
            // disk full (53100), read-only transaction (25006).
            let pg = code.starts_with("08")
                || ["57P01", "57P02", "57P03", "53300", "53100", "25006"].contains(&code.as_ref());
            // SQLite primary codes: BUSY 5, LOCKED 6, NOMEM 7, READONLY 8,
            // IOERR 10, FULL 13, CANTOPEN 14.
            let sqlite = code
                .parse::<i32>()
                .is_ok_and(|c| [5, 6, 7, 8, 10, 13, 14].contains(&(c & 0xff)));
            pg || sqlite
        }
        _ => false,
    }
}

/// Did PostgreSQL undo the transaction to break a deadlock (40P01), keep
/// it serializable (40001), or because a lock was not granted within the
/// lock timeout (55P03)? (SQLite's busy and locked are [`unavailable`].)
fn gave_way(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001" | "55P03")))
}
