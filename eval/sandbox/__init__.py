"""The gold-reward sandbox: a world where the weak-to-strong premise can be checked.

One subpackage, apart from the evaluation of real models:

* :mod:`.config`  the world's settings (defaults, validation);
* :mod:`.world`   tasks, items, the held-out partition, prompt splits, D_w;
* :mod:`.corpus`  the pretraining corpus (worksheets, policy sentences, unaligned chat);
* :mod:`.reward`  the gold reward (protocol, content, policy) and its aggregates;
* :mod:`.models`  tokenizer, tiny models, pretraining and the checkpoint cache;
* :mod:`.store`   the world as store subsets (a run's ``prepare`` step);
* :mod:`.gates`   the premise gates (pure functions over small tables, plus the SQL overlap check);
* :mod:`.measure` ``python -m macpo.eval.sandbox``: measure a world before running MACPO on it.
"""

from macpo.eval.sandbox.config import resolve  # noqa: F401
from macpo.eval.sandbox.models import (  # noqa: F401
    build_tokenizer,
    cache_root,
    generate,
    load_model,
    load_tokenizer,
    model_dir,
    prepare_models,
    pretrain_info,
)
from macpo.eval.sandbox.reward import aggregate, aggregate_scores, gold_reward, is_refusal  # noqa: F401
from macpo.eval.sandbox.store import write_world  # noqa: F401
from macpo.eval.sandbox.world import REFUSAL, build, gold_response  # noqa: F401
