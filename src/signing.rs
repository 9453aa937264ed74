//! OpenPGP signing and verification (sequoia-openpgp, OpenSSL backend).
//!
//! Signatures are detached, binary, over the exact bytes of `rules.json`, so
//! `gpg --verify rules.json.sig rules.json` works with the leaders' certificates. A signature
//! file may hold several signatures (OpenPGP allows concatenation; `reyes sign --append` and
//! the co-signing leader add one each). Verification refuses the file if any signature in it
//! is not acceptable, and otherwise counts the distinct trusted primary keys that signed; the
//! document needs [`TrustRoot::threshold`] of them (k of n).
//!
//! A signature is acceptable only if it is a good binary-document signature, not SHA-1 or MD5,
//! made by a signing-capable key of a certificate in the keyring, whose primary key and signing
//! key are both alive and not revoked *at the time of checking* (not merely when the signature
//! was made: a retired key cannot sign backdated documents), and (when an allowlist is
//! configured) whose primary fingerprint is on it and inside its `not_before`/`not_after`
//! window. Callers then check that every signature was made within [`SIGNATURE_SKEW`] of the
//! document's `issued_at` ([`VerifiedSigner::check_issued_at`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use openpgp::cert::prelude::*;
use openpgp::crypto::Password;
use openpgp::packet::Signature;
use openpgp::parse::stream::{
    DetachedVerifierBuilder, GoodChecksum, MessageLayer, MessageStructure, VerificationHelper,
};
use openpgp::parse::Parse;
use openpgp::policy::{Policy, StandardPolicy};
use openpgp::serialize::stream::{Message, Signer};
use openpgp::serialize::{Serialize, SerializeInto};
use openpgp::types::{HashAlgorithm, RevocationStatus, SignatureType};
use openpgp::{Cert, Fingerprint, KeyHandle, Packet, PacketPile};
use sequoia_openpgp as openpgp;

use crate::config::TrustedKey;

/// How far a signature's creation time may be from the document's `issued_at`.
pub const SIGNATURE_SKEW: Duration = Duration::from_secs(300);

/// A signing or verification failure.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// A key, keyring or passphrase file could not be used (configuration).
    #[error("{0}")]
    Key(String),
    /// The signature does not verify or is not acceptable (the document is refused).
    #[error("{0}")]
    Rejected(String),
    /// A file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// OpenPGP serialisation failed.
    #[error("{what}: {source}")]
    OpenPgp {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: anyhow::Error,
    },
}

fn pgp(what: &'static str) -> impl FnOnce(anyhow::Error) -> SigningError {
    move |source| SigningError::OpenPgp { what, source }
}

/// The verified signers of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSigner {
    /// Primary-key fingerprint of the first (in sort order) signing certificate (upper-case
    /// hex); all of them are in `fingerprints`.
    pub fingerprint: String,
    /// Every distinct trusted primary key with a good signature, sorted.
    pub fingerprints: Vec<String>,
    /// The creation time of every signature in the file.
    pub signed_at: Vec<SystemTime>,
}

impl VerifiedSigner {
    /// Every signature must have been made within [`SIGNATURE_SKEW`] of `issued_at`: a
    /// signature made long before the document claims to be issued (backdated) or long after
    /// is refused.
    pub fn check_issued_at(&self, issued_at: SystemTime) -> Result<(), SigningError> {
        for t in &self.signed_at {
            let off = t
                .duration_since(issued_at)
                .or_else(|_| issued_at.duration_since(*t))
                .unwrap_or(Duration::MAX);
            if off > SIGNATURE_SKEW {
                return Err(SigningError::Rejected(format!(
                    "a signature was made at {}, {}s from the document's issued_at {} (allowed: {}s): backdated or re-used signature",
                    crate::document::rfc3339(*t),
                    off.as_secs(),
                    crate::document::rfc3339(issued_at),
                    SIGNATURE_SKEW.as_secs()
                )));
            }
        }
        Ok(())
    }
}

