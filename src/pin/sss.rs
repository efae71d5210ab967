//! The sss pin: Shamir's secret sharing over child pins, which may be sss again.

use std::sync::{Arc, mpsc};

use nbde_proto::clevis::Sss;
use nbde_proto::sss::{self, Polynomial, SHARE_LEN};
use nbde_proto::{Jwe, b64};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use super::Context;
use crate::error::{Error, Result};

/// `(pin, config)` pairs from `{"pins": {"tang": [cfg, …], "sss": cfg}}`.
fn child_configs(pins: &Map<String, Value>) -> Result<Vec<(&str, &Value)>> {
    let mut children = Vec::new();
    for (pin, configs) in pins {
        match configs {
            Value::Object(_) => children.push((pin.as_str(), configs)),
            Value::Array(list) => {
                for config in list {
                    if !config.is_object() {
                        return Err(Error::Config(format!(
                            "sss: a {pin} config is not an object"
                        )));
                    }
                    children.push((pin.as_str(), config));
                }
            }
            _ => {
                return Err(Error::Config(format!(
                    "sss: pins.{pin} must be an object or array"
                )));
            }
        }
    }
    Ok(children)
}

pub fn encrypt(config: &Value, plaintext: &[u8], ctx: &Context) -> Result<Jwe> {
    let pins = config
        .get("pins")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::Config("sss: missing \"pins\" object".into()))?;
    let threshold = match config.get("t") {
        None => 1,
        Some(t) => t
            .as_u64()
            .ok_or_else(|| Error::Config("sss: \"t\" must be a positive integer".into()))?,
    };
    let children = child_configs(pins)?;
    if threshold < 1 || threshold > children.len() as u64 {
        return Err(Error::Config(format!(
            "sss: invalid threshold (required: 1 <= {threshold} <= {})",
            children.len()
        )));
    }

    let polynomial = Polynomial::generate(threshold as usize).map_err(Error::proto("sss"))?;
    let mut jwes = Vec::with_capacity(children.len());
    for (pin, child) in children {
        let share = polynomial.share().map_err(Error::proto("sss share"))?;
        jwes.push(Value::String(
            super::encrypt(pin, child, &share[..], ctx)?.to_compact(),
        ));
    }
    let header = json!({
        "clevis": {
            "pin": "sss",
            "sss": {"jwe": jwes, "p": b64::encode(&polynomial.prime()), "t": threshold},
        },
    });
    let Value::Object(header) = header else {
        unreachable!("json! object")
    };
    Jwe::encrypt_dir(header, &polynomial.secret()[..], plaintext).map_err(Error::proto("encrypt"))
}

/// Recovers the children in parallel and stops as soon as `t` of them succeeded, or as
/// soon as so many failed that `t` can no longer be reached. Slow children are left to
/// finish within their own timeouts; nothing waits for them.
pub fn recover(sss: &Sss, jwe: &Jwe, ctx: &Context) -> Result<Zeroizing<Vec<u8>>> {
    let needed = sss.threshold;
    let total = sss.children.len();
    let (sender, receiver) = mpsc::channel();
    let mut failures = Vec::new();
    for child in &sss.children {
        let child = match child {
            Ok(child) => Arc::clone(child),
            Err(e) => {
                failures.push(Error::proto("sss child JWE")(e.clone()));
                continue;
            }
        };
        let sender = sender.clone();
        let ctx = *ctx;
        std::thread::spawn(move || {
            let result = super::recover(&child, &ctx).and_then(|share| {
                if share.len() == SHARE_LEN {
                    Ok(share)
                } else {
                    Err(Error::Proto {
                        step: "sss share",
                        source: nbde_proto::Error::Invalid("share length"),
                    })
                }
            });
            // The receiver is gone once the threshold was decided; that is fine.
            let _ = sender.send(result);
        });
    }
    drop(sender);

    let mut shares: Vec<Zeroizing<Vec<u8>>> = Vec::with_capacity(needed);
    if total - failures.len() >= needed {
        for result in receiver {
            match result {
                Ok(share) => shares.push(share),
                Err(e) => failures.push(e),
            }
            if shares.len() == needed || total - failures.len() < needed {
                break;
            }
        }
    }
    if shares.len() < needed {
        return Err(Error::Threshold {
            needed,
            succeeded: shares.len(),
            failures,
        });
    }
    let views: Vec<&[u8]> = shares.iter().map(|s| &s[..]).collect();
    let key = sss::recover(&sss.prime, &views).map_err(Error::proto("sss recover"))?;
    jwe.decrypt(&key[..]).map_err(Error::proto("decrypt"))
}
