//! Sealing and unsealing with the TPM through tpm2-tss's ESAPI (`tss-esapi`), with the
//! same objects `clevis encrypt tpm2` makes through tpm2-tools: a primary key recreated
//! from the owner seed on every use (`tpm2_createprimary -C o -g HASH -G KEY`), and a
//! keyedhash object holding the sealed JWK under it, optionally behind a PCR policy.

use std::str::FromStr;

use nbde_proto::tpm2::{PcrPolicy, Tpm2};
use sha1::Sha1;
use sha2::{Digest as _, Sha256, Sha384, Sha512};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Digest, EccPoint, EccScheme, KeyDerivationFunctionScheme, KeyedHashScheme, PcrSelectSize,
    PcrSelectionList, PcrSlot, Private, Public, PublicBuffer, PublicBuilder,
    PublicEccParametersBuilder, PublicKeyRsa, PublicKeyedHashParameters,
    PublicRsaParametersBuilder, RsaExponent, RsaScheme, SensitiveData, SymmetricDefinition,
    SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::{DeviceConfig, TctiNameConf};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::{Context, Error as TssError};
use zeroize::Zeroizing;

use crate::error::Tpm2Error;

/// The kernel's resource manager, which clevis uses too.
const DEFAULT_DEVICE: &str = "/dev/tpmrm0";
/// Environment variables naming a TCTI, in the order tpm2-tools and tss-esapi read them.
const TCTI_VARIABLES: [&str; 3] = ["TPM2TOOLS_TCTI", "TCTI", "TEST_TCTI"];
/// `TPM2_PCR_Read` answers at most eight digests at a time.
const PCRS_PER_READ: usize = 8;

/// An open TPM. Transient objects and sessions are flushed as soon as they are used: a
/// TPM reached without a resource manager (swtpm on a socket) keeps them otherwise.
pub struct Tpm {
    context: Context,
}

impl Tpm {
    /// Opens the TPM a TCTI variable names (as tpm2-tools reads them), else `/dev/tpmrm0`.
    pub fn open() -> Result<Tpm, Tpm2Error> {
        let named = TCTI_VARIABLES
            .iter()
            .find_map(|name| std::env::var(name).ok().map(|value| (*name, value)));
        let described = match &named {
            Some((name, value)) => format!("{name}={value}"),
            None => DEFAULT_DEVICE.to_owned(),
        };
        let tcti = match named {
            Some((name, value)) => TctiNameConf::from_str(&value).map_err(|_| {
                Tpm2Error::Unsupported(format!("{name}={value:?} is not a TCTI this tool knows"))
            })?,
            None => {
                if !std::path::Path::new(DEFAULT_DEVICE).exists() {
                    return Err(Tpm2Error::NoTpm(format!(
                        "{DEFAULT_DEVICE} does not exist (no TPM, or its driver is not loaded \
                         yet); set TPM2TOOLS_TCTI to reach another"
                    )));
                }
                TctiNameConf::Device(DeviceConfig::from_str(DEFAULT_DEVICE).map_err(tss)?)
            }
        };
        let context = Context::new(tcti).map_err(|e| {
            Tpm2Error::NoTpm(format!(
                "cannot reach the TPM ({described}): {}",
                crate::error::describe(&e)
            ))
        })?;
        Ok(Tpm { context })
    }