/// Who may sign: certificates, an optional allowlist of primary fingerprints, and how many
/// distinct trusted keys must sign.
#[derive(Debug, Clone)]
pub struct TrustRoot {
    certs: Vec<Cert>,
    allow: Vec<TrustedKey>,
    threshold: usize,
}

/// Read one keyring file: certificates, and stand-alone revocation certificates (as
/// `gpg --gen-revoke` writes them) to merge into them.
fn read_keyring_file(f: &Path) -> Result<(Vec<Cert>, Vec<Signature>), SigningError> {
    let bad = |e: anyhow::Error| {
        SigningError::Key(format!(
            "keyring {}: not an OpenPGP certificate or revocation certificate: {e}",
            f.display()
        ))
    };
    let pile = PacketPile::from_file(f)
        .map_err(|e| SigningError::Key(format!("cannot read keyring {}: {e}", f.display())))?;
    let packets: Vec<Packet> = pile.into_children().collect();
    if matches!(packets.first(), Some(Packet::Signature(_))) {
        let mut revocations = Vec::new();
        for p in packets {
            match p {
                Packet::Signature(s) if s.typ() == SignatureType::KeyRevocation => {
                    revocations.push(s)
                }
                other => {
                    return Err(bad(anyhow::anyhow!(
                        "a {} packet where only key revocations were expected",
                        other.tag()
                    )))
                }
            }
        }
        return Ok((Vec::new(), revocations));
    }
    let certs = CertParser::from(packets)
        .map(|c| c.map(|c| c.strip_secret_key_material()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    Ok((certs, Vec::new()))
}

impl TrustRoot {
    /// Load a keyring (a certificate file with one or more certs, or a directory of them;
    /// revocation certificates are merged into the certificates they revoke) and the allowlist.
    pub fn load(keyring: &Path, allow: &[TrustedKey]) -> Result<TrustRoot, SigningError> {
        let mut certs = Vec::new();
        let mut revocations = Vec::new();
        let files: Vec<PathBuf> = if keyring.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(keyring)
                .map_err(|e| {
                    SigningError::Key(format!(
                        "cannot read keyring directory {}: {e}",
                        keyring.display()
                    ))
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && !p
                            .file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with('.'))
                })
                .collect();
            v.sort();
            v
        } else {
            vec![keyring.to_path_buf()]
        };
        for f in &files {
            let (c, r) = read_keyring_file(f)?;
            certs.extend(c);
            revocations.extend(r);
        }
        if certs.is_empty() {
            return Err(SigningError::Key(format!(
                "keyring {} holds no certificates: export the leader's with `gpg --export --armor FPR` or use NAME.cert.asc from `reyes keygen`",
                keyring.display()
            )));
        }
        for rev in revocations {
            let issuers = rev.get_issuers();
            let Some(i) = certs
                .iter()
                .position(|c| issuers.iter().any(|h| h.aliases(c.key_handle())))
            else {
                tracing::warn!(keyring = %keyring.display(), "a revocation certificate matches no certificate in the keyring; ignored");
                continue;
            };
            let cert = certs.swap_remove(i);
            let (merged, _) = cert
                .insert_packets(std::iter::once(Packet::from(rev)))
                .map_err(|e| SigningError::Key(format!("keyring {}: {e}", keyring.display())))?;
            certs.push(merged);
        }
        Ok(TrustRoot {
            certs,
            allow: allow.to_vec(),
            threshold: 1,
        })
    }

    /// From certificates in memory.
    pub fn from_certs(certs: Vec<Cert>, allow: &[TrustedKey]) -> TrustRoot {
        TrustRoot {
            certs,
            allow: allow.to_vec(),
            threshold: 1,
        }
    }

    /// Require `k` distinct trusted signers; refused when fewer keys could ever sign.
    pub fn with_threshold(mut self, k: usize) -> Result<TrustRoot, SigningError> {
        let mut candidates: Vec<String> = if self.allow.is_empty() {
            self.certs
                .iter()
                .map(|c| c.fingerprint().to_hex())
                .collect()
        } else {
            self.allow
                .iter()
                .filter(|a| {
                    self.certs
                        .iter()
                        .any(|c| c.fingerprint().to_hex() == a.fingerprint)
                })
                .map(|a| a.fingerprint.clone())
                .collect()
        };
        candidates.sort();
        candidates.dedup();
        // At 1, a keyring the allowlist does not match refuses each document (exit 3, as it
        // always has); above 1 an unreachable threshold is a configuration error.
        if k == 0 || (k > 1 && k > candidates.len()) {
            return Err(SigningError::Key(format!(
                "signing.threshold is {k}, but the keyring holds {} trusted certificate(s): no document could ever be accepted",
                candidates.len()
            )));
        }
        self.threshold = k;
        Ok(self)
    }

    /// Distinct trusted signers a document needs.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// Verify a detached signature file over `data` now, with the threshold.
    pub fn verify(&self, data: &[u8], signature: &[u8]) -> Result<VerifiedSigner, SigningError> {
        self.verify_at(data, signature, SystemTime::now())
    }

    /// Verify at `now`: every signature in the file acceptable, and at least
    /// [`TrustRoot::threshold`] distinct trusted primary keys among the signers.
    pub fn verify_at(
        &self,
        data: &[u8],
        signature: &[u8],
        now: SystemTime,
    ) -> Result<VerifiedSigner, SigningError> {
        let v = self.check_signatures(data, signature, now)?;
        if v.fingerprints.len() < self.threshold {
            return Err(SigningError::Rejected(format!(
                "signed by {} trusted key(s) ({}), but signing.threshold needs {}",
                v.fingerprints.len(),
                v.fingerprints.join(", "),
                self.threshold
            )));
        }
        Ok(v)
    }

    /// Every signature in the file acceptable at `now` (at least one); no threshold.
    pub fn check_signatures(
        &self,
        data: &[u8],
        signature: &[u8],
        now: SystemTime,
    ) -> Result<VerifiedSigner, SigningError> {
        if signature.len() as u64 > crate::document::limits::MAX_SIGNATURE_BYTES {
            return Err(SigningError::Rejected(format!(
                "signature is {} bytes, over the limit of {}",
                signature.len(),
                crate::document::limits::MAX_SIGNATURE_BYTES
            )));
        }
        let policy = StandardPolicy::new();
        let helper = Helper {
            root: self,
            policy: &policy,
            now,
            signers: Vec::new(),
            signed_at: Vec::new(),
            problems: Vec::new(),
        };
        let mut v = DetachedVerifierBuilder::from_bytes(signature)
            .map_err(|e| {
                SigningError::Rejected(format!("signature is not an OpenPGP signature: {e}"))
            })?
            // Signatures up to SIGNATURE_SKEW "in the future" (the signer's clock ahead of
            // ours) are fine; keys are judged at `now` in the helper.
            .with_policy(&policy, Some(now + SIGNATURE_SKEW), helper)
            .map_err(|e| SigningError::Rejected(format!("signature unusable: {e}")))?;
        let res = v.verify_bytes(data);
        let helper = v.into_helper();
        if !helper.problems.is_empty() {
            return Err(SigningError::Rejected(helper.problems.join("; ")));
        }
        if let Err(e) = res {
            return Err(SigningError::Rejected(format!("bad signature: {e}")));
        }
        let mut fingerprints = helper.signers;
        fingerprints.sort();
        fingerprints.dedup();
        let Some(first) = fingerprints.first().cloned() else {
            return Err(SigningError::Rejected("no acceptable signature".into()));
        };
        Ok(VerifiedSigner {
            fingerprint: first,
            fingerprints,
            signed_at: helper.signed_at,
        })
    }
}

