//! Why a tpm2 pin failed, in words a person at the console can act on, and whether trying
//! again may help (the exit status tells nbde-unlock).

use std::fmt;

use tss_esapi::Error as TssError;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;

/// Exit status for a failure that may pass (no TPM device yet, TPM busy): EX_TEMPFAIL.
pub const EXIT_TRANSIENT: i32 = 75;

#[derive(Debug)]
pub enum Tpm2Error {
    /// No TPM to talk to (yet): at boot the driver may still be loading.
    NoTpm(String),
    /// The TPM is busy or out of room for the moment.
    Busy(String),
    /// A PCR policy that the PCRs no longer satisfy.
    Policy(String),
    /// A sealed object this TPM cannot load (made by another TPM, or before a clear).
    Foreign(String),
    /// A configuration or binding this pin cannot use.
    Unsupported(String),
    /// Input on stdin that is not what the pin expects.
    Input(String),
    /// Anything else the TPM or the TSS said.
    Tpm(String),
}

impl Tpm2Error {
    pub fn from_tss(error: &TssError) -> Tpm2Error {
        match code(error) {
            Some(code) if code.is_busy() => Tpm2Error::Busy(describe(error)),
            _ => Tpm2Error::Tpm(describe(error)),
        }
    }

    /// Whether the same request may succeed later on this machine.
    pub fn is_transient(&self) -> bool {
        matches!(self, Tpm2Error::NoTpm(_) | Tpm2Error::Busy(_))
    }
}

impl fmt::Display for Tpm2Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tpm2Error::NoTpm(detail) => write!(f, "no TPM: {detail}"),
            Tpm2Error::Busy(detail) => write!(f, "TPM busy: {detail}"),
            Tpm2Error::Policy(detail) => write!(f, "PCR policy not satisfied: {detail}"),
            Tpm2Error::Foreign(detail) => write!(f, "cannot load the sealed key: {detail}"),
            Tpm2Error::Unsupported(detail) => write!(f, "unsupported: {detail}"),
            Tpm2Error::Input(detail) => write!(f, "{detail}"),
            Tpm2Error::Tpm(detail) => write!(f, "TPM error: {detail}"),
        }
    }
}

/// What a TSS error means for the caller.
#[derive(Clone, Copy, Debug)]
pub struct ResponseCode(Tss2ResponseCodeKind);

impl ResponseCode {
    pub fn is_policy_failure(self) -> bool {
        self.0 == Tss2ResponseCodeKind::PolicyFail
    }

    pub fn is_integrity(self) -> bool {
        self.0 == Tss2ResponseCodeKind::Integrity
    }

    /// The TPM's warnings that pass by themselves.
    pub fn is_busy(self) -> bool {
        matches!(
            self.0,
            Tss2ResponseCodeKind::ObjectMemory
                | Tss2ResponseCodeKind::SessionMemory
                | Tss2ResponseCodeKind::Memory
                | Tss2ResponseCodeKind::Yielded
                | Tss2ResponseCodeKind::Canceled
                | Tss2ResponseCodeKind::Testing
                | Tss2ResponseCodeKind::NvRate
                | Tss2ResponseCodeKind::Retry
        )
    }
}

pub fn code(error: &TssError) -> Option<ResponseCode> {
    match error {
        TssError::Tss2Error(rc) => rc.kind().map(ResponseCode),
        TssError::WrapperError(_) => None,
    }
}

/// The TSS's own words.
pub fn describe(error: &TssError) -> String {
    error.to_string()
}
