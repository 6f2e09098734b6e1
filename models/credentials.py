"""C2PA content credentials for sampled clips: a signed manifest inside each mp4 that other tools can read.

Every clip the sampler writes (`reelora sample`, the Python API, the studio, validation samples) goes
through `media.write_mp4`, which embeds a C2PA manifest with c2pa-python (the C2PA reference library):

- a `c2pa.actions.v2` assertion with one `c2pa.created` action whose `digitalSourceType` is IPTC's
  `trainedAlgorithmicMedia` and whose `softwareAgent` is reelora (with its version); its `parameters`
  name the base model and each adapter (sha256, scale, lineage summary: base model, trigger, titles, rank);
- our provenance record (the JSON sidecar's content) as the custom assertion `org.reelora.provenance`.

Signing needs an X.509 certificate chain and its private key (ES256, ES384, ES512, PS256.. or Ed25519). A
studio passes its own (`--sign-cert/--sign-key`, `Sampler(sign_cert=, sign_key=)`, or the environment
variables REELORA_SIGN_CERT / REELORA_SIGN_KEY, which reach every writer including validation samples).
Without one, a development certificate is generated once (a local CA and a leaf signed by it, ES256) and
cached under `$XDG_CACHE_HOME/reelora/c2pa/`: manifests it signs validate (the hashes and signature are
checked) but no C2PA trust list knows it, so readers report the signer as untrusted. The provenance says so.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROVENANCE_LABEL = "org.reelora.provenance"
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
CERT_ENV, KEY_ENV = "REELORA_SIGN_CERT", "REELORA_SIGN_KEY"
DEV_SUBJECT = "reelora development signer (untrusted)"
DEV_NOTE = ("signed with a locally generated reelora development certificate: the manifest's hashes and signature "
            "verify, but no C2PA trust list knows this signer; pass --sign-cert/--sign-key for a trusted one")
# c2pa's algorithm names by the key type and curve of the signing key.
_CURVE_ALG = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}


class CredentialsError(ValueError):
    """A signing certificate or key that cannot be used (names the file and what is wrong)."""


@dataclass(frozen=True)
class SigningKey:
    """A PEM certificate chain (signer first, then its issuers) and the signer's PEM private key."""

    cert_chain: bytes
    private_key: bytes
    alg: str
    """c2pa signing algorithm, from the key: es256/es384/es512, ps256, ed25519."""
    subject: str
    """The signing certificate's subject, for logs and provenance."""
    development: bool
    """True for the generated development certificate (no trust list knows it)."""
    source: str
    """Where the pair came from: the files given, or the development cache."""

    def describe(self) -> dict:
        """What the provenance records about the signer (never the key)."""
        out = {"standard": "C2PA", "signer": self.subject, "alg": self.alg, "certificate": self.source,
               "development_certificate": self.development}
        if self.development:
            out["note"] = DEV_NOTE
        return out


def load_signing_key(cert: str | Path, key: str | Path, *, development: bool = False) -> SigningKey:
    """Read a PEM certificate chain and private key given by the user, checking they belong together.

    Raises:
        CredentialsError: a missing/unreadable file, no certificate in the chain file, a key of a kind
            C2PA cannot sign with, or a key that is not the certificate's.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    cert, key = Path(cert).expanduser(), Path(key).expanduser()
    for what, p in (("certificate", cert), ("key", key)):
        if not p.is_file():
            raise CredentialsError(f"signing {what} {p}: no such file")
    chain_pem, key_pem = cert.read_bytes(), key.read_bytes()
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as exc:
        raise CredentialsError(f"signing certificate {cert}: not a PEM certificate chain ({exc})") from None
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CredentialsError(f"signing key {key}: not an unencrypted PEM private key ({exc})") from None
    if isinstance(private, ec.EllipticCurvePrivateKey):
        alg = _CURVE_ALG.get(private.curve.name)
    elif isinstance(private, rsa.RSAPrivateKey):
        alg = "ps256"  # C2PA allows RSA only with PSS padding
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        alg = "ed25519"
    else:
        alg = None
    if alg is None:
        raise CredentialsError(f"signing key {key}: {type(private).__name__} cannot sign C2PA manifests "
                               "(use EC P-256/P-384/P-521, RSA or Ed25519)")
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if chain[0].public_key().public_bytes(serialization.Encoding.DER, pub) != \
            private.public_key().public_bytes(serialization.Encoding.DER, pub):
        raise CredentialsError(f"signing key {key} is not the key of the first certificate in {cert}")
    return SigningKey(cert_chain=chain_pem, private_key=key_pem, alg=alg, subject=chain[0].subject.rfc4514_string(),
                      development=development, source=str(cert))


def dev_cert_dir() -> Path:
    """`$XDG_CACHE_HOME/reelora/c2pa`, default `~/.cache/reelora/c2pa`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "reelora" / "c2pa"


def development_key(folder: str | Path | None = None) -> SigningKey:
    """The cached development signer, generated on first use (a CA and a leaf it signs, both ES256)."""
    folder = Path(folder) if folder is not None else dev_cert_dir()
    cert, key = folder / "dev-chain.pem", folder / "dev-key.pem"
    if not (cert.is_file() and key.is_file()):
        _write_dev_pair(folder, cert, key)
    loaded = load_signing_key(cert, key, development=True)
    return SigningKey(**{**loaded.__dict__, "source": f"development certificate {cert}"})


