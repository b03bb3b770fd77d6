//! etcd v2's error codes (v2error/error.go), one enum, exhaustive matches.

/// One variant per etcd v2 error code. `message()` and `http_status()` are exhaustive
/// matches so a new code forces a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    KeyNotFound = 100,
    TestFailed = 101,
    NotFile = 102,
    NotDir = 104,
    NodeExist = 105,
    RootReadOnly = 107,
    DirNotEmpty = 108,
    Unauthorized = 110,
    PrevValueRequired = 201,
    TtlNaN = 202,
    IndexNaN = 203,
    InvalidField = 209,
    InvalidForm = 210,
    RefreshValue = 211,
    RefreshTtlRequired = 212,
    RaftInternal = 300,
    LeaderElect = 301,
    WatcherCleared = 400,
    EventIndexCleared = 401,
}

impl ErrorCode {
    /// etcd's message text, verbatim.
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::KeyNotFound => "Key not found",
            ErrorCode::TestFailed => "Compare failed",
            ErrorCode::NotFile => "Not a file",
            ErrorCode::NotDir => "Not a directory",
            ErrorCode::NodeExist => "Key already exists",
            ErrorCode::RootReadOnly => "Root is read only",
            ErrorCode::DirNotEmpty => "Directory not empty",
            ErrorCode::Unauthorized => "The request requires user authentication",
            ErrorCode::PrevValueRequired => "PrevValue is Required in POST form",
            ErrorCode::TtlNaN => "The given TTL in POST form is not a number",
            ErrorCode::IndexNaN => "The given index in POST form is not a number",
            ErrorCode::InvalidField => "Invalid field",
            ErrorCode::InvalidForm => "Invalid POST form",
            ErrorCode::RefreshValue => "Value provided on refresh",
            ErrorCode::RefreshTtlRequired => "A TTL must be provided on refresh",
            ErrorCode::RaftInternal => "Raft Internal Error",
            ErrorCode::LeaderElect => "During Leader Election",
            ErrorCode::WatcherCleared => "watcher is cleared due to etcd recovery",
            ErrorCode::EventIndexCleared => "The event in requested index is outdated and cleared",
        }
    }

    /// The HTTP status etcd answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::KeyNotFound => 404,
            ErrorCode::TestFailed | ErrorCode::NodeExist => 412,
            ErrorCode::NotFile | ErrorCode::DirNotEmpty => 403,
            ErrorCode::Unauthorized => 401,
            ErrorCode::RaftInternal | ErrorCode::LeaderElect => 500,
            ErrorCode::NotDir
            | ErrorCode::RootReadOnly
            | ErrorCode::PrevValueRequired
            | ErrorCode::TtlNaN
            | ErrorCode::IndexNaN
            | ErrorCode::InvalidField
            | ErrorCode::InvalidForm
            | ErrorCode::RefreshValue
            | ErrorCode::RefreshTtlRequired
            | ErrorCode::WatcherCleared
            | ErrorCode::EventIndexCleared => 400,
        }
    }

    pub fn code(self) -> u16 {
        self as u16
    }
}

/// The one error carrier: rendered as `{"errorCode","message","cause","index"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub code: ErrorCode,
    /// Omitted from the JSON when empty.
    pub cause: String,
    /// The current etcd index (0 for request-parsing errors).
    pub index: u64,
}

impl Error {
    pub fn new(code: ErrorCode, cause: impl Into<String>, index: u64) -> Error {
        Error {
            code,
            cause: cause.into(),
            index,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} ({}) [{}]",
            self.code.code(),
            self.code.message(),
            self.cause,
            self.index
        )
    }
}

impl std::error::Error for Error {}