struct Helper<'a> {
    root: &'a TrustRoot,
    policy: &'a dyn Policy,
    now: SystemTime,
    signers: Vec<String>,
    signed_at: Vec<SystemTime>,
    problems: Vec<String>,
}

impl Helper<'_> {
    /// Why the key that made a good signature does not count now, if it does not.
    fn refuse_key(&self, cert: &Cert, key: &KeyHandle) -> Option<String> {
        let fp = cert.fingerprint().to_hex();
        if !self.root.allow.is_empty() {
            match self.root.allow.iter().find(|a| a.fingerprint == fp) {
                None => {
                    return Some(format!(
                        "signer {fp} is in the keyring but not in signing.trusted_fingerprints"
                    ))
                }
                Some(a) if !a.valid_at(self.now) => {
                    return Some(format!(
                        "signer {fp} is outside its not_before/not_after window in signing.trusted_fingerprints"
                    ))
                }
                Some(_) => {}
            }
        }
        let vc = match cert.with_policy(self.policy, self.now) {
            Ok(vc) => vc,
            Err(e) => return Some(format!("certificate {fp} is not valid now: {e}")),
        };
        if let Err(e) = vc.alive() {
            return Some(format!("certificate {fp} has expired: {e}"));
        }
        if let RevocationStatus::Revoked(_) = vc.revocation_status() {
            return Some(format!("certificate {fp} is revoked"));
        }
        let Some(ka) = vc.keys().key_handle(key.clone()).next() else {
            return Some(format!(
                "the key {key} of certificate {fp} is not valid now"
            ));
        };
        if let Err(e) = ka.alive() {
            return Some(format!(
                "the key {key} of certificate {fp} has expired: {e}"
            ));
        }
        if let RevocationStatus::Revoked(_) = ka.revocation_status() {
            return Some(format!("the key {key} of certificate {fp} is revoked"));
        }
        if !ka.for_signing() {
            return Some(format!(
                "the key {key} of certificate {fp} is not marked for signing"
            ));
        }
        None
    }

    fn good(&mut self, sig: &Signature, cert: &Cert, key: KeyHandle) {
        let fp = cert.fingerprint().to_hex();
        if sig.typ() != SignatureType::Binary {
            self.problems.push(format!(
                "signature by {fp} is a {} signature; only binary document signatures are accepted (gpg --detach-sign, not --textmode/--clearsign)",
                sig.typ()
            ));
        } else if matches!(sig.hash_algo(), HashAlgorithm::SHA1 | HashAlgorithm::MD5) {
            self.problems.push(format!(
                "signature by {fp} uses {}, which is refused",
                sig.hash_algo()
            ));
        } else if let Some(p) = self.refuse_key(cert, &key) {
            self.problems.push(p);
        } else if let Some(t) = sig.signature_creation_time() {
            self.signers.push(fp);
            self.signed_at.push(t);
        } else {
            self.problems
                .push(format!("signature by {fp} has no creation time"));
        }
    }
}