def resolve_signing_key(cert: str | Path | None = None, key: str | Path | None = None) -> SigningKey:
    """The user's pair when given (arguments, else REELORA_SIGN_CERT/REELORA_SIGN_KEY), else the development one.

    Raises:
        CredentialsError: only one of certificate and key given, or a pair that cannot be used.
    """
    where = "arguments"
    if cert is None and key is None:
        cert, key, where = os.environ.get(CERT_ENV) or None, os.environ.get(KEY_ENV) or None, f"{CERT_ENV}/{KEY_ENV}"
    if (cert is None) != (key is None):
        raise CredentialsError(f"signing needs both a certificate and a key ({where}: got only "
                               f"{'the certificate' if cert else 'the key'})")
    if cert is None:
        return _cached_dev_key()
    return load_signing_key(cert, key)


_DEV_CACHE: dict[Path, SigningKey] = {}


def _cached_dev_key() -> SigningKey:
    folder = dev_cert_dir()
    if folder not in _DEV_CACHE:
        _DEV_CACHE[folder] = development_key(folder)
        log.warning("C2PA: %s (%s)", DEV_NOTE, folder)
    return _DEV_CACHE[folder]


def _write_dev_pair(folder: Path, cert_path: Path, key_path: Path) -> None:
    """A CA and a leaf with the extensions c2pa checks on a claim signer (key usage digitalSignature, an
    extended key usage C2PA accepts, not a CA, key identifiers): c2pa refuses a self-signed signer."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "reelora (local development)")])

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = name("reelora development CA (untrusted)")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(name(DEV_SUBJECT)).issuer_name(ca_name)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    # Written into a fresh folder renamed into place in one step, so two processes starting at once never
    # pair one's key with the other's certificate: the first rename wins and the loser's folder is dropped.
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".c2pa-", dir=folder.parent))  # mode 0700: the key stays private
    try:
        fd = os.open(tmp / key_path.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # private to the user
        with os.fdopen(fd, "wb") as f:
            f.write(leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (tmp / cert_path.name).write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
        try:
            os.rename(tmp, folder)
        except OSError:  # another process made it first (or an old, incomplete folder is in the way)
            if not (cert_path.is_file() and key_path.is_file()):
                raise CredentialsError(f"{folder}: holds no development certificate and key; remove it") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- the manifest ----------------------------------------------------------------------------------------------


def manifest_definition(provenance: dict, signer: SigningKey, title: str) -> dict:
    """The C2PA manifest for a generated clip: the `c2pa.created` action and our provenance assertion."""
    from reelora import __version__

    agent = {"name": "reelora", "version": __version__}
    base = provenance.get("base_model") or {}
    params: dict[str, Any] = {
        "base_model": {k: base[k] for k in ("id", "family", "revision") if base.get(k) is not None},
        "adapters": [_adapter_summary(a) for a in provenance.get("adapters", [])],
    }
    for k in ("prompt", "seed", "steps", "step"):
        if k in provenance:
            params[k] = provenance[k]
    return {
        "claim_generator_info": [agent],
        "title": title,
        "format": "video/mp4",
        "assertions": [
            {"label": "c2pa.actions.v2",
             "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                                   "softwareAgent": agent, "description": "sampled by a video diffusion model"
                                   + (" with LoRA adapters" if params["adapters"] else ""), "parameters": params}]}},
            {"label": PROVENANCE_LABEL, "data": provenance},
        ],
    }


def _adapter_summary(adapter: dict) -> dict:
    """An adapter as the manifest names it: file, sha256, scale and the lineage a reviewer needs."""
    lineage = adapter.get("lineage") or {}
    config = adapter.get("lora_config") or {}
    out = {"file": Path(str(adapter.get("path", ""))).name, "sha256": adapter.get("sha256"),
           "scale": adapter.get("scale"), "format": adapter.get("format")}
    summary = {k.removeprefix("reelora."): lineage[k] for k in
               ("reelora.base_model", "reelora.base_revision", "reelora.trigger", "reelora.titles") if k in lineage}
    if "r" in config:
        summary["rank"] = config["r"]
    if summary:
        out["lineage"] = summary
    return {k: v for k, v in out.items() if v is not None}


def sign_mp4(src: str | Path, dest: str | Path, provenance: dict, signer: SigningKey, title: str) -> None:
    """Embed a signed C2PA manifest for `provenance` into the mp4 `src`, writing `dest`.

    Raises:
        CredentialsError: c2pa refused the certificate or key (naming the certificate's source).
    """
    import c2pa

    manifest = manifest_definition(provenance, signer, title)
    info = c2pa.C2paSignerInfo(signer.alg, signer.cert_chain, signer.private_key, None)
    try:
        with c2pa.Signer.from_info(info) as c2pa_signer, c2pa.Builder(json.dumps(manifest)) as builder, \
                open(src, "rb") as source, open(dest, "w+b") as out:
            builder.sign(c2pa_signer, "video/mp4", source, out)
    except c2pa.C2paError as exc:
        raise CredentialsError(f"C2PA signing with {signer.source} failed: {exc}") from exc


def read_manifest(path: str | Path) -> tuple[dict, str, list[dict]]:
    """(active manifest, validation state, validation status codes) of a signed file, read by c2pa's Reader.

    The state is c2pa's: 'Invalid' (a hash or signature does not match), 'Valid' (intact, signer not on a
    trust list) or 'Trusted'.
    """
    import c2pa

    with c2pa.Reader(str(path)) as reader:
        store = json.loads(reader.json())
    active = store["manifests"][store["active_manifest"]]
    return active, store.get("validation_state", ""), store.get("validation_status", [])


__all__ = ["SigningKey", "CredentialsError", "load_signing_key", "development_key", "resolve_signing_key",
           "dev_cert_dir", "manifest_definition", "sign_mp4", "read_manifest", "PROVENANCE_LABEL",
           "TRAINED_ALGORITHMIC_MEDIA"]
