"""The formats ``macpo import`` reads, each parsed into one row: a preference pair (``Parsed``) or an
SFT example (``ParsedSFT``), as TRL message lists. Pure functions of one record; a record that
does not fit is a ``BadRow`` with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

FORMATS = ("hh-rlhf", "pku-saferlhf", "trl", "llamafactory")
# Formats whose preference labels are human by definition: their rows default to agent "human".
HUMAN_LABELLED = ("hh-rlhf", "pku-saferlhf")
AXES = {"hh-rlhf": ("helpful", "harmless"), "pku-saferlhf": ("better", "safer")}


class BadRow(ValueError):
    """A row that cannot be parsed; the message is the reason."""


@dataclass
class Parsed:
    """One preference row (kind ``pairs``)."""

    prompt: list[dict]
    chosen: list[dict]
    rejected: list[dict]
    kind = "pairs"


@dataclass
class ParsedSFT:
    """One SFT row (kind ``sft``)."""

    prompt: list[dict]
    completion: list[dict]
    kind = "sft"


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


# ---- hh-rlhf ---------------------------------------------------------------------
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def split_hh_transcript(text: str) -> list[dict]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` -> user/assistant messages."""
    if not isinstance(text, str):
        raise BadRow("transcript is not a string")
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise BadRow("transcript does not start with a '\\n\\nHuman:' turn")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [_msg(roles[parts[i]], parts[i + 1]) for i in range(1, len(parts), 2)]


def parse_hh(row: dict) -> Parsed:
    if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
        raise BadRow("expected an object with 'chosen' and 'rejected' transcripts")
    chosen, rejected = split_hh_transcript(row["chosen"]), split_hh_transcript(row["rejected"])
    return _split_shared_prefix(chosen, rejected)


def _split_shared_prefix(chosen: list[dict], rejected: list[dict]) -> Parsed:
    """The shared leading messages are the prompt; the differing tails are the responses."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    # Identical transcripts (or one a prefix of the other) still have a final assistant turn each.
    while n > 0 and (n == len(chosen) or n == len(rejected) or chosen[n - 1]["role"] == "assistant"):
        n -= 1
    prompt, c_tail, r_tail = chosen[:n], chosen[n:], rejected[n:]
    if not prompt or prompt[-1]["role"] != "user":
        raise BadRow("no user turn before the final assistant responses")
    for name, tail in (("chosen", c_tail), ("rejected", r_tail)):
        if not tail or any(m["role"] != "assistant" for m in tail):
            raise BadRow(f"the {name} transcript does not end in assistant turn(s) after the shared prompt")
    return Parsed(prompt, c_tail, r_tail)


# ---- trl ---------------------------------------------------------------------------
def _content_text(content, what: str) -> str:
    """A message's content: a string, or a list of text parts (the multimodal chat format that
    chat templates and TRL also accept for text-only data)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                         for p in content):
        return "".join(p["text"] for p in content)
    raise BadRow(f"{what}: a message's content must be a string or a list of {{type: text, text}} parts")


def _as_messages(value, role: str, what: str) -> list[dict]:
    if isinstance(value, str):
        return [_msg(role, value)]
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return [_msg(str(m["role"]), _content_text(m["content"], what)) for m in value]
    raise BadRow(f"{what} must be a string or a list of {{role, content}} messages")


def _split_conversation(messages: list[dict]) -> ParsedSFT:
    """A whole conversation (TRL's ``messages``): the trailing assistant turn(s) are the
    completion, everything before them the prompt."""
    n = len(messages)
    while n > 0 and messages[n - 1]["role"] == "assistant":
        n -= 1
    if n == len(messages):
        raise BadRow("'messages' does not end with an assistant turn")
    if n == 0 or messages[n - 1]["role"] == "system":
        raise BadRow("'messages' has no user turn before the final assistant turn(s)")
    return ParsedSFT(messages[:n], messages[n:])