impl VerificationHelper for Helper<'_> {
    fn get_certs(&mut self, _ids: &[KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        Ok(self.root.certs.clone())
    }

    fn check(&mut self, structure: MessageStructure) -> openpgp::Result<()> {
        for layer in structure.into_iter() {
            let MessageLayer::SignatureGroup { results } = layer else {
                self.problems
                    .push("unexpected OpenPGP structure (not a detached signature)".into());
                continue;
            };
            for r in results {
                match r {
                    Ok(GoodChecksum { sig, ka }) => {
                        let cert = ka.cert().clone();
                        self.good(sig, &cert, ka.key().key_handle());
                    }
                    Err(e) => self.problems.push(format!("bad signature: {e}")),
                }
            }
        }
        if self.problems.is_empty() && !self.signers.is_empty() {
            Ok(())
        } else {
            if self.problems.is_empty() {
                self.problems.push("no signature by a trusted key".into());
            }
            Err(openpgp::Error::InvalidOperation(self.problems.join("; ")).into())
        }
    }
}

/// A signature file with `extra` appended: `existing` may be armored or binary and must hold
/// only signatures; the result is binary.
pub fn append_signature(existing: &[u8], extra: &[u8]) -> Result<Vec<u8>, SigningError> {
    let mut out = Vec::new();
    for (what, bytes) in [("existing", existing), ("new", extra)] {
        let pile = PacketPile::from_bytes(bytes).map_err(|e| {
            SigningError::Rejected(format!("the {what} signature file is not OpenPGP: {e}"))
        })?;
        for p in pile.into_children() {
            if !matches!(p, Packet::Signature(_)) {
                return Err(SigningError::Rejected(format!(
                    "the {what} signature file holds a {} packet, not only signatures",
                    p.tag()
                )));
            }
            p.serialize(&mut out)
                .map_err(pgp("cannot serialise a signature"))?;
        }
    }
    Ok(out)
}