    /// Seals `secret` under the primary `key` with name algorithm `hash`, behind `pcrs`
    /// when given (their values now, or `pcr_values` as `clevis`'s `pcr_digest` gives
    /// them: the concatenated digests). Returns the public and private areas as TPM2Bs.
    pub fn seal(
        &mut self,
        hash: &str,
        key: &str,
        pcrs: Option<(&PcrPolicy, Option<&[u8]>)>,
        secret: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), Tpm2Error> {
        let name_alg = hashing_algorithm(hash)?;
        let primary_template = primary_template(name_alg, key)?;
        let policy = match pcrs {
            Some((pcrs, given)) => Some(self.pcr_policy_digest(name_alg, pcrs, given)?),
            None => None,
        };
        let sealed_template = sealed_template(name_alg, policy)?;
        let data = SensitiveData::try_from(secret.to_vec())
            .map_err(|_| Tpm2Error::Unsupported("secret too large to seal".into()))?;
        let primary = self.primary(primary_template)?;
        let created = self
            .context
            .execute_with_nullauth_session(|ctx| {
                ctx.create(primary, sealed_template, None, Some(data), None, None)
            })
            .map_err(tss);
        self.flush(primary.into());
        let created = created?;
        let public = PublicBuffer::try_from(created.out_public)
            .and_then(|p| p.marshall())
            .map_err(tss)?;
        let private = sized(created.out_private.value());
        Ok((public, private))
    }

    /// Unseals what `binding` holds: recreates its primary, loads the object, and unseals
    /// it through a PCR policy session when it is bound to PCRs.
    pub fn unseal(&mut self, binding: &Tpm2) -> Result<Zeroizing<Vec<u8>>, Tpm2Error> {
        let name_alg = hashing_algorithm(&binding.hash)?;
        let template = primary_template(name_alg, &binding.key)?;
        let public = PublicBuffer::unmarshall(&binding.public)
            .and_then(Public::try_from)
            .map_err(|e| Tpm2Error::Foreign(format!("jwk_pub: {}", crate::error::describe(&e))))?;
        let private = Private::try_from(binding.private[2..].to_vec())
            .map_err(|_| Tpm2Error::Foreign("jwk_priv: too large".into()))?;
        let primary = self.primary(template)?;
        let loaded = self
            .context
            .execute_with_nullauth_session(|ctx| ctx.load(primary, private, public));
        self.flush(primary.into());
        let loaded = loaded.map_err(|e| match crate::error::code(&e) {
            Some(code) if code.is_integrity() => Tpm2Error::Foreign(
                "the sealed key was not made by this TPM (another machine, or the TPM was \
                 cleared since)"
                    .into(),
            ),
            _ => tss(e),
        })?;
        let unsealed = match &binding.pcrs {
            None => self
                .context
                .execute_with_nullauth_session(|ctx| ctx.unseal(loaded.into())),
            Some(pcrs) => match selection(pcrs) {
                Ok(selected) => self.unseal_with_policy(name_alg, selected, loaded),
                Err(e) => {
                    self.flush(loaded.into());
                    return Err(e);
                }
            },
        };
        self.flush(loaded.into());
        let unsealed = unsealed.map_err(|e| match (crate::error::code(&e), &binding.pcrs) {
            (Some(code), Some(pcrs)) if code.is_policy_failure() => Tpm2Error::Policy(format!(
                "PCRs {}:{} no longer hold the values the key was sealed to (firmware, \
                 boot loader or kernel changed?)",
                pcrs.bank,
                pcrs.ids_text()
            )),
            _ => tss(e),
        })?;
        Ok(Zeroizing::new(unsealed.value().to_vec()))
    }

    fn unseal_with_policy(
        &mut self,
        name_alg: HashingAlgorithm,
        selection: PcrSelectionList,
        object: KeyHandle,
    ) -> Result<SensitiveData, TssError> {
        let session = self.session(SessionType::Policy, name_alg)?;
        let unsealed = PolicySession::try_from(session)
            .and_then(|policy| {
                // An empty digest: the TPM takes the PCRs' values now, and the unseal
                // fails with a policy error when they differ from the sealed ones.
                self.context
                    .policy_pcr(policy, Digest::default(), selection)
            })
            .and_then(|()| {
                self.context
                    .execute_with_session(Some(session), |ctx| ctx.unseal(object.into()))
            });
        self.flush(SessionHandle::from(session).into());
        unsealed
    }

