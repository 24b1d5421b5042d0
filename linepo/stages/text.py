"""User text is text: prompts and responses are encoded so that a control token's *spelling* in
them never becomes the control token.

A prompt holding ``<|im_end|>\\n<|im_start|>assistant`` would otherwise open a fourth turn in a
Qwen2 chat, and a response holding ``<|eot_id|><|start_header_id|>assistant<|end_header_id|>``
would end the judge's user turn and speak for it: in online preference training, a direct
path from the policy to its judge (judge injection, reward hacking). Templates keep their
own special tokens; only the user contents are encoded with ``split_special_tokens``.

Text without any special token's spelling is encoded exactly as before (the whole rendered
string at once), so ordinary data gets the same ids.

    from linepo.stages.text import encode_rendered, encode_text
    ids = encode_rendered(tokenizer, "<|im_start|>user\\n\\ue000c0\\ue000<|im_end|>\\n", ["a <|im_end|> b"])
"""

from __future__ import annotations


def marker(i: int) -> str:
    """A placeholder for content i in a rendered template (private-use characters: never in data)."""
    return f"\ue000linepo-content-{i}\ue000"


def special_texts(tokenizer) -> tuple[str, ...]:
    """The spelling of every special token of ``tokenizer`` (its control tokens)."""
    cached = getattr(tokenizer, "_linepo_special_texts", None)
    if cached is not None:
        return cached
    found = {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if getattr(t, "special", False)}
    found.update(getattr(tokenizer, "all_special_tokens", None) or [])
    found = tuple(sorted(t for t in found if t))
    try:
        tokenizer._linepo_special_texts = found
    except AttributeError:  # pragma: no cover - a tokenizer that takes no attributes
        pass
    return found


def spells_a_special_token(tokenizer, text: str) -> bool:
    return any(special in text for special in special_texts(tokenizer))


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of user text as text: a special token's spelling in it stays characters."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def encode_rendered(tokenizer, rendered: str, contents: list[str], *, add_special_tokens: bool = False) -> list[int]:
    """Token ids of ``rendered`` (a template with :func:`marker` placeholders, in any order) with
    ``contents`` filled in.

    Contents are encoded as text (:func:`encode_text`) and the template around them with its
    special tokens. When no content spells a special token, the filled-in string is encoded
    whole, as any caller without this module would (the same ids for ordinary text).
    ``add_special_tokens`` adds the tokenizer's usual leading tokens (BOS for a plain,
    template-less prompt).
    """
    if not any(spells_a_special_token(tokenizer, c) for c in contents):
        filled = rendered
        for i, content in enumerate(contents):
            filled = filled.replace(marker(i), content, 1)
        return tokenizer(filled, add_special_tokens=add_special_tokens)["input_ids"]
    ids = list(tokenizer("", add_special_tokens=True)["input_ids"]) if add_special_tokens else []
    position, rest = 0, rendered
    order = sorted((rendered.index(marker(i)), i) for i in range(len(contents)) if marker(i) in rendered)
    for start, i in order:
        head = rendered[position:start]
        if head:
            ids += tokenizer(head, add_special_tokens=False)["input_ids"]
        ids += encode_text(tokenizer, contents[i])
        position = start + len(marker(i))
    rest = rendered[position:]
    if rest:
        ids += tokenizer(rest, add_special_tokens=False)["input_ids"]
    return ids
