//! Which ClickHouse failures are worth retrying (feature `clickhouse`): one rule for the
//! ClickHouse sink's writes and auditctl's reads.

/// ClickHouse server error codes that describe a transient condition (overload, timeouts,
/// network trouble between servers, too many parts while merges catch up, a restart in
/// progress, …). The insert-only codes (252, 319) never answer a read, so readers can share
/// the list.
const RETRYABLE_CODES: &[u32] = &[
    3,    // UNEXPECTED_END_OF_FILE (connection cut mid-request)
    159,  // TIMEOUT_EXCEEDED
    164,  // READONLY (e.g. during a restart / replica recovery)
    202,  // TOO_MANY_SIMULTANEOUS_QUERIES
    203,  // NO_FREE_CONNECTION
    209,  // SOCKET_TIMEOUT
    210,  // NETWORK_ERROR
    236,  // ABORTED
    241,  // MEMORY_LIMIT_EXCEEDED
    242,  // TABLE_IS_READ_ONLY
    252,  // TOO_MANY_PARTS
    285,  // TOO_FEW_LIVE_REPLICAS
    319,  // UNKNOWN_STATUS_OF_INSERT
    394,  // QUERY_WAS_CANCELLED
    425,  // SYSTEM_ERROR
    439,  // CANNOT_SCHEDULE_TASK
    999,  // KEEPER_EXCEPTION
    1000, // POCO_EXCEPTION
];

/// Network failures, timeouts and the server's transient error codes are retryable; anything
/// about the request itself (unknown table or column, syntax, type mismatch, auth) is not: a
/// retry would fail the same way. A response without a ClickHouse exception (a proxy's or load
/// balancer's 502/503 page) is retried.
pub fn is_retryable(e: &::clickhouse::error::Error) -> bool {
    use ::clickhouse::error::Error as E;
    match e {
        E::Network(_) | E::TimedOut => true,
        E::BadResponse(text) => match server_error_code(text) {
            Some(code) => RETRYABLE_CODES.contains(&code),
            // No ClickHouse exception in the body: a proxy/load balancer error page (502, 503…).
            None => true,
        },
        _ => false,
    }
}

/// The `Code: N` of a ClickHouse exception text (`Code: 60, e.displayText() = DB::Exception…`
/// on old servers, `Code: 60. DB::Exception…` on new ones).
pub fn server_error_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + "Code: ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::clickhouse::error::Error as E;

    #[test]
    fn classifies_server_errors() {
        let old = "Code: 60, e.displayText() = DB::Exception: Table audit.x doesn't exist., e.what() = DB::Exception";
        assert_eq!(server_error_code(old), Some(60));
        assert!(!is_retryable(&E::BadResponse(old.into())));
        let new = "Code: 252. DB::Exception: Too many parts (300). (TOO_MANY_PARTS)";
        assert!(is_retryable(&E::BadResponse(new.into())));
        assert!(is_retryable(&E::BadResponse(
            "Code: 202, e.displayText() = DB::Exception: Too many simultaneous queries".into()
        )));
        assert!(is_retryable(&E::BadResponse("502 Bad Gateway".into())));
        assert!(is_retryable(&E::TimedOut));
        assert!(!is_retryable(&E::NotEnoughData));
        let syntax = "Code: 62, e.displayText() = DB::Exception: Syntax error";
        assert!(!is_retryable(&E::BadResponse(syntax.into())));
    }
}