    /// The policy digest of `TPM2_PolicyPCR` over `pcrs`, computed by the TPM in a trial
    /// session as `tpm2_createpolicy --policy-pcr` does.
    fn pcr_policy_digest(
        &mut self,
        name_alg: HashingAlgorithm,
        pcrs: &PcrPolicy,
        given: Option<&[u8]>,
    ) -> Result<Digest, Tpm2Error> {
        let values = match given {
            Some(values) => values.to_vec(),
            None => self.pcr_values(pcrs)?,
        };
        let bank_len = digest_len(hashing_algorithm(&pcrs.bank)?)?;
        if values.len() != bank_len * pcrs.ids.len() {
            return Err(Tpm2Error::Unsupported(format!(
                "pcr_digest holds {} bytes; {} PCRs of {} need {}",
                values.len(),
                pcrs.ids.len(),
                pcrs.bank,
                bank_len * pcrs.ids.len()
            )));
        }
        let pcr_digest = Digest::try_from(hash(name_alg, &values)?).map_err(tss)?;
        let selection = selection(pcrs)?;
        let session = self.session(SessionType::Trial, name_alg).map_err(tss)?;
        let digest = PolicySession::try_from(session)
            .and_then(|trial| {
                self.context
                    .policy_pcr(trial, pcr_digest, selection)
                    .and_then(|()| self.context.policy_get_digest(trial))
            })
            .map_err(tss);
        self.flush(SessionHandle::from(session).into());
        digest
    }

    /// The current values of `pcrs`, concatenated in ascending PCR order.
    fn pcr_values(&mut self, pcrs: &PcrPolicy) -> Result<Vec<u8>, Tpm2Error> {
        let mut values = Vec::new();
        for chunk in pcrs.ids.chunks(PCRS_PER_READ) {
            let part = PcrPolicy {
                bank: pcrs.bank.clone(),
                ids: chunk.to_vec(),
            };
            let part = selection(&part)?;
            let (_, _, digests) = self
                .context
                .execute_without_session(|ctx| ctx.pcr_read(part))
                .map_err(tss)?;
            if digests.value().len() != chunk.len() {
                return Err(Tpm2Error::Unsupported(format!(
                    "PCR bank {} is not active on this TPM",
                    pcrs.bank
                )));
            }
            for digest in digests.value() {
                values.extend_from_slice(digest.value());
            }
        }
        Ok(values)
    }

    fn primary(&mut self, template: Public) -> Result<KeyHandle, Tpm2Error> {
        self.context
            .execute_with_nullauth_session(|ctx| {
                ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })
            .map(|created| created.key_handle)
            .map_err(tss)
    }

    fn session(
        &mut self,
        kind: SessionType,
        hash: HashingAlgorithm,
    ) -> Result<AuthSession, TssError> {
        self.context
            .start_auth_session(None, None, None, kind, SymmetricDefinition::Null, hash)?
            .ok_or(TssError::WrapperError(
                tss_esapi::WrapperErrorKind::WrongValueFromTpm,
            ))
    }

    fn flush(&mut self, handle: ObjectHandle) {
        // A failed flush leaves a transient object the TPM drops at its next reset; the
        // answer the caller gets does not depend on it.
        let _ = self.context.flush_context(handle);
    }
}

fn tss(error: TssError) -> Tpm2Error {
    Tpm2Error::from_tss(&error)
}

