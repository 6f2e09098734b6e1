"""C2PA content credentials in sampled clips, read back with c2pa's own Reader (models/credentials.py)."""
from __future__ import annotations

import hashlib
import json
import stat

import numpy as np
import pytest

from reelora import __version__
from reelora.models import credentials, media
from reelora.models.credentials import CredentialsError, PROVENANCE_LABEL, TRAINED_ALGORITHMIC_MEDIA
from reelora.models.sample import sample_clips

WAN = dict(num_frames=5, height=32, width=32, steps=2)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty user cache, so the development certificate is generated here, not in ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for var in (credentials.CERT_ENV, credentials.KEY_ENV):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "cache" / "reelora" / "c2pa"


@pytest.fixture(scope="module")
def studio_pair(tmp_path_factory):
    """A studio's own certificate chain and key (made like the development pair, in another folder)."""
    folder = tmp_path_factory.mktemp("studio") / "c2pa"
    credentials.development_key(folder)
    return folder / "dev-chain.pem", folder / "dev-key.pem"


def assertion(manifest: dict, label: str) -> dict:
    (found,) = [a["data"] for a in manifest["assertions"] if a["label"] == label]
    return found


def test_sampled_clip_carries_a_signed_manifest_that_breaks_when_edited(tmp_path, adapters, studio_pair):
    cert, key = studio_pair
    (r,) = sample_clips("tiny-wan", "a lighthouse at dusk", loras=[f"{adapters['wan']}:0.8", f"{adapters['wan2']}:0.3"],
                        out=tmp_path, seed=5, progress=False, contact_sheet=False, sign_cert=cert, sign_key=key, **WAN)
    manifest, state, status = credentials.read_manifest(r.mp4)
    assert state == "Valid"  # hashes and signature verify; this test CA is on no trust list
    assert [s["code"] for s in status] == ["signingCredential.untrusted"]
    assert manifest["claim_generator_info"][0]["name"] == "reelora"
    assert manifest["signature_info"]["common_name"] == "reelora development signer (untrusted)"

    (action,) = assertion(manifest, "c2pa.actions.v2")["actions"]
    assert action["action"] == "c2pa.created" and action["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert action["softwareAgent"] == {"name": "reelora", "version": __version__}
    params = action["parameters"]
    assert params["base_model"] == {"id": "tiny-wan", "family": "wan", "revision": "seed0"} and params["seed"] == 5
    first, second = params["adapters"]
    assert first["sha256"] == hashlib.sha256(adapters["wan"].read_bytes()).hexdigest() and first["scale"] == 0.8
    assert first["lineage"] == {"base_model": "tiny-wan", "base_revision": "seed0", "titles": ["title-001", "title-002"],
                                "rank": 4}
    assert second["sha256"] == hashlib.sha256(adapters["wan2"].read_bytes()).hexdigest() and second["scale"] == 0.3

    sidecar = json.loads(r.sidecar.read_text())  # the sidecar and the mp4 tags stay, and say the same
    assert assertion(manifest, PROVENANCE_LABEL) == sidecar == media.read_provenance(r.mp4)
    assert sidecar["content_credentials"]["certificate"] == str(cert)
    assert sidecar["content_credentials"]["development_certificate"] is False
    assert media.read_mp4(r.mp4)[0].shape == (5, 32, 32, 3)

    # One byte of the video data changed: c2pa's hash over the file no longer matches.
    data = bytearray(r.mp4.read_bytes())
    data[data.index(b"mdat") + 64] ^= 0xFF
    edited = tmp_path / "edited.mp4"
    edited.write_bytes(bytes(data))
    _, state, status = credentials.read_manifest(edited)
    assert state == "Invalid" and "assertion.bmffHash.mismatch" in [s["code"] for s in status]


def test_without_a_certificate_a_cached_development_one_signs_and_says_so(cache, tmp_path, caplog):
    frames = np.random.default_rng(0).integers(0, 255, size=(3, 16, 16, 3), dtype=np.uint8)
    path = media.write_mp4(tmp_path / "v.mp4", frames, fps=8, provenance={"prompt": "a fox", "seed": 1, "step": 10})
    assert "development certificate" in caplog.text and "no C2PA trust list" in caplog.text
    chain, key = cache / "dev-chain.pem", cache / "dev-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    manifest, state, status = credentials.read_manifest(path)
    assert state == "Valid" and "signingCredential.untrusted" in [s["code"] for s in status]
    prov = assertion(manifest, PROVENANCE_LABEL)
    assert prov["content_credentials"]["development_certificate"] is True
    assert "no C2PA trust list" in prov["content_credentials"]["note"] and prov == media.read_provenance(path)
    (action,) = assertion(manifest, "c2pa.actions.v2")["actions"]
    assert action["parameters"] == {"base_model": {}, "adapters": [], "prompt": "a fox", "seed": 1, "step": 10}

    # a CA and a leaf it signs (c2pa refuses a self-signed signer), cached: the next key is the same one
    from cryptography import x509

    leaf, ca = x509.load_pem_x509_certificates(chain.read_bytes())
    assert leaf.issuer == ca.subject != leaf.subject
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    before = chain.read_bytes()
    assert credentials.development_key(cache).cert_chain == before

    assert media.write_mp4(tmp_path / "plain.mp4", frames, fps=8, sign=False)  # footage that is not generated
    assert "content_credentials" not in media.read_mp4(tmp_path / "plain.mp4")[1].get(media.PROVENANCE_TAG, "")


def test_bad_signing_input_is_refused_before_the_model_loads(cache, tmp_path, studio_pair, capsys, monkeypatch):
    import reelora.models.registry
    from reelora.cli import main

    monkeypatch.setattr(reelora.models.registry, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    cert, key = studio_pair
    base = ["sample", "--model", "tiny-wan", "--prompt", "x", "--out", str(tmp_path / "o")]
    assert main([*base, "--sign-cert", str(cert)]) == 2
    assert "signing needs both a certificate and a key" in capsys.readouterr().err
    other = credentials.development_key(tmp_path / "other")  # a key that is not the certificate's
    wrong = tmp_path / "wrong-key.pem"
    wrong.write_bytes(other.private_key)
    assert main([*base, "--sign-cert", str(cert), "--sign-key", str(wrong)]) == 2
    assert f"signing key {wrong} is not the key of the first certificate in {cert}" in capsys.readouterr().err
    assert main([*base, "--sign-cert", str(tmp_path / "missing.pem"), "--sign-key", str(key)]) == 2
    assert "missing.pem: no such file" in capsys.readouterr().err
    monkeypatch.setenv(credentials.CERT_ENV, str(cert))  # the environment names a pair for every writer
    monkeypatch.setenv(credentials.KEY_ENV, str(key))
    assert credentials.resolve_signing_key().source == str(cert)
    with pytest.raises(CredentialsError, match="got only the key"):
        credentials.resolve_signing_key(key=key)


def test_validation_config_takes_a_signing_pair_or_none():
    from reelora.train.config import ConfigError, ValidationConfig

    assert ValidationConfig(sign_cert="chain.pem", sign_key="key.pem").sign_key == "key.pem"
    with pytest.raises(ConfigError, match="validation.sign_cert"):
        ValidationConfig(sign_cert="chain.pem")
