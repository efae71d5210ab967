use std::fmt;

/// Everything that can go wrong while reading, checking or computing a JOSE object.
///
/// Each variant names the step and, where there is one, the field that failed, so a
/// message printed at boot says what to look at without a debugger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Input that is not base64url (RFC 7515 §2: no padding, canonical trailing bits).
    Base64(&'static str),
    /// Input that is not the JSON the step expects.
    Json(&'static str),
    /// A required member is absent or has the wrong type.
    Missing(&'static str),
    /// A member is present but its value is not allowed here.
    Invalid(&'static str),
    /// An algorithm, curve or key type we do not implement.
    Unsupported(String),
    /// A point that is not on its curve, is the identity, or has coordinates of the wrong length.
    BadPoint(&'static str),
    /// Two keys or points that must share a curve do not.
    CurveMismatch,
    /// A JWS signature that does not verify.
    BadSignature,
    /// AES-GCM refused the tag: wrong key, or the ciphertext was changed.
    Decrypt,
    /// An input over the size we accept.
    TooLarge(&'static str),
    /// The operating system's random number generator failed.
    Random,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Base64(what) => write!(f, "{what}: not base64url"),
            Error::Json(what) => write!(f, "{what}: not valid JSON of the expected shape"),
            Error::Missing(what) => write!(f, "missing or mistyped member {what}"),
            Error::Invalid(what) => write!(f, "invalid value for {what}"),
            Error::Unsupported(what) => write!(f, "unsupported {what}"),
            Error::BadPoint(what) => {
                write!(f, "{what}: not a valid point on its curve")
            }
            Error::CurveMismatch => write!(f, "keys are on different curves"),
            Error::BadSignature => write!(f, "signature does not verify"),
            Error::Decrypt => write!(f, "decryption failed: wrong key or altered ciphertext"),
            Error::TooLarge(what) => write!(f, "{what}: too large"),
            Error::Random => write!(f, "the system random number generator failed"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