/// Read the first line of a passphrase file.
pub fn read_passphrase(path: &Path) -> Result<Password, SigningError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        SigningError::Key(format!(
            "cannot read passphrase file {}: {e}",
            path.display()
        ))
    })?;
    Ok(Password::from(text.lines().next().unwrap_or("")))
}

/// A loaded secret key ready to sign.
pub struct SigningKey {
    cert: Cert,
    passphrase: Option<Password>,
    source: String,
}

impl SigningKey {
    /// Load a secret key file (armored or binary; `reyes keygen` or `gpg --export-secret-keys`).
    pub fn load(path: &Path, passphrase: Option<Password>) -> Result<SigningKey, SigningError> {
        let cert = Cert::from_file(path).map_err(|e| {
            SigningError::Key(format!("cannot read secret key {}: {e}", path.display()))
        })?;
        if !cert.is_tsk() {
            return Err(SigningError::Key(format!(
                "{} holds no secret key material: export it with `gpg --export-secret-keys --armor FPR`",
                path.display()
            )));
        }
        Ok(SigningKey {
            cert,
            passphrase,
            source: path.display().to_string(),
        })
    }

    /// The key `signing.key` names, unlocked with `signing.passphrase_file` if set.
    pub fn from_config(cfg: &crate::config::SigningConfig) -> Result<SigningKey, SigningError> {
        let path = cfg.key.as_ref().ok_or_else(|| {
            SigningError::Key(
                "signing.key is not set: signing needs the leader's secret key".into(),
            )
        })?;
        let pass = cfg
            .passphrase_file
            .as_deref()
            .map(read_passphrase)
            .transpose()?;
        SigningKey::load(path, pass)
    }

    /// A trust root holding only this key's certificate: what verifies its own signatures.
    pub fn own_trust_root(&self) -> TrustRoot {
        TrustRoot::from_certs(vec![self.cert.clone().strip_secret_key_material()], &[])
    }

    /// The primary-key fingerprint (upper-case hex).
    pub fn fingerprint(&self) -> String {
        self.cert.fingerprint().to_hex()
    }

    /// The certificate (no secret key material).
    pub fn cert(&self) -> Cert {
        self.cert.clone().strip_secret_key_material()
    }

    /// A detached binary signature over `data`, made now.
    pub fn sign(&self, data: &[u8]) -> Result<Vec<u8>, SigningError> {
        self.sign_at(data, SystemTime::now())
    }

    /// A detached binary signature over `data` with creation time `at` (a document's
    /// `issued_at`: followers refuse signatures made far from it), by a signing key that is
    /// valid both now and at `at`.
    pub fn sign_at(&self, data: &[u8], at: SystemTime) -> Result<Vec<u8>, SigningError> {
        let policy = StandardPolicy::new();
        let now_ok: Vec<Fingerprint> = self
            .cert
            .keys()
            .with_policy(&policy, None)
            .alive()
            .revoked(false)
            .for_signing()
            .map(|k| k.key().fingerprint())
            .collect();
        let ka = self
            .cert
            .keys()
            .with_policy(&policy, at)
            .supported()
            .alive()
            .revoked(false)
            .for_signing()
            .secret()
            .find(|k| now_ok.contains(&k.key().fingerprint()))
            .ok_or_else(|| {
                SigningError::Key(format!(
                    "{}: no valid, unexpired secret key capable of signing",
                    self.source
                ))
            })?;
        let mut key = ka.key().clone();
        if key.secret().is_encrypted() {
            let pw = self.passphrase.as_ref().ok_or_else(|| {
                SigningError::Key(format!(
                    "{}: the secret key is protected by a passphrase; set signing.passphrase_file",
                    self.source
                ))
            })?;
            key = key
                .decrypt_secret(pw)
                .map_err(|_| SigningError::Key(format!("{}: wrong passphrase", self.source)))?;
        }
        let keypair = key
            .into_keypair()
            .map_err(|e| SigningError::Key(format!("{}: {e}", self.source)))?;
        let mut out = Vec::new();
        {
            let message = Message::new(&mut out);
            let mut signer = Signer::new(message, keypair)
                .map_err(pgp("cannot start signing"))?
                .detached()
                .creation_time(at)
                .build()
                .map_err(pgp("cannot start signing"))?;
            signer.write_all(data).map_err(|source| SigningError::Io {
                what: "cannot sign".into(),
                source,
            })?;
            signer
                .finalize()
                .map_err(pgp("cannot finish the signature"))?;
        }
        Ok(out)
    }
}

