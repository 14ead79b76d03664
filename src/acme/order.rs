//! One order, RFC 8555 §7.4 (the messages are rustls-acme's): account, order, a
//! TLS-ALPN-01 challenge per name, CSR, download, then the cache. Every wait is the
//! runtime's; every network step is bounded.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rustls_acme::acme::{Account, AuthStatus, Directory, Identifier, OrderStatus};

use crate::runtime::Runtime;
use crate::tls::acme::{Acme, AcmeError, Served, cache};

/// How long one exchange with the directory may take.
const STEP: Duration = Duration::from_secs(30);
/// How long the directory may take to validate a name or issue the certificate.
const PATIENCE: Duration = Duration::from_secs(120);

async fn step<T, E: std::fmt::Display>(
    rt: &dyn Runtime,
    name: &'static str,
    future: impl Future<Output = Result<T, E>>,
) -> Result<T, AcmeError> {
    match crate::runtime::timeout(rt, STEP, future).await {
        Some(Ok(value)) => Ok(value),
        Some(Err(e)) => Err(AcmeError::Refused {
            step: name,
            reason: e.to_string(),
        }),
        None => Err(AcmeError::Timeout {
            step: name,
            after: STEP,
        }),
    }
}

/// The account key: the cached one, or a new one written to the cache first (the account
/// is the key: losing it loses nothing but the account's history).
fn account_key(acme: &Acme) -> Result<Vec<u8>, AcmeError> {
    use rustls_pki_types::pem::PemObject as _;
    let path = cache::account_path(acme.config());
    if let Some(pem) = cache::read(&path)? {
        if let Ok(key) = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem) {
            return Ok(key.secret_pkcs8_der().to_vec());
        }
    }
    let key = Account::generate_key_pair();
    let pem = rcgen::KeyPair::try_from(key.as_slice())
        .map_err(|e| AcmeError::Refused {
            step: "an account key",
            reason: e.to_string(),
        })?
        .serialize_pem();
    cache::write(&path, pem.as_bytes())?;
    Ok(key)
}

/// Orders a certificate for `acme`'s names, answers the challenges through `acme` (the
/// listeners find them there), caches and returns it. Does not serve it.
pub(crate) async fn order(acme: &Acme, rt: &dyn Runtime) -> Result<Arc<Served>, AcmeError> {
    let client = acme.client();
    let config = acme.config();
    let key = account_key(acme)?;
    let directory =
        match crate::runtime::timeout(rt, STEP, Directory::discover(client, &config.directory))
            .await
        {
            Some(Ok(directory)) => directory,
            Some(Err(e)) => {
                return Err(AcmeError::Unreachable {
                    url: config.directory.clone(),
                    reason: e.to_string(),
                });
            }
            None => {
                return Err(AcmeError::Unreachable {
                    url: config.directory.clone(),
                    reason: format!("no answer within {STEP:?}"),
                });
            }
        };
    let account = step(
        rt,
        "the account",
        Account::create_with_keypair(client, directory, &config.contact, &key),
    )
    .await?;
    let names = acme.names().to_vec();
    let (order_url, mut order) =
        step(rt, "the order", account.new_order(client, names.clone())).await?;
    // Made now, so the same key and CSR serve every round of the loop below.
    let cert_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| {
        AcmeError::Refused {
            step: "a certificate key",
            reason: e.to_string(),
        }
    })?;
    let mut params =
        rcgen::CertificateParams::new(names.clone()).map_err(|e| AcmeError::Refused {
            step: "the CSR",
            reason: e.to_string(),
        })?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&cert_key)
        .map_err(|e| AcmeError::Refused {
            step: "the CSR",
            reason: e.to_string(),
        })?;
    let deadline = rt.now() + PATIENCE;
    let mut pause = Duration::from_millis(250);
    loop {
        match order.status {
            OrderStatus::Pending => {
                for url in &order.authorizations {
                    authorize(acme, rt, &account, url).await?;
                }
                order = step(rt, "the order", account.order(client, &order_url)).await?;
            }
            OrderStatus::Ready => {
                order = step(
                    rt,
                    "the finalization",
                    account.finalize(client, &order.finalize, csr.der()),
                )
                .await?;
            }
            OrderStatus::Processing => {
                if rt.now() > deadline {
                    return Err(AcmeError::Timeout {
                        step: "the issuance",
                        after: PATIENCE,
                    });
                }
                rt.sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
                order = step(rt, "the order", account.order(client, &order_url)).await?;
            }
            OrderStatus::Valid { certificate } => {
                let chain = step(
                    rt,
                    "the download",
                    account.certificate(client, &certificate),
                )
                .await?;
                let pem = format!("{}{chain}", cert_key.serialize_pem());
                let served =
                    Served::parse(pem.as_bytes()).map_err(|reason| AcmeError::Refused {
                        step: "the certificate",
                        reason,
                    })?;
                cache::write(&cache::cert_path(config), pem.as_bytes())?;
                return Ok(Arc::new(served));
            }
            OrderStatus::Invalid => {
                let reason = order
                    .error
                    .as_ref()
                    .and_then(|p| p.detail.clone())
                    .unwrap_or_else(|| "the order became invalid".into());
                return Err(AcmeError::Refused {
                    step: "the order",
                    reason,
                });
            }
        }
    }
}

/// Answers one authorization's TLS-ALPN-01 challenge and waits for its verdict.
async fn authorize(
    acme: &Acme,
    rt: &dyn Runtime,
    account: &Account,
    url: &str,
) -> Result<(), AcmeError> {
    let client = acme.client();
    let auth = step(rt, "an authorization", account.auth(client, url)).await?;
    let Identifier::Dns(domain) = auth.identifier.clone();
    match auth.status {
        AuthStatus::Valid => return Ok(()),
        AuthStatus::Pending => {}
        other => {
            return Err(AcmeError::Challenge {
                domain,
                reason: format!("the authorization is {other:?}"),
            });
        }
    }
    let (challenge, key) = account
        .tls_alpn_01(&auth.challenges, domain.clone())
        .map_err(|e| AcmeError::Challenge {
            domain: domain.clone(),
            reason: e.to_string(),
        })?;
    acme.set_challenge(&domain, Arc::new(key));
    step(rt, "a challenge", account.challenge(client, &challenge.url)).await?;
    let deadline = rt.now() + PATIENCE;
    let mut pause = Duration::from_millis(100);
    loop {
        rt.sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
        let auth = step(rt, "an authorization", account.auth(client, url)).await?;
        match auth.status {
            AuthStatus::Valid => return Ok(()),
            AuthStatus::Pending if rt.now() < deadline => {}
            AuthStatus::Pending => {
                return Err(AcmeError::Timeout {
                    step: "the validation",
                    after: PATIENCE,
                });
            }
            _ => {
                let reason = auth
                    .challenges
                    .iter()
                    .find_map(|c| c.error.as_ref()?.detail.clone())
                    .unwrap_or_else(|| format!("the authorization is {:?}", auth.status));
                return Err(AcmeError::Challenge { domain, reason });
            }
        }
    }
}
