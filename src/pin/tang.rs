//! The tang pin: ECDH-ES to the server's exchange key at bind time; a blinded
//! McCallum-Relyea exchange with the server at unlock time.

use std::io::{BufRead, Write};

use nbde_proto::clevis::Tang;
use nbde_proto::exchange;
use nbde_proto::jwe::ecdh_es_cek;
use nbde_proto::{Jwe, Jwk, Jws, KeySet, ThumbprintHash};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use super::Context;
use crate::error::{Error, Result};
use crate::http::{Client, http_url};

/// The parsed `tang` pin config: `{"url":…, "thp":…, "adv":…, "cacert":…}`, plus
/// `trusted_keys` (a key set): signing keys already trusted, which may vouch for `thp` when
/// the server no longer advertises that key but still signs with it (tang's rotated keys
/// sign `/adv/{thp}`). `regen` passes the old advertisement's keys here.
struct Config<'a> {
    /// The url as given, which the JWE records (as clevis records it).
    url: &'a str,
    /// The url requests go to (a scheme-less url is http).
    http_url: std::borrow::Cow<'a, str>,
    thp: Option<&'a str>,
    adv: Option<&'a Value>,
    cacert: Option<&'a str>,
    trusted_keys: Option<KeySet>,
}

fn optional_str<'a>(config: &'a Value, name: &str) -> Result<Option<&'a str>> {
    match config.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Error::Config(format!("tang: {name:?} must be a string"))),
    }
}

impl<'a> Config<'a> {
    fn parse(config: &'a Value) -> Result<Config<'a>> {
        if !config.is_object() {
            return Err(Error::Config("tang: config must be a JSON object".into()));
        }
        let url = optional_str(config, "url")?
            .ok_or_else(|| Error::Config("tang: missing \"url\"".into()))?;
        Ok(Config {
            url,
            http_url: http_url(url)?,
            thp: optional_str(config, "thp")?,
            adv: config.get("adv"),
            cacert: optional_str(config, "cacert")?,
            trusted_keys: config
                .get("trusted_keys")
                .map(KeySet::from_value)
                .transpose()
                .map_err(Error::proto("tang: trusted_keys"))?,
        })
    }
}

fn base(url: &str) -> &str {
    url.trim_end_matches('/')
}

/// Fetches (or reads) and verifies the advertisement, then checks it is trusted.
fn trusted_keys(config: &Config, client: &Client, ctx: &Context) -> Result<KeySet> {
    let jws = match config.adv {
        Some(Value::String(path)) => {
            let text =
                std::fs::read_to_string(path).map_err(Error::io(format!("adv file {path}")))?;
            Jws::parse(&text).map_err(Error::proto("adv file"))?
        }
        Some(value @ Value::Object(_)) => Jws::from_value(value).map_err(Error::proto("adv"))?,
        Some(_) => {
            return Err(Error::Config(
                "tang: \"adv\" must be a file name or a JWS".into(),
            ));
        }
        None => {
            let url = match config.thp {
                Some(thp) => format!("{}/adv/{thp}", base(&config.http_url)),
                None => format!("{}/adv/", base(&config.http_url)),
            };
            let body = client.get(&url)?;
            let text = std::str::from_utf8(&body).map_err(|_| Error::Reply {
                url: url.clone(),
                detail: "advertisement is not UTF-8".into(),
            })?;
            Jws::parse(text).map_err(|e| Error::Reply {
                url: url.clone(),
                detail: e.to_string(),
            })?
        }
    };
    let keys = KeySet::from_verified_adv(&jws).map_err(Error::proto("advertisement"))?;
    let vouched_by_known_key = |thp: &str| {
        config.trusted_keys.as_ref().is_some_and(|known| {
            known.signing_keys().any(|k| {
                k.matches_thumbprint_of(thp, &ThumbprintHash::CLEVIS_TRUSTED) && jws.is_signed_by(k)
            })
        })
    };
    match config.thp {
        Some(thp) if keys.is_signed_with_thumbprint(thp) || vouched_by_known_key(thp) => Ok(keys),
        Some(thp) => Err(Error::Config(format!(
            "tang: no signing key in the advertisement has thumbprint {thp}"
        ))),
        // An advertisement the user supplied is trusted as given, as clevis does.
        None if config.adv.is_some() || ctx.assume_yes => Ok(keys),
        None => ask_trust(&keys).map(|()| keys),
    }
}

/// Asks on the terminal whether to trust the advertisement's signing keys.
fn ask_trust(keys: &KeySet) -> Result<()> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| {
            Error::Config(
                "tang: no \"thp\" given and no terminal to confirm the advertisement \
                 (give \"thp\" or -y)"
                    .into(),
            )
        })?;
    let mut out = &tty;
    let mut prompt = String::from("The advertisement contains the following signing keys:\n\n");
    for key in keys.signing_keys() {
        let thp = key
            .thumbprint(ThumbprintHash::S256)
            .map_err(Error::proto("advertisement"))?;
        prompt.push_str(&thp);
        prompt.push('\n');
    }
    prompt.push_str("\nDo you wish to trust these keys? [ynYN] ");
    out.write_all(prompt.as_bytes())
        .map_err(Error::io("/dev/tty"))?;
    let mut answer = String::new();
    std::io::BufReader::new(&tty)
        .read_line(&mut answer)
        .map_err(Error::io("/dev/tty"))?;
    match answer.trim() {
        "y" | "Y" => Ok(()),
        _ => Err(Error::Untrusted),
    }
}

