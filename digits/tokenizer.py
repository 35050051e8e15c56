"""A tiny CLIP-compatible tokenizer built from a hand-written word list.

The vocabulary follows the layout of OpenAI's CLIP vocabulary: the 256 byte-level
symbols, the same 256 symbols with the end-of-word suffix "</w>", one entry per BPE
merge, then the two special tokens. Because every single byte is in the vocabulary,
any text tokenizes (unknown words such as "newclas" fall apart into pieces), while
each listed word is a single token.

The merges are derived greedily and deterministically: for every word (in the given
order) the current merges are applied; while the word is still split, the merge of
its first two pieces is appended with the lowest priority. Appending a merge never
changes how an earlier word tokenizes (an earlier word is fully merged before any
newer merge could apply), so every listed word ends up as one token and every
intermediate merge result has its own vocabulary entry.
"""

from __future__ import annotations

import json
import os
import re
import tempfile

import transformers
from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
EOW = "</w>"

# CLIP's pre-tokenizer regex (without the special tokens), used to split the word list
# into the units that the tokenizer will see.
_PRETOKENIZE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.UNICODE)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-to-symbol table (printable bytes map to themselves)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def _symbols(word: str, byte_map: dict[int, str]) -> list[str]:
    syms = [byte_map[b] for b in word.encode("utf-8")]
    syms[-1] = syms[-1] + EOW
    return syms


def _apply(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Standard BPE: repeatedly merge the present pair of lowest rank."""
    syms = list(symbols)
    while len(syms) > 1:
        pairs = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(syms, syms[1:], strict=False))]
        pairs = [(r, i) for r, i in pairs if r is not None]
        if not pairs:
            break
        r, _ = min(pairs)
        a, b = [(x, y) for x, y in zip(syms, syms[1:], strict=False) if ranks.get((x, y)) == r][0]
        out, i = [], 0
        while i < len(syms):
            if i < len(syms) - 1 and syms[i] == a and syms[i + 1] == b:
                out.append(a + b)
                i += 2
            else:
                out.append(syms[i])
                i += 1
        syms = out
    return syms


def words_of(texts: list[str]) -> list[str]:
    """Lower-cased pre-tokenized units of `texts`, first occurrence order, no duplicates."""
    seen: dict[str, None] = {}
    for text in texts:
        for w in _PRETOKENIZE.findall(text.lower()):
            seen.setdefault(w, None)
    return list(seen)


def build_vocab(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary (token -> id) and ordered merges such that each word is one token."""
    byte_map = bytes_to_unicode()
    base = list(byte_map.values())
    vocab_list = base + [s + EOW for s in base]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    known = set(vocab_list)
    for word in words_of(words):
        while True:
            syms = _apply(_symbols(word, byte_map), ranks)
            if len(syms) == 1:
                break
            pair = (syms[0], syms[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            if pair[0] + pair[1] not in known:
                known.add(pair[0] + pair[1])
                vocab_list.append(pair[0] + pair[1])
    vocab_list += [BOS, EOS]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def build_tokenizer(words: list[str], out_dir: str | None = None, model_max_length: int = 16) -> CLIPTokenizer:
    """A `CLIPTokenizer` in which every word of `words` is one token.

    `words` may hold whole phrases ("A close-up photo of"): they are split like CLIP
    splits text. pad = unk = eos = "<|endoftext|>". If `out_dir` is given, the
    tokenizer is saved there (tokenizer.json etc. by `save_pretrained`, plus
    vocab.json and merges.txt).
    """
    vocab, merges = build_vocab(words)
    tok = clip_tokenizer(vocab, merges, model_max_length)
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        tok.save_pretrained(out_dir)
        _write_files(vocab, merges, os.path.join(out_dir, "vocab.json"), os.path.join(out_dir, "merges.txt"))
    return tok


def clip_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], model_max_length: int) -> CLIPTokenizer:
    """A fast CLIP tokenizer from in-memory tables: transformers 5 takes them directly; 4.x (the floor in
    requirements.txt) builds its fast tokenizer only from vocab.json and merges.txt files."""
    if int(transformers.__version__.split(".")[0]) >= 5:
        return CLIPTokenizer(vocab=vocab, merges=list(merges), model_max_length=model_max_length)
    from transformers import CLIPTokenizerFast

    with tempfile.TemporaryDirectory() as d:
        files = os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt")
        _write_files(vocab, merges, *files)
        return CLIPTokenizerFast(*files, model_max_length=model_max_length)


def _write_files(vocab: dict[str, int], merges: list[tuple[str, str]], vocab_file: str, merges_file: str) -> None:
    with open(vocab_file, "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(merges_file, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