/// A TPM2B: big-endian u16 size, then the bytes.
fn sized(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

pub fn hashing_algorithm(name: &str) -> Result<HashingAlgorithm, Tpm2Error> {
    match name {
        "sha1" => Ok(HashingAlgorithm::Sha1),
        "sha256" => Ok(HashingAlgorithm::Sha256),
        "sha384" => Ok(HashingAlgorithm::Sha384),
        "sha512" => Ok(HashingAlgorithm::Sha512),
        other => Err(Tpm2Error::Unsupported(format!("hash algorithm {other:?}"))),
    }
}

fn digest_len(alg: HashingAlgorithm) -> Result<usize, Tpm2Error> {
    Ok(hash(alg, b"")?.len())
}

fn hash(alg: HashingAlgorithm, data: &[u8]) -> Result<Vec<u8>, Tpm2Error> {
    Ok(match alg {
        HashingAlgorithm::Sha1 => Sha1::digest(data).to_vec(),
        HashingAlgorithm::Sha256 => Sha256::digest(data).to_vec(),
        HashingAlgorithm::Sha384 => Sha384::digest(data).to_vec(),
        HashingAlgorithm::Sha512 => Sha512::digest(data).to_vec(),
        other => return Err(Tpm2Error::Unsupported(format!("hash algorithm {other:?}"))),
    })
}

fn selection(pcrs: &PcrPolicy) -> Result<PcrSelectionList, Tpm2Error> {
    let slots: Vec<PcrSlot> = pcrs
        .ids
        .iter()
        .map(|id| PcrSlot::try_from(1u32 << id).map_err(tss))
        .collect::<Result<_, _>>()?;
    // Three select octets, as tpm2-tools writes them: the policy digest covers the size.
    PcrSelectionList::builder()
        .with_size_of_select(PcrSelectSize::ThreeOctets)
        .with_selection(hashing_algorithm(&pcrs.bank)?, &slots)
        .build()
        .map_err(tss)
}

/// The template `tpm2_createprimary -g HASH -G KEY` uses (tpm2-tools 4 and 5): a
/// restricted decryption key, AES-128-CFB for its children, an empty unique field. The
/// TPM derives the same key from the owner seed for the same template, every time.
pub fn primary_template(name_alg: HashingAlgorithm, key: &str) -> Result<Public, Tpm2Error> {
    let attributes = ObjectAttributesBuilder::new()
        .with_restricted(true)
        .with_decrypt(true)
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .build()
        .map_err(tss)?;
    let builder = PublicBuilder::new()
        .with_name_hashing_algorithm(name_alg)
        .with_object_attributes(attributes)
        .with_auth_policy(Digest::default());
    let builder = match key {
        "ecc" | "ecc256" => builder
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_ecc_parameters(
                PublicEccParametersBuilder::new()
                    .with_symmetric(SymmetricDefinitionObject::AES_128_CFB)
                    .with_ecc_scheme(EccScheme::Null)
                    .with_curve(EccCurve::NistP256)
                    .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                    .with_is_decryption_key(true)
                    .with_restricted(true)
                    .build()
                    .map_err(tss)?,
            )
            .with_ecc_unique_identifier(EccPoint::default()),
        "rsa" | "rsa2048" => builder
            .with_public_algorithm(PublicAlgorithm::Rsa)
            .with_rsa_parameters(
                PublicRsaParametersBuilder::new()
                    .with_symmetric(SymmetricDefinitionObject::AES_128_CFB)
                    .with_scheme(RsaScheme::Null)
                    .with_key_bits(RsaKeyBits::Rsa2048)
                    .with_exponent(RsaExponent::default())
                    .with_is_decryption_key(true)
                    .with_restricted(true)
                    .build()
                    .map_err(tss)?,
            )
            .with_rsa_unique_identifier(PublicKeyRsa::default()),
        other => {
            return Err(Tpm2Error::Unsupported(format!(
                "primary key algorithm {other:?} (ecc and rsa are)"
            )));
        }
    };
    builder.build().map_err(tss)
}

/// The sealed object `clevis encrypt tpm2` creates: a keyedhash data object, fixed to this
/// TPM and parent, no dictionary-attack lockout; authorised by its (empty) password when
/// there is no policy, by the PCR policy alone when there is.
fn sealed_template(
    name_alg: HashingAlgorithm,
    policy: Option<Digest>,
) -> Result<Public, Tpm2Error> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_no_da(true)
        .with_admin_with_policy(true)
        .with_user_with_auth(policy.is_none())
        .build()
        .map_err(tss)?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(name_alg)
        .with_object_attributes(attributes)
        .with_auth_policy(policy.unwrap_or_default())
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
        .map_err(tss)
}
