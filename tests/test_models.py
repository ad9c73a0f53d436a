"""Model loading and the fingerprint that guards every memory file."""

import pytest
import torch

from gradmem_cli.lm import loading as models
from gradmem_cli.errors import GradmemError
from gradmem_cli.lm.fingerprint import Fingerprint, embedding_signature
from gradmem_cli.lm.loading import load_model


def test_fingerprint_survives_dtype_but_not_other_weights(tiny_model, other_tiny_model):
    fp32 = load_model(tiny_model, device="cpu").fingerprint
    for dtype in ("bfloat16", "float16"):
        assert fp32.mismatch(load_model(tiny_model, device="cpu", dtype=dtype).fingerprint) is None
    other = load_model(other_tiny_model, device="cpu").fingerprint
    assert other.config == fp32.config and other.tokenizer == fp32.tokenizer
    assert fp32.mismatch(other) == "embedding weights differ"


def test_fingerprint_sees_small_weight_changes():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(1000, 64, generator=gen) * 0.1
    tuned = w + 0.05 * torch.randn(1000, 64, generator=gen) * 0.1  # a 5 % fine-tuning drift
    a = Fingerprint("c", "t", embedding_signature(w))
    assert a.mismatch(Fingerprint("c", "t", embedding_signature(w.bfloat16().float()))) is None
    assert a.mismatch(Fingerprint("c", "t", embedding_signature(tuned))) == "embedding weights differ"
    assert a.mismatch(Fingerprint("x", "t", a.embedding)) == "architecture config differs"
    assert a.mismatch(Fingerprint("c", "x", a.embedding)) == "tokenizer differs"


def test_tokenizer_and_config_fingerprints_differ(tiny_model, tiny_chat_model):
    a = load_model(tiny_model, device="cpu").fingerprint
    b = load_model(tiny_chat_model, device="cpu").fingerprint
    assert a.tokenizer != b.tokenizer  # the chat template and BOS handling differ


def test_load_frozen_and_dtype(tiny_model):
    lm = load_model(tiny_model, device="cpu", dtype="bfloat16")
    assert lm.dtype == torch.bfloat16 and lm.dtype_name == "bfloat16"
    assert all(not p.requires_grad for p in lm.model.parameters())
    assert not lm.model.training
    assert lm.kv_bytes_per_token() == 2 * 2 * 2 * 16 * 2


def test_default_model_from_environment(monkeypatch):
    monkeypatch.delenv("GRADMEM_MODEL", raising=False)
    assert models.default_model() == "smollm2-135m-instruct"
    monkeypatch.setenv("GRADMEM_MODEL", "some/model")
    assert models.default_model() == "some/model"


def test_missing_model_package(monkeypatch):
    fake = models.PackagedGGUF((("no_such_package_xyz", "m.gguf"),), "m.gguf", "pip install no-such-package")
    monkeypatch.setitem(models.ALIASES, "fake-alias", fake)
    with pytest.raises(GradmemError, match="not installed: pip install no-such-package"):
        load_model("fake-alias")


def test_devices():
    assert models.resolve_device("cpu").type == "cpu"
    assert models.resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(GradmemError):
        models.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(GradmemError, match="no CUDA device"):
            models.resolve_device("cuda")


def test_gradmem_home(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADMEM_HOME", str(tmp_path))
    assert models.gradmem_home() == tmp_path
    monkeypatch.delenv("GRADMEM_HOME")
    assert "gradmem" in str(models.gradmem_home())


def test_multipart_gguf_joined_and_checked(tmp_path, monkeypatch):
    """Parts in several packages are joined in order once, and a wrong checksum is refused."""
    import hashlib

    for i in (1, 2):
        pkg = tmp_path / "site" / f"fakeparts{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(bytes([i]) * 1000)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    joined = bytes([1]) * 1000 + bytes([2]) * 1000
    files = tuple((f"fakeparts{i}", f"data/part{i:02d}.bin") for i in (1, 2))
    bad = models.PackagedGGUF(files, "bad.gguf", "pip install fake", sha256="0" * 64)
    with pytest.raises(GradmemError, match="fail their checksum"):
        models._packaged_gguf(bad)
    assert not (models.gradmem_home() / "gguf" / "bad.gguf").exists()
    good = models.PackagedGGUF(files, "good.gguf", "pip install fake", sha256=hashlib.sha256(joined).hexdigest())
    path = models._packaged_gguf(good)
    assert path.read_bytes() == joined and models._packaged_gguf(good) == path
