"""The model card (README.md) of a trained agent, from ``data_cards/model_card.md.j2``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from macpo.trainer.data import is_hub_source
from macpo.trainer.train_config import TrainConfig

OBJECTIVES = {
    "sft": "supervised fine-tuning on the completions (TRL SFTTrainer, completion-only loss)",
    "dpo": "sigmoid DPO (TRL DPOTrainer)",
    "dpo-nll": "sigmoid DPO + γ · NLL on chosen, length-averaged per answer (MACPO, as LLaMA-Factory's dpo_ftx)",
    "spin": "SPIN: sigmoid DPO of the data response over the policy's own sample y′",
    "spac": "SPAC: DPO(y⁺, y⁻) + α · ½ Σ −log σ(β[h(ỹ) − h(y′)]) against the starting policy",
}


def render_model_card(cfg: TrainConfig, metrics: dict):
    from huggingface_hub import ModelCard, ModelCardData

    dataset = metrics["dataset"]
    card_data = ModelCardData(
        base_model=cfg.model if is_hub_source(cfg.model) else None,
        datasets=[dataset["source"]] if dataset.get("kind") == "hub" else None,
        library_name="peft" if metrics["model"]["saved"] == "adapter" else "transformers",
        pipeline_tag="text-generation",
        tags=["macpo", "trl", cfg.loss] + (["lora"] if metrics["model"]["lora"] else []),
    )
    name = dataset.get("dataset") or dataset["source"]
    version = dataset.get("version") or dataset.get("revision") or dataset.get("resolved_sha")
    template = resources.files("macpo.data_cards") / "model_card.md.j2"
    return ModelCard.from_template(
        card_data,
        template_str=template.read_text(encoding="utf-8"),
        title=f"{Path(cfg.out).name}: {cfg.loss} on {name}/{version}/{cfg.subset}",
        summary=f"One `{cfg.loss}` training run of macpo's trainer stage on `{name}` version `{version}`, subset `{cfg.subset}`.",
        objective=OBJECTIVES[cfg.loss],
        **metrics,
    )


def write_model_card(folder: Path, cfg: TrainConfig, metrics: dict) -> None:
    render_model_card(cfg, metrics).save(str(Path(folder) / "README.md"))