pub fn encrypt(config: &Value, plaintext: &[u8], ctx: &Context) -> Result<Jwe> {
    let config = Config::parse(config)?;
    let client = Client::new(ctx.timeouts, config.cacert, &config.http_url)?;
    let keys = trusted_keys(&config, &client, ctx)?;

    // The exchange key, as clevis stores it: public part without key_ops and alg.
    let mut exchange_key = keys
        .exchange_key()
        .map_err(Error::proto("advertisement"))?
        .to_public();
    exchange_key.remove("key_ops");
    exchange_key.remove("alg");
    let server_point = exchange_key.point().map_err(Error::proto("exchange key"))?;
    let kid = exchange_key
        .thumbprint(ThumbprintHash::S256)
        .map_err(Error::proto("exchange key"))?;

    // The signing key trusted now, recorded so that a later regen can fetch the rotated
    // advertisement through it (tang signs /adv/{thp} with a hidden key too) without asking
    // again. Stock clevis ignores the member.
    let trusted_thp = match config.thp {
        Some(thp) => thp.to_owned(),
        None => keys
            .signing_keys()
            .next()
            .ok_or_else(|| Error::Config("tang: advertisement has no signing key".into()))?
            .thumbprint(ThumbprintHash::S256)
            .map_err(Error::proto("advertisement"))?,
    };

    let mut tang = Map::new();
    tang.insert("adv".into(), keys.to_value());
    tang.insert("thp".into(), trusted_thp.into());
    tang.insert("url".into(), config.url.into());
    if let Some(cacert) = config.cacert {
        // Stored so that decrypt trusts the same CA; stock clevis ignores the member.
        tang.insert("cacert".into(), cacert.into());
    }
    let header = json!({
        "clevis": {"pin": "tang", "tang": tang},
        "kid": kid,
    });
    let Value::Object(header) = header else {
        unreachable!("json! object")
    };
    Jwe::encrypt_ecdh_es(header, &server_point, plaintext).map_err(Error::proto("encrypt"))
}

/// The exchange with the server, on a tang pin parsed once: blind the stored epk, POST,
/// check the reply, unblind, derive the key, decrypt.
pub fn recover(tang: &Tang, jwe: &Jwe, ctx: &Context) -> Result<Zeroizing<Vec<u8>>> {
    let blinded = exchange::blind(&tang.epk).map_err(Error::proto("blind"))?;
    let mut request = Jwk::from_point(blinded.request());
    request.set("alg", "ECMR".into());
    let rec_url = format!("{}/rec/{}", base(&http_url(&tang.url)?), tang.kid);
    let client = Client::new(ctx.timeouts, tang.cacert.as_deref(), &rec_url)?;
    let body = client.post(
        &rec_url,
        "application/jwk+json",
        request.to_value().to_string().as_bytes(),
    )?;
    let reply_error = |detail: String| Error::Reply {
        url: rec_url.clone(),
        detail,
    };
    let reply: Value =
        serde_json::from_slice(&body).map_err(|_| reply_error("not a JSON JWK".into()))?;
    let reply = Jwk::from_value(reply)
        .and_then(|k| k.point())
        .map_err(|e| reply_error(e.to_string()))?;
    if reply.curve() != tang.epk.curve() {
        return Err(reply_error("point on another curve".into()));
    }
    let z = blinded
        .unblind(&reply, &tang.server_key)
        .map_err(|e| reply_error(e.to_string()))?;
    jwe.decrypt(&ecdh_es_cek(&z)).map_err(|e| match e {
        // A wrong answer from the server shows up as a failed tag.
        nbde_proto::Error::Decrypt => reply_error("recovered key does not decrypt the JWE".into()),
        other => Error::Proto {
            step: "decrypt",
            source: other,
        },
    })
}