def parse_trl(row: dict) -> Parsed | ParsedSFT:
    if isinstance(row, dict) and "chosen" not in row and "rejected" not in row:
        # TRL's SFT formats: conversational language modeling, or prompt-completion.
        if row.get("messages") is not None:
            messages = _as_messages(row["messages"], "user", "messages")
            return _split_conversation(messages)
        if row.get("completion") is not None:
            if row.get("prompt") is None:
                raise BadRow("a 'completion' row needs a 'prompt'")
            return ParsedSFT(_as_messages(row["prompt"], "user", "prompt"), _as_messages(row["completion"], "assistant", "completion"))
        if "text" in row:
            raise BadRow("a 'text' row (language modeling) has no prompt/completion split; use 'messages' or 'prompt'+'completion'")
    if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
        raise BadRow("expected 'chosen' and 'rejected' (preference), or 'messages' or 'prompt'+'completion' (SFT) fields")
    if row.get("prompt") is None:
        # Implicit prompt: the prompt is embedded in both conversations (TRL's extract_prompt).
        chosen = _as_messages(row["chosen"], "assistant", "chosen")
        rejected = _as_messages(row["rejected"], "assistant", "rejected")
        if len(chosen) < 2:
            raise BadRow("implicit-prompt rows need conversational chosen/rejected with the prompt inside")
        return _split_shared_prefix(chosen, rejected)
    prompt = _as_messages(row["prompt"], "user", "prompt")
    return Parsed(prompt, _as_messages(row["chosen"], "assistant", "chosen"), _as_messages(row["rejected"], "assistant", "rejected"))


# ---- llamafactory ---------------------------------------------------------------------
_LF_TURN = re.compile(r"(?:^|\s)(USER|ASSISTANT):\s?")


def split_flat_history(text: str) -> list[dict]:
    """``"USER: a ASSISTANT: b USER: c"`` -> messages; plain text -> one user message."""
    parts = _LF_TURN.split(text)
    if len(parts) == 1:
        return [_msg("user", text.strip())]
    if parts[0].strip():
        raise BadRow("text before the first 'USER:' marker")
    roles = {"USER": "user", "ASSISTANT": "assistant"}
    return [_msg(roles[parts[i]], parts[i + 1].strip()) for i in range(1, len(parts), 2)]


def parse_llamafactory(row: dict) -> Parsed | ParsedSFT:
    if not isinstance(row, dict) or "instruction" not in row or "output" not in row:
        raise BadRow("expected 'instruction' and 'output' fields")
    output = row["output"]
    sft = isinstance(output, str)
    if not sft and not (isinstance(output, list) and len(output) == 2 and all(isinstance(o, str) for o in output)):
        raise BadRow("'output' must be a string (SFT) or [chosen, rejected] strings (ranking)")
    if not isinstance(row["instruction"], str) or not isinstance(row.get("input") or "", str):
        raise BadRow("'instruction' and 'input' must be strings")
    if row.get("system") is not None and not isinstance(row["system"], str):
        raise BadRow("'system' must be a string")
    history = row.get("history")
    if history is not None and not isinstance(history, list):
        raise BadRow("'history' must be a list of [user, assistant] pairs")
    instruction = row["instruction"]
    if row.get("input"):
        instruction = f"{instruction}\n{row['input']}"
    prompt = []
    if row.get("system"):
        prompt.append(_msg("system", str(row["system"])))
    for turn in history or []:
        if not (isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise BadRow("'history' must be a list of [user, assistant] pairs")
        prompt += [_msg("user", str(turn[0])), _msg("assistant", str(turn[1]))]
    prompt += split_flat_history(instruction)
    if prompt[-1]["role"] != "user":
        raise BadRow("the flattened history does not end with a USER turn")
    if sft:
        return ParsedSFT(prompt, [_msg("assistant", output)])
    return Parsed(prompt, [_msg("assistant", output[0])], [_msg("assistant", output[1])])


# ---- pku-saferlhf ------------------------------------------------------------------------
_PKU_LABEL = {"better": "better_response_id", "safer": "safer_response_id"}


def parse_pku(row: dict, axis: str) -> Parsed:
    """One PKU-SafeRLHF row; ``axis`` picks the label: ``better`` (helpfulness) or ``safer``."""
    if not isinstance(row, dict) or not all(k in row for k in ("prompt", "response_0", "response_1", _PKU_LABEL[axis])):
        raise BadRow(f"expected 'prompt', 'response_0', 'response_1' and '{_PKU_LABEL[axis]}' fields")
    texts = [row["prompt"], row["response_0"], row["response_1"]]
    if not all(isinstance(t, str) for t in texts):
        raise BadRow("'prompt', 'response_0' and 'response_1' must be strings")
    label = row[_PKU_LABEL[axis]]
    if isinstance(label, bool) or label not in (0, 1):
        raise BadRow(f"'{_PKU_LABEL[axis]}' must be 0 or 1, got {label!r}")
    chosen, rejected = texts[1 + int(label)], texts[2 - int(label)]
    return Parsed([_msg("user", texts[0])], [_msg("assistant", chosen)], [_msg("assistant", rejected)])


PARSERS: dict[str, Callable[..., Parsed | ParsedSFT]] = {
    "hh-rlhf": parse_hh, "trl": parse_trl, "llamafactory": parse_llamafactory, "pku-saferlhf": parse_pku}