/// A new key: (armored secret key, armored certificate, fingerprint).
pub fn keygen(
    name: &str,
    passphrase: Option<Password>,
) -> Result<(Vec<u8>, Vec<u8>, String), SigningError> {
    let (cert, _rev) = CertBuilder::new()
        .set_profile(openpgp::Profile::RFC4880)
        .map_err(|e| SigningError::Key(e.to_string()))?
        .set_cipher_suite(CipherSuite::Cv25519)
        .add_userid(format!("{name} (reyes signing key)"))
        .add_signing_subkey()
        .set_password(passphrase)
        .generate()
        .map_err(|e| SigningError::Key(format!("key generation failed: {e}")))?;
    let secret = cert
        .as_tsk()
        .armored()
        .to_vec()
        .map_err(pgp("cannot serialise the secret key"))?;
    let public = cert
        .armored()
        .to_vec()
        .map_err(pgp("cannot serialise the certificate"))?;
    Ok((secret, public, cert.fingerprint().to_hex()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_cert(armored: &[u8]) -> Cert {
        Cert::from_bytes(armored).unwrap()
    }

    #[test]
    fn sign_then_verify_and_tamper() {
        let (secret, public, fp) = keygen("test", Some("pw".into())).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kp = dir.path().join("k.asc");
        std::fs::write(&kp, &secret).unwrap();
        let key = SigningKey::load(&kp, Some("pw".into())).unwrap();
        assert_eq!(key.fingerprint(), fp);
        let sig = key.sign(b"hello").unwrap();
        let root = TrustRoot::from_certs(vec![parse_cert(&public)], &[]);
        assert_eq!(root.verify(b"hello", &sig).unwrap().fingerprint, fp);
        assert!(matches!(
            root.verify(b"hellp", &sig),
            Err(SigningError::Rejected(_))
        ));
        let mut bad = sig.clone();
        let n = bad.len() - 3;
        bad[n] ^= 1;
        assert!(root.verify(b"hello", &bad).is_err());
        // Allowlist that does not name the signer.
        let other = TrustRoot::from_certs(
            vec![parse_cert(&public)],
            &[TrustedKey::new(&"A".repeat(40)).unwrap()],
        );
        let e = other.verify(b"hello", &sig).unwrap_err().to_string();
        assert!(e.contains("trusted_fingerprints"), "{e}");
        // A keyring without the signer.
        let (_, public2, _) = keygen("other", None).unwrap();
        let wrong = TrustRoot::from_certs(vec![parse_cert(&public2)], &[]);
        assert!(wrong.verify(b"hello", &sig).is_err());
    }

    #[test]
    fn wrong_or_missing_passphrase() {
        let (secret, _, _) = keygen("test", Some("pw".into())).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kp = dir.path().join("k.asc");
        std::fs::write(&kp, &secret).unwrap();
        let e = SigningKey::load(&kp, Some("nope".into()))
            .unwrap()
            .sign(b"x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("wrong passphrase"), "{e}");
        let e = SigningKey::load(&kp, None)
            .unwrap()
            .sign(b"x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("passphrase_file"), "{e}");
    }
}
