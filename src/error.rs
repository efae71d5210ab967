use std::fmt;

/// Why an unlock step failed. Peer faults (`Server`, `Reply`) are kept apart from local
/// ones so an operator knows which machine to look at.
#[derive(Debug)]
pub enum Error {
    /// A JOSE object or key failed to parse or check; `step` says which.
    Proto {
        step: &'static str,
        source: nbde_proto::Error,
    },
    /// The pin's configuration (CLI argument or JWE header) is unusable.
    Config(String),
    /// A pin this binary does not implement.
    UnsupportedPin(String),
    /// The server could not be reached or did not answer in time. `no_route`: this
    /// machine has no route to it (its network is not up yet), so nothing left the machine.
    Network {
        url: String,
        detail: String,
        no_route: bool,
    },
    /// The server answered with a non-2xx status.
    Server {
        url: String,
        status: u16,
        problem: Option<String>,
        /// Seconds from a `Retry-After` header, where the server sent one.
        retry_after: Option<u64>,
    },
    /// The server answered 2xx with something that is not a usable reply.
    Reply { url: String, detail: String },
    /// Too few children of an sss pin succeeded.
    Threshold {
        needed: usize,
        succeeded: usize,
        failures: Vec<Error>,
    },
    /// The user declined to trust an advertisement.
    Untrusted,
    /// libcryptsetup refused a step on the LUKS header or a keyslot.
    Luks { step: &'static str, detail: String },
    /// The key does not open the keyslot (libcryptsetup's EPERM).
    WrongKey,
    /// The luksmeta area of a LUKS1 device is missing, full, or corrupt.
    LuksMeta(String),
    Io {
        what: String,
        source: std::io::Error,
    },
    /// nbde-server's admin API refused a request (`detail` is the server's own words).
    Admin {
        url: String,
        status: u16,
        detail: String,
    },
    /// The volume (named) carries the sovereign marker: no automatic unlock.
    Sovereign(String),
    /// The tpm2 pin failed (`nbde-tpm2`'s words); `transient`: no TPM yet, or busy.
    Tpm2 { detail: String, transient: bool },
}

impl Error {
    pub fn proto(step: &'static str) -> impl FnOnce(nbde_proto::Error) -> Error {
        move |source| Error::Proto { step, source }
    }

    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Proto { step, source } => write!(f, "{step}: {source}"),
            Error::Config(msg) => write!(f, "configuration: {msg}"),
            Error::UnsupportedPin(pin) => write!(f, "pin {pin:?} is not supported by nbde-unlock"),
            Error::Network { url, detail, .. } => write!(f, "{url}: unreachable: {detail}"),
            Error::Server {
                url,
                status,
                problem,
                ..
            } => {
                write!(f, "{url}: server answered HTTP {status}")?;
                if let Some(problem) = problem {
                    write!(f, " ({problem})")?;
                }
                Ok(())
            }
            Error::Reply { url, detail } => write!(f, "{url}: unusable reply: {detail}"),
            Error::Threshold {
                needed,
                succeeded,
                failures,
            } => {
                write!(
                    f,
                    "sss: {succeeded} of the {needed} required pins succeeded"
                )?;
                for failure in failures {
                    write!(f, "; {failure}")?;
                }
                Ok(())
            }
            Error::Untrusted => write!(f, "advertisement not trusted"),
            Error::Luks { step, detail } => write!(f, "LUKS {step}: {detail}"),
            Error::WrongKey => write!(f, "wrong key: no keyslot opens with it"),
            Error::LuksMeta(msg) => write!(f, "LUKS1 metadata (luksmeta): {msg}"),
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::Admin {
                url,
                status,
                detail,
            } => write!(f, "{url}: server answered HTTP {status}: {detail}"),
            Error::Tpm2 { detail, .. } => write!(f, "tpm2: {detail}"),
            Error::Sovereign(device) => write!(
                f,
                "{device} is sovereign: its managed unlock path was removed, so no automatic \
                 unlock is attempted; open it with its user key (`mode managed+user` binds it again)"
            ),
        }
    }
}

impl Error {
    /// This error and, for an sss threshold, every child failure, depth first.
    pub fn leaves(&self) -> Vec<&Error> {
        match self {
            Error::Threshold { failures, .. } => failures.iter().flat_map(Error::leaves).collect(),
            other => vec![other],
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Proto { source, .. } => Some(source),
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
