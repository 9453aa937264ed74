//! OpenPGP signing and verification (sequoia-openpgp, OpenSSL backend).
//!
//! Signatures are detached, binary, over the exact bytes of `rules.json`, so
//! `gpg --verify rules.json.sig rules.json` works with the leader's certificate. Verification
//! accepts a signature only if it is a good binary-document signature, not SHA-1 or MD5, made by
//! a key of a certificate in the keyring, and (when an allowlist is configured) that
//! certificate's primary-key fingerprint is on it.

use std::io::Write;
use std::path::{Path, PathBuf};

use openpgp::cert::prelude::*;
use openpgp::crypto::Password;
use openpgp::parse::stream::{
    DetachedVerifierBuilder, GoodChecksum, MessageLayer, MessageStructure, VerificationHelper,
};
use openpgp::parse::Parse;
use openpgp::policy::StandardPolicy;
use openpgp::serialize::stream::{Message, Signer};
use openpgp::serialize::SerializeInto;
use openpgp::types::{HashAlgorithm, SignatureType};
use openpgp::{Cert, KeyHandle};
use sequoia_openpgp as openpgp;

/// A signing or verification failure.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// A key, keyring or passphrase file could not be used (configuration).
    #[error("{0}")]
    Key(String),
    /// The signature does not verify or is not acceptable (the document is refused).
    #[error("{0}")]
    Rejected(String),
    /// I/O while writing.
    #[error("{0}")]
    Io(String),
}

/// The verified signer of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSigner {
    /// Primary-key fingerprint of the signing certificate (upper-case hex).
    pub fingerprint: String,
}

/// Who may sign: certificates and an optional allowlist of primary fingerprints.
#[derive(Debug, Clone)]
pub struct TrustRoot {
    certs: Vec<Cert>,
    allow: Vec<String>,
}

impl TrustRoot {
    /// Load a keyring (a certificate file with one or more certs, or a directory of them) and
    /// the allowlist (normalised upper-case hex).
    pub fn load(keyring: &Path, allow: &[String]) -> Result<TrustRoot, SigningError> {
        let mut certs = Vec::new();
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
            let parser = CertParser::from_file(f).map_err(|e| {
                SigningError::Key(format!("cannot read keyring {}: {e}", f.display()))
            })?;
            for c in parser {
                let c = c.map_err(|e| {
                    SigningError::Key(format!(
                        "keyring {}: not an OpenPGP certificate: {e}",
                        f.display()
                    ))
                })?;
                certs.push(c.strip_secret_key_material());
            }
        }
        if certs.is_empty() {
            return Err(SigningError::Key(format!(
                "keyring {} holds no certificates: export the leader's with `gpg --export --armor FPR` or use NAME.cert.asc from `reyes keygen`",
                keyring.display()
            )));
        }
        Ok(TrustRoot {
            certs,
            allow: allow.to_vec(),
        })
    }

    /// From certificates in memory.
    pub fn from_certs(certs: Vec<Cert>, allow: &[String]) -> TrustRoot {
        TrustRoot {
            certs,
            allow: allow.to_vec(),
        }
    }

    /// Verify a detached signature over `data`. Returns the signer.
    pub fn verify(&self, data: &[u8], signature: &[u8]) -> Result<VerifiedSigner, SigningError> {
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
            signer: None,
            problems: Vec::new(),
        };
        let mut v = DetachedVerifierBuilder::from_bytes(signature)
            .map_err(|e| {
                SigningError::Rejected(format!("signature is not an OpenPGP signature: {e}"))
            })?
            .with_policy(&policy, None, helper)
            .map_err(|e| SigningError::Rejected(format!("signature unusable: {e}")))?;
        let res = v.verify_bytes(data);
        let helper = v.into_helper();
        match (res, helper.signer) {
            (Ok(()), Some(fp)) => Ok(VerifiedSigner { fingerprint: fp }),
            (Ok(()), None) | (Err(_), _) if !helper.problems.is_empty() => {
                Err(SigningError::Rejected(helper.problems.join("; ")))
            }
            (Err(e), _) => Err(SigningError::Rejected(format!("bad signature: {e}"))),
            (Ok(()), None) => Err(SigningError::Rejected("no acceptable signature".into())),
        }
    }
}

struct Helper<'a> {
    root: &'a TrustRoot,
    signer: Option<String>,
    problems: Vec<String>,
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
                        let fp = ka.cert().fingerprint().to_hex();
                        if sig.typ() != SignatureType::Binary {
                            self.problems.push(format!(
                                "signature by {fp} is a {} signature; only binary document signatures are accepted (gpg --detach-sign, not --textmode/--clearsign)",
                                sig.typ()
                            ));
                        } else if matches!(
                            sig.hash_algo(),
                            HashAlgorithm::SHA1 | HashAlgorithm::MD5
                        ) {
                            self.problems.push(format!(
                                "signature by {fp} uses {}, which is refused",
                                sig.hash_algo()
                            ));
                        } else if !self.root.allow.is_empty() && !self.root.allow.contains(&fp) {
                            self.problems.push(format!(
                                "signer {fp} is in the keyring but not in signing.trusted_fingerprints"
                            ));
                        } else if self.signer.is_none() {
                            self.signer = Some(fp);
                        }
                    }
                    Err(e) => self.problems.push(format!("bad signature: {e}")),
                }
            }
        }
        if self.signer.is_some() {
            Ok(())
        } else {
            if self.problems.is_empty() {
                self.problems.push("no signature by a trusted key".into());
            }
            Err(openpgp::Error::InvalidOperation(self.problems.join("; ")).into())
        }
    }
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

    /// The primary-key fingerprint (upper-case hex).
    pub fn fingerprint(&self) -> String {
        self.cert.fingerprint().to_hex()
    }

    /// A detached binary signature over `data`.
    pub fn sign(&self, data: &[u8]) -> Result<Vec<u8>, SigningError> {
        let policy = StandardPolicy::new();
        let ka = self
            .cert
            .keys()
            .with_policy(&policy, None)
            .supported()
            .alive()
            .revoked(false)
            .for_signing()
            .secret()
            .next()
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
                .map_err(|e| SigningError::Io(e.to_string()))?
                .detached()
                .build()
                .map_err(|e| SigningError::Io(e.to_string()))?;
            signer
                .write_all(data)
                .map_err(|e| SigningError::Io(e.to_string()))?;
            signer
                .finalize()
                .map_err(|e| SigningError::Io(e.to_string()))?;
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
        .add_userid(format!("reyes leader {name}"))
        .add_signing_subkey()
        .set_password(passphrase)
        .generate()
        .map_err(|e| SigningError::Key(format!("key generation failed: {e}")))?;
    let secret = cert
        .as_tsk()
        .armored()
        .to_vec()
        .map_err(|e| SigningError::Io(e.to_string()))?;
    let public = cert
        .armored()
        .to_vec()
        .map_err(|e| SigningError::Io(e.to_string()))?;
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
        let other = TrustRoot::from_certs(vec![parse_cert(&public)], &["A".repeat(40)]);
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
