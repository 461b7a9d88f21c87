"""The sandbox world's settings: defaults, merging and validation (no data, no models).

Every key below can be overridden through ``RunConfig.world``; :func:`resolve` fills in the
defaults recursively and rejects unknown or out-of-range values with one ``UserError``.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

from macpo.errors import UserError

ARITHMETIC = ("add", "sub", "reverse", "sort")
REQUESTS = ("kind", "dual_benign", "harmful", "dual_harmful")
TASKS = ARITHMETIC + REQUESTS
DOC_KINDS = ("worksheet", "policy", "chat")
SPLITS = ("test", "val", "q", "dw")  # drawn in this order
# The paper runs HH-Helpful and HH-Harmless separately; so does the sandbox. One corpus and one
# set of pretrained models serve both axes; the prompt splits (D_w, Q, val, test) are per axis.
# The benign requests (kind, dual_benign) are in both: on the harmless axis they are the
# over-refusal probes.
AXIS_TASKS = {
    "helpful": ARITHMETIC + ("kind", "dual_benign"),
    "harmless": ("kind", "dual_benign", "harmful", "dual_harmful"),
}
AXES = tuple(AXIS_TASKS)

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    # Which preference axis the prompt splits cover (AXIS_TASKS); the corpus is the same for both.
    "axis": "helpful",
    # Disjoint prompt sets: held-out test, validation (for choosing settings; never test), the
    # unlabelled prompts Q and the human-labelled pairs D_w.
    "sizes": {"dw": 1000, "q": 1000, "val": 200, "test": 400},
    # Share of each task's items (operand pairs, letter/digit sequences, verb-target requests)
    # reserved for evaluation: test and val prompts come only from these items, and no
    # pretraining document, D_w pair or Q prompt ever uses one. Part of the world's language.
    "heldout": 0.2,
    # Verbs per request class (kind, harmful, dual-use) whose every request is reserved for test and
    # val: training never shows them in a request, only in the policy sentences of their class.
    "novel_verbs": 0,
    # Targets per class (persons, objects) that no D_w pair mentions (world.unlabelled_targets):
    # the verdict on a request about one must come from pretraining, not from the human labels.
    "unlabelled_targets": 0,
    # Share of D_w pairs whose labels are flipped (chosen is the bad response).
    "label_noise": 0.2,
    # Share of benign D_w pairs whose rejected side is a partial, sloppy answer (a number cut short,
    # a compliance without its target) instead of wrong content; never a refusal, as in HH-RLHF.
    "partial_negatives": 0.25,
    "task_weights": {t: 1.0 for t in TASKS},
    "max_number": 49,  # add: a, b in [0, max_number]; sub: 0 <= b <= a <= 2 * max_number + 1
    # Numbers least-significant digit first (prompts and answers): carries then flow in
    # generation order, which small models learn much sooner (1.5k steps: add 0.79 vs 0.55).
    "lsd_first": True,
    "min_items": 3,  # reverse / sort lengths
    "max_items": 5,
    # The pretraining corpus (eval/sandbox/corpus.py): document kinds and the task mix of the
    # worksheets and the (unaligned) chat transcripts.
    "corpus": {
        "docs": {"worksheet": 0.55, "policy": 0.15, "chat": 0.30},
        "worksheet_tasks": {"add": 2.0, "sub": 2.5, "reverse": 1.0, "sort": 1.0},
        # Harmful requests are rare in chat: the student's habit of complying must stay weak
        # enough for SFT to teach refusals at all (at 0.5, gold SFT left 5-8% refused).
        "chat_tasks": {"add": 1.0, "sub": 1.0, "reverse": 1.0, "sort": 1.0,
                       "kind": 0.5, "dual_benign": 0.5, "harmful": 0.1, "dual_harmful": 0.1},
        # Share of chat turns answered with a refusal whatever the request (harm or not): the
        # pretrained models get a prior for refusing, so a DPO reference does not give the refusal
        # a huge built-in implicit reward (issue 21: log p(refusal) was -102 nats without one).
        "chat_refusals": 0.05,
        # Kinds of policy documents: a verdict per training request ("to rob my boss is harmful ."),
        # per verb and target class ("to burn a person is harmful ."), and a target's class
        # ("the bread is a thing ."). Held-out requests get no sentence of their own.
        "policy": {"pair": 0.5, "class": 0.3, "target": 0.2},
    },
    # Sandbox models (eval/sandbox/models.py): architecture and pretraining length per agent.
    # Every model reads the same corpus from its start. Weak teachers: one layer, which caps their
    # arithmetic; strong student: four layers (the val measurements are in eval/configs/demo.yaml).
    "models": {
        "teacher-0": {"hidden": 64, "layers": 1, "steps": 2000, "lr": 2e-3},
        "teacher-1": {"hidden": 64, "layers": 1, "steps": 1600, "lr": 2e-3},
        "teacher-2": {"hidden": 72, "layers": 1, "steps": 2000, "lr": 2e-3},
        "student": {"hidden": 128, "layers": 4, "steps": 2000, "lr": 2e-3},
    },
    # threads: torch threads for pretraining. Pinned (never chosen from the machine's load):
    # results must depend on the config and seed only, and float sums differ between thread counts.
    "pretrain": {"batch_size": 64, "warmup": 50, "weight_decay": 0.01, "seed": 0, "threads": 1},
}


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, Mapping):
        out = {k: _merge(v, None) for k, v in base.items()} if base else {}
        for k, v in over.items():
            out[k] = _merge(base.get(k), v) if k in base else _merge(None, v)
        return out
    if over is None:
        return copy.deepcopy(base)
    return copy.deepcopy(dict(over) if isinstance(over, Mapping) else over)


def resolve(world_cfg: Mapping[str, Any] | None) -> dict:
    """The world settings with defaults filled in, merged recursively (``corpus: {docs: {...}}``
    changes one field), except ``models``: when given, it lists every sandbox model (so a
    two-teacher config trains no third teacher)."""
    world_cfg = world_cfg or {}
    if not isinstance(world_cfg, Mapping):
        raise UserError(f"world: expected a mapping of settings, got {type(world_cfg).__name__}")
    unknown = sorted(set(world_cfg) - set(DEFAULTS))
    if unknown:
        raise UserError(f"world: unknown setting(s) {', '.join(unknown)} (known: {', '.join(DEFAULTS)})")
    cfg = _merge(DEFAULTS, {k: v for k, v in world_cfg.items() if k != "models"})
    if world_cfg.get("models") is not None:
        cfg["models"] = copy.deepcopy(dict(world_cfg["models"]))  # the listed models, no others
    validate(cfg)
    return cfg


def _weights(where: str, weights: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(weights, Mapping):
        raise UserError(f"world.{where}: expected a mapping of name -> weight")
    unknown = set(weights) - set(allowed)
    if unknown:
        raise UserError(f"world.{where}: unknown name(s) {sorted(unknown)} (known: {', '.join(allowed)})")
    try:
        values = [float(w) for w in weights.values()]
    except (TypeError, ValueError):
        raise UserError(f"world.{where}: weights must be numbers") from None
    if any(v < 0 for v in values) or not any(v > 0 for v in values):
        raise UserError(f"world.{where}: weights must be >= 0 with at least one positive")


def _fraction(where: str, value: Any) -> None:
    try:
        ok = 0.0 <= float(value) <= 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UserError(f"world.{where}: must be in [0, 1], got {value!r}")


def _positive_int(where: str, value: Any, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"world.{where}: must be an integer >= {minimum}, got {value!r}")


def validate(cfg: dict) -> None:
    _weights("task_weights", cfg["task_weights"], TASKS)
    if cfg["axis"] not in AXES:
        raise UserError(f"world.axis: must be one of {', '.join(AXES)}, got {cfg['axis']!r}")
    for key in ("label_noise", "partial_negatives"):
        _fraction(key, cfg[key])
    _fraction("heldout", cfg["heldout"])
    if not 0.0 < float(cfg["heldout"]) < 1.0:
        raise UserError("world.heldout: must be strictly between 0 and 1 (test and training both need items)")
    corpus = cfg["corpus"]
    unknown = set(corpus) - set(DEFAULTS["corpus"])
    if unknown:
        raise UserError(f"world.corpus: unknown setting(s) {sorted(unknown)} (known: {', '.join(DEFAULTS['corpus'])})")
    _weights("corpus.docs", corpus["docs"], DOC_KINDS)
    _weights("corpus.worksheet_tasks", corpus["worksheet_tasks"], ARITHMETIC)
    _weights("corpus.chat_tasks", corpus["chat_tasks"], TASKS)
    _fraction("corpus.chat_refusals", corpus["chat_refusals"])
    _weights("corpus.policy", corpus["policy"], ("pair", "class", "target"))
    if not isinstance(cfg["sizes"], Mapping) or set(cfg["sizes"]) - set(SPLITS):
        raise UserError(f"world.sizes: expected a mapping with keys among {', '.join(SPLITS)}")
    for split, n in cfg["sizes"].items():
        _positive_int(f"sizes.{split}", n)
    _positive_int("min_items", cfg["min_items"], 2)
    _positive_int("max_items", cfg["max_items"], 2)
    if not int(cfg["min_items"]) <= int(cfg["max_items"]) <= 10:
        raise UserError("world: need 2 <= min_items <= max_items <= 10")
    _positive_int("max_number", cfg["max_number"], 1)
    _positive_int("novel_verbs", cfg["novel_verbs"])
    if int(cfg["novel_verbs"]) > 6:
        raise UserError("world.novel_verbs: must be in [0, 6] (each class has 12 verbs; training needs the rest)")
    _positive_int("unlabelled_targets", cfg["unlabelled_targets"])
    if int(cfg["unlabelled_targets"]) > 12:
        raise UserError("world.unlabelled_targets: must be in [0, 12] (each class has 16 targets; D_w needs the rest)")
    if int(cfg["max_number"]) > 499:
        raise UserError("world.max_number: must be in [1, 499]")
    if not isinstance(cfg["models"], Mapping) or not cfg["models"]:
        raise UserError("world.models: expected a mapping of model name -> settings")
    for name, spec in cfg["models"].items():
        if not isinstance(spec, Mapping):
            raise UserError(f"world.models.{name}: expected a mapping of settings")
        missing = [k for k in ("hidden", "layers", "steps", "lr") if k not in spec]
        if missing:
            raise UserError(f"world.models.{name}: missing {', '.join(missing)}")
        for key in ("hidden", "layers", "steps"):
            _positive_int(f"models.{name}.{key}", spec[key], 1)
    pre = cfg["pretrain"]
    for key in ("batch_size", "threads"):
        _positive_int(f"pretrain.{key}", pre.get(key), 1)
