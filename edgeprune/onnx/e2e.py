"""Text in, label out: the bundle's end-to-end model ``model.e2e.onnx`` / ``model.e2e.ort`` (issue #19).

The shipped INT8 model takes token ids, so an app would have to re-implement the tokenizer (in Kotlin, Swift...)
and any difference silently changes predictions. The e2e model puts the tokenizer inside the graph, with the
tokenizer operators of onnxruntime-extensions (custom-op domain ``ai.onnx.contrib``)::

    text: string[N]
      -> Loop over the N strings: BertTokenizer (ai.onnx.contrib; truncation to max_length, [CLS] ... [SEP])
         -> Pad each row to max_length (pad id, 0 for mask / type ids)
      -> trim to the longest row of the batch (= transformers' padding=True; the same shapes as the two-step path,
         so dynamic INT8 activation scales, which depend on the padded tensor, are the same too)
      -> input_ids, attention_mask[, token_type_ids] -> the shipped INT8 graph (unchanged)
      -> logits float[N, C], label int64[N] (ArgMax), probabilities float[N, C] (Softmax)

Why a Loop: the extensions' ``BertTokenizer`` op reads a 1-element input as one text and a 2-element input as a
sentence *pair* (it never batches), so each string is tokenised on its own and padded to ``max_length``.

Which tokenizers: WordPiece tokenizers with the BERT normalizer / pre-tokenizer and a ``[CLS] $A [SEP]`` template
(BERT, MiniLM, bge, ELECTRA, DistilBERT checkpoints), read from the tokenizer's own ``tokenizer.json``
description, not from its class name: ``gen_processing_models`` keys on the class name and drops
``strip_accents=None`` (BERT's "strip accents when lower-casing"), which gave wrong ids for "Café" on the default
task's tokenizer. Byte-level BPE (RoBERTa) and SentencePiece/Unigram (XLM-R) are skipped with the reason; not
implemented here: the extensions' RobertaTokenizer op (read from its 0.15.2 source, not run) appends </s> after
truncating to its padding length, so its truncation differs from transformers', and its SentencepieceTokenizer
op needs the ``.model`` file, which transformers 5 does not save; its JSON tokenizer (``HfJsonTokenizer``) refused
the BERT class here ("Unknown tokenizer type").

Nothing is shipped unchecked: the e2e model's own token ids (read from the shipped file's graph) must equal the
Python tokenizer's on every text of the certify split (:data:`DEFAULT_TEXTS` without one), and its labels must equal
the two-step path's (Python tokenizer + ``model.onnx``); otherwise the e2e files are not written and the reason
is recorded. ``model.e2e.ort`` keeps the custom op (converted with the extensions' library registered) and its
required-operators config lists ``ai.onnx.contrib;1;BertTokenizer``.

Known limit (documented in docs/mobile.md): transformers matches special-token strings typed in the text (a
literal ``[SEP]``) before normalising; the extensions' tokenizer splits them like any other text.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

E2E_ONNX_FILE = "model.e2e.onnx"
E2E_ORT_FILE = "model.e2e.ort"
E2E_OPS_CONFIG_FILE = "model.e2e.required_operators.config"
TEXT_INPUT = "text"
OUTPUT_NAMES = ("logits", "label", "probabilities")
CUSTOM_DOMAIN = "ai.onnx.contrib"
#: The extensions' WordpieceTokenizer maps a word longer than this to [UNK] (fixed in its C++ code).
ORTX_MAX_CHARS_PER_WORD = 100
#: e2e .ort vs e2e .onnx: the same graph with ORT's fixed optimisations baked in (as bundle.ORT_VS_ONNX_ATOL).
ORT_VS_ONNX_ATOL = 1e-3
#: Tokenizer outputs the e2e graph can feed, in the order the model's inputs are matched.
_TOKEN_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")

#: Texts the ids/predictions gate runs on when no certify texts are given (plain English sentences).
DEFAULT_TEXTS: tuple[str, ...] = (
    "A gripping, beautifully acted film that stays with you long after the credits.",
    "Dull, predictable and far too long.",
    "The plot is thin but the performances are wonderful.",
    "I wanted to like it, yet nothing in it works.",
    "Not bad.",
    "A tedious mess of clichés that wastes a talented cast on a story nobody asked for.",
)

#: Stress texts every e2e model is also run on and *reported* (not gated: the gate is the task's own texts):
#: accents, casing, CJK, Hangul, emoji, other scripts, punctuation, control characters, whitespace runs, the empty
#: string, a word longer than the WordPiece limit, a text far longer than max_length. Measured with
#: onnxruntime-extensions 0.15.2 on the default task's tokenizer: 4 of these differ from transformers (a NUL ends
#: the text for the op; Hangul syllables are not decomposed; U+0130 "İ", Cyrillic/Greek/Devanagari marks are not
#: stripped; a word with an unknown character keeps its prefix pieces); see docs/mobile.md.
STRESS_TEXTS: tuple[str, ...] = (
    "a gripping, funny film",
    "Café au lait, naïve résumé, façade, Ångström, Øre, straße",
    "ÉCOLE ÉTÉ Ça VA? İstanbul",
    "",
    " ",
    "   leading and trailing spaces   ",
    "tabs\tand\nnew\r\nlines",
    "control\x00chars\x07and\x1bescapes\u200bzero-width",
    "中文的句子和日本語のテキスト、한국어 문장",
    "emoji 😀👍🏽 and symbols ™ © ® € £ ¥ §",
    "punctuation!!! ... ??? (brackets) [square] {curly} <angle> \"quotes\" 'single' --- ___",
    "numbers 3.14159 1,000,000 2026-12-01 #42 @user http://example.com/path?q=1",
    "x" * 150,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    " ".join(["a long review that goes on and on"] * 60),
    "ﬁ ligature, ½ fraction, ² superscript, Ⅻ roman, ｆｕｌｌｗｉｄｔｈ",
    "Ελληνικά, русский текст, עברית, العربية, हिन्दी",
)


class UnsupportedTokenizer(Exception):
    """The tokenizer cannot be expressed with the extensions' operators; ``str(exc)`` is the reason."""


@dataclass(frozen=True)
class WordPieceSpec:
    """What the extensions' ``BertTokenizer`` op needs, read from a ``tokenizer.json`` description."""

    vocab: tuple[str, ...]  # tokens in id order (the op assigns ids by line number)
    lowercase: bool
    strip_accents: bool
    chinese_chars: bool
    unk_token: str
    cls_token: str
    sep_token: str
    pad_token: str
    pad_id: int
    suffix: str


# ---------------------------------------------------------------------------------------------------------------------
# the tokenizer as an ONNX graph
# ---------------------------------------------------------------------------------------------------------------------
def _tokenizer_json(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UnsupportedTokenizer(f"{type(tokenizer).__name__} has no tokenizers (Rust) backend to read its "
                                   "normalizer, pre-tokenizer and vocabulary from")
    return json.loads(backend.to_str())


def wordpiece_spec(tokenizer: Any) -> WordPieceSpec:
    """Read a BERT-style WordPiece tokenizer's settings, or say why the extensions' op cannot reproduce it.

    Args:
        tokenizer: a transformers tokenizer with a tokenizers backend (any class: BertTokenizer,
            DistilBertTokenizer, ElectraTokenizer, PreTrainedTokenizerFast...).

    Returns:
        The :class:`WordPieceSpec`.

    Raises:
        UnsupportedTokenizer: anything the op does differently (model type, normaliser, pre-tokenizer, template,
            non-contiguous vocabulary, added tokens outside the vocabulary...).
    """
    j = _tokenizer_json(tokenizer)
    model = j.get("model") or {}
    kind = model.get("type")
    if kind != "WordPiece":
        extra = {"BPE": " (byte-level BPE, e.g. RoBERTa: edgeprune has no checked mapping to onnxruntime-extensions' "
                        "RobertaTokenizer op, whose truncation differs from transformers')",
                 "Unigram": " (SentencePiece Unigram, e.g. XLM-R: the extensions' SentencepieceTokenizer op needs the "
                            "sentencepiece .model file, which transformers 5 does not save)"}.get(kind, "")
        raise UnsupportedTokenizer(f"tokenizer model {kind!r} is not WordPiece{extra}")
    norm = j.get("normalizer") or {}
    if norm.get("type") != "BertNormalizer":
        raise UnsupportedTokenizer(f"normalizer {norm.get('type')!r} is not BertNormalizer")
    if not norm.get("clean_text", True):
        raise UnsupportedTokenizer("BertNormalizer(clean_text=False): the extensions' op always removes control chars")
    pre = j.get("pre_tokenizer") or {}
    if pre.get("type") != "BertPreTokenizer":
        raise UnsupportedTokenizer(f"pre-tokenizer {pre.get('type')!r} is not BertPreTokenizer")
    if int(model.get("max_input_chars_per_word", 100)) != ORTX_MAX_CHARS_PER_WORD:
        raise UnsupportedTokenizer(f"max_input_chars_per_word={model.get('max_input_chars_per_word')} (the "
                                   f"extensions' op uses {ORTX_MAX_CHARS_PER_WORD})")
    vocab_map: dict[str, int] = model.get("vocab") or {}
    ids = sorted(vocab_map.values())
    if ids != list(range(len(ids))):
        raise UnsupportedTokenizer("the vocabulary ids are not 0..V-1 (the op numbers tokens by line)")
    by_id = sorted(vocab_map, key=vocab_map.__getitem__)
    if any("\n" in t or "\r" in t for t in by_id):
        raise UnsupportedTokenizer("a vocabulary token contains a line break")
    for added in j.get("added_tokens") or []:
        if vocab_map.get(added["content"]) != added["id"]:
            raise UnsupportedTokenizer(f"added token {added['content']!r} (id {added['id']}) is not in the WordPiece "
                                       "vocabulary")
    cls_tok, sep_tok = _cls_sep(j.get("post_processor"))
    lowercase = bool(norm.get("lowercase", True))
    strip = norm.get("strip_accents")
    pad = getattr(tokenizer, "pad_token", None) or ((j.get("padding") or {}).get("pad_token")) or "[PAD]"
    for name, tok in (("unk", model.get("unk_token")), ("cls", cls_tok), ("sep", sep_tok), ("pad", pad)):
        if tok not in vocab_map:
            raise UnsupportedTokenizer(f"the {name} token {tok!r} is not in the vocabulary")
    return WordPieceSpec(
        vocab=tuple(by_id), lowercase=lowercase,
        # BertNormalizer: strip_accents=None means "strip when lower-casing" (the original BERT behaviour).
        strip_accents=lowercase if strip is None else bool(strip),
        chinese_chars=bool(norm.get("handle_chinese_chars", True)), unk_token=model["unk_token"],
        cls_token=cls_tok, sep_token=sep_tok, pad_token=pad, pad_id=vocab_map[pad],
        suffix=model.get("continuing_subword_prefix", "##"),
    )


def _cls_sep(post: dict[str, Any] | None) -> tuple[str, str]:
    """The [CLS]/[SEP] tokens of a single-sequence template ``CLS $A SEP`` (type id 0), else UnsupportedTokenizer."""
    if not post:
        raise UnsupportedTokenizer("no post-processor: the op always adds [CLS] ... [SEP]")
    if post.get("type") == "BertProcessing":
        return post["cls"][0], post["sep"][0]
    if post.get("type") == "TemplateProcessing":
        single = post.get("single") or []
        if (len(single) == 3 and "SpecialToken" in single[0] and "Sequence" in single[1]
                and "SpecialToken" in single[2] and all(next(iter(p.values())).get("type_id", 0) == 0 for p in single)):
            specials = post.get("special_tokens") or {}
            cls_id, sep_id = single[0]["SpecialToken"]["id"], single[2]["SpecialToken"]["id"]
            if all(len((specials.get(t) or {}).get("tokens", [t])) == 1 for t in (cls_id, sep_id)):
                return specials.get(cls_id, {}).get("tokens", [cls_id])[0], specials.get(sep_id, {}).get("tokens",
                                                                                                       [sep_id])[0]
    raise UnsupportedTokenizer(f"post-processor {post.get('type')!r} is not the single-text template [CLS] $A [SEP]")


def tokenizer_nodes(spec: WordPieceSpec, *, max_length: int, outputs: Sequence[str], opset: int,
                    prefix: str = "edgeprune_tok/") -> tuple[list[Any], list[Any]]:
    """ONNX nodes and initializers turning ``text: string[N]`` into padded token tensors ``int64[N, T]``.

    Args:
        spec: the tokenizer settings.
        max_length: truncation length including [CLS] and [SEP] (the profile's sequence length).
        outputs: which of ``input_ids``, ``attention_mask``, ``token_type_ids`` to produce (the model's inputs).
        opset: the ``ai.onnx`` opset of the graph the nodes go into.
        prefix: prefix of every internal value name (keeps them apart from the model's).

    Returns:
        ``(nodes, initializers)``; T is the longest row of the batch (<= ``max_length``).
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 ([CLS] x [SEP]), got {max_length}")
    p = prefix
    inits = [numpy_helper.from_array(np.array(v, dtype=np.int64), p + n) for n, v in (
        ("zero", 0), ("zero1", [0]), ("one1", [1]), ("len1", [max_length]), ("pad_id", spec.pad_id))]
    inits.append(numpy_helper.from_array(np.array(True), p + "true"))
    tok_attrs = dict(vocab_file="\n".join(spec.vocab), do_lower_case=int(spec.lowercase), do_basic_tokenize=1,
                     unk_token=spec.unk_token, sep_token=spec.sep_token, pad_token=spec.pad_token,
                     cls_token=spec.cls_token, mask_token=spec.unk_token,  # [MASK] is never produced; any known token
                     tokenize_chinese_chars=int(spec.chinese_chars), strip_accents=int(spec.strip_accents),
                     suffix_indicator=spec.suffix, max_length=max_length, truncation_strategy_name="longest_first")
    body_nodes = [
        helper.make_node("Unsqueeze", ["i", p + "zero1"], ["i1"]),
        helper.make_node("Gather", [TEXT_INPUT, "i1"], ["one_text"], axis=0),  # string[1]: one text, not a pair
        # Three outputs only: declaring the optional 4th (offset_mapping) corrupted memory in onnxruntime-extensions
        # 0.15.2 (rows lost from later batches, then a segfault, in one long-lived session).
        helper.make_node("BertTokenizer", ["one_text"], ["ids", "types", "mask"], domain=CUSTOM_DOMAIN,
                         **tok_attrs),
        helper.make_node("Shape", ["ids"], ["n"]),
        helper.make_node("Sub", [p + "len1", "n"], ["short"]),
        helper.make_node("Concat", [p + "zero1", "short"], ["pads"], axis=0),  # pad at the end only
        helper.make_node("Pad", ["ids", "pads", p + "pad_id"], ["ids_p"]),
        helper.make_node("Pad", ["mask", "pads", p + "zero"], ["mask_p"]),
        helper.make_node("Pad", ["types", "pads", p + "zero"], ["types_p"]),
        helper.make_node("Identity", ["cond"], ["cond_out"]),
    ]
    row = [max_length]
    body = helper.make_graph(
        body_nodes, "edgeprune_tokenize_one",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         *(helper.make_tensor_value_info(n, TensorProto.INT64, row) for n in ("ids_p", "mask_p", "types_p"))])
    full = {n: p + "full_" + n for n in _TOKEN_OUTPUTS}
    reduce_max = (helper.make_node("ReduceMax", [p + "lens"], [p + "longest"], keepdims=1))  # all axes: shape [1]
    nodes = [
        helper.make_node("Shape", [TEXT_INPUT], [p + "n_texts1"]),
        helper.make_node("Squeeze", [p + "n_texts1", p + "zero1"], [p + "n_texts"]),
        helper.make_node("Loop", [p + "n_texts", p + "true"],
                         [full["input_ids"], full["attention_mask"], full["token_type_ids"]], body=body),
        helper.make_node("ReduceSum", [full["attention_mask"], p + "one1"], [p + "lens"], keepdims=0),
        reduce_max,
    ]
    for name in outputs:  # trim to the longest row: transformers' padding=True
        nodes.append(helper.make_node("Slice", [full[name], p + "zero1", p + "longest", p + "one1"], [name]))
    del opset  # the nodes above mean the same from opset 13 on (ReduceMax over all axes needs no axes input)
    return nodes, inits


def build_e2e_model(model_onnx: str | Path, tokenizer: Any, *, max_length: int,
                    labels: dict[str, str] | None = None) -> Any:
    """The end-to-end ONNX model: the tokenizer graph merged in front of ``model_onnx`` (whose graph is unchanged).

    Args:
        model_onnx: the shipped classifier (inputs ``input_ids``, ``attention_mask``[, ``token_type_ids``], output
            ``logits``).
        tokenizer: its tokenizer.
        max_length: truncation length (the profile's sequence length).
        labels: ``id2label``, stored in the model's metadata (``id2label``) so an app can name the label.

    Returns:
        The ``onnx.ModelProto`` (input ``text: string[N]``; outputs ``logits``, ``label``, ``probabilities``).

    Raises:
        UnsupportedTokenizer: the tokenizer cannot be expressed (see :func:`wordpiece_spec`), or the model's inputs
            are not token tensors.
    """
    import onnx
    from onnx import TensorProto, helper

    spec = wordpiece_spec(tokenizer)
    model = onnx.load(str(model_onnx))
    g = model.graph
    inputs = [i.name for i in g.input]
    unknown = [n for n in inputs if n not in _TOKEN_OUTPUTS]
    if unknown:
        raise UnsupportedTokenizer(f"the model has inputs {unknown} that a tokenizer does not produce")
    if any(i.type.tensor_type.elem_type != TensorProto.INT64 for i in g.input):
        raise UnsupportedTokenizer("the model's inputs are not int64")
    if [o.name for o in g.output][:1] != ["logits"]:
        raise UnsupportedTokenizer(f"the model's first output is not 'logits' ({[o.name for o in g.output]})")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    tok_nodes, tok_inits = tokenizer_nodes(spec, max_length=max_length, outputs=inputs, opset=opset)
    post = [helper.make_node("ArgMax", ["logits"], ["label"], axis=-1, keepdims=0),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)]
    logits = next(o for o in g.output if o.name == "logits")
    out_graph = helper.make_graph(
        list(tok_nodes) + list(g.node) + post, "edgeprune_e2e",
        [helper.make_tensor_value_info(TEXT_INPUT, TensorProto.STRING, ["batch"])],
        [logits, helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", None])],
        initializer=list(tok_inits) + list(g.initializer), value_info=list(g.value_info))
    out_graph.sparse_initializer.extend(g.sparse_initializer)
    opsets = [o for o in model.opset_import if o.domain != CUSTOM_DOMAIN] + [helper.make_opsetid(CUSTOM_DOMAIN, 1)]
    e2e = helper.make_model(out_graph, opset_imports=opsets, ir_version=model.ir_version,
                            producer_name="edgeprune", doc_string="text in, label out: onnxruntime-extensions "
                            "BertTokenizer + the shipped INT8 classifier")
    meta = {"edgeprune.max_length": str(max_length), "edgeprune.inputs": TEXT_INPUT,
            "edgeprune.outputs": ",".join(OUTPUT_NAMES), "edgeprune.custom_ops": f"{CUSTOM_DOMAIN}:BertTokenizer"}
    if labels:
        meta["id2label"] = json.dumps({str(k): v for k, v in labels.items()}, sort_keys=True)
    for k, v in meta.items():
        e2e.metadata_props.add(key=k, value=v)
    return e2e


# ---------------------------------------------------------------------------------------------------------------------
# running and checking it
# ---------------------------------------------------------------------------------------------------------------------
def extensions_library() -> str:
    """Path of the onnxruntime-extensions custom-op library (raises ImportError when the package is missing)."""
    from onnxruntime_extensions import get_library_path

    return get_library_path()


def e2e_session(model: str | Path | bytes, *, threads: int = 1) -> Any:
    """An onnxruntime CPU session for an e2e model (``.onnx``/``.ort`` path or serialized bytes), with the
    extensions' custom ops registered, a fixed thread count and no spin-waiting.

    Args:
        model: the model.
        threads: intra-op threads.

    Returns:
        ``onnxruntime.InferenceSession``; feed ``{"text": numpy array of str}``.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.register_custom_ops_library(extensions_library())
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), sess_options=so,
                                providers=["CPUExecutionProvider"])


def classify(session: Any, texts: Sequence[str]) -> dict[str, Any]:
    """Run an e2e session on strings: ``{"logits", "label", "probabilities"}`` (numpy arrays)."""
    import numpy as np

    names = [o.name for o in session.get_outputs()]
    outs = session.run(None, {TEXT_INPUT: np.array(list(texts), dtype=object)})
    return dict(zip(names, outs))


def with_token_outputs(e2e_path: str | Path) -> tuple[bytes, list[str]]:
    """The e2e model with its tokenizer's outputs (the model's inputs) exposed as extra graph outputs."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load(str(e2e_path))
    names = [n for n in _TOKEN_OUTPUTS if any(n in node.input for node in m.graph.node)]
    m.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in names)
    return m.SerializeToString(), names


def _hf_encode(tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, Any]:
    import numpy as np

    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np")
    out = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in _TOKEN_OUTPUTS}
    out.setdefault("token_type_ids", np.zeros_like(out["input_ids"]))
    return out


def token_id_parity(e2e_path: str | Path, tokenizer: Any, texts: Sequence[str], *, max_length: int,
                    batch_size: int = 32, examples: int = 5) -> dict[str, Any]:
    """Compare the e2e file's own token ids (its graph, run with the extensions) with the Python tokenizer's.

    A text counts as different when its unpadded ``input_ids`` (or mask, or type ids) differ.

    Args:
        e2e_path: the e2e ``.onnx``.
        tokenizer: the Python (transformers) tokenizer it must reproduce.
        texts: the texts.
        max_length: truncation length used by both.
        batch_size: texts per run.
        examples: how many differing texts to record.

    Returns:
        ``{"texts": n, "differences": k, "examples": [{"text", "python", "e2e"}...]}``.
    """
    import numpy as np

    model_bytes, names = with_token_outputs(e2e_path)
    sess = e2e_session(model_bytes)
    n_diff, shown = 0, []
    texts = list(texts)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        got = dict(zip([o.name for o in sess.get_outputs()],
                       sess.run(None, {TEXT_INPUT: np.array(chunk, dtype=object)})))
        ref = _hf_encode(tokenizer, chunk, max_length)
        for r, text in enumerate(chunk):
            ref_len, got_len = int(ref["attention_mask"][r].sum()), int(got["attention_mask"][r].sum())
            same = ref_len == got_len and all(
                np.array_equal(ref[n][r, :ref_len], got[n][r, :got_len]) for n in names)
            if not same:
                n_diff += 1
                if len(shown) < examples:
                    shown.append({"text": text[:200], "python": ref["input_ids"][r, :ref_len].tolist()[:40],
                                  "e2e": got["input_ids"][r, :got_len].tolist()[:40]})
    return {"texts": len(texts), "differences": n_diff, "examples": shown}


def prediction_parity(e2e_path: str | Path, model_path: str | Path, tokenizer: Any, texts: Sequence[str], *,
                      max_length: int, batch_size: int = 32) -> dict[str, Any]:
    """Compare the e2e model with the two-step path (Python tokenizer + ``model_path``) on the same batches.

    Args:
        e2e_path: the e2e ``.onnx`` or ``.ort``.
        model_path: the plain (ids-in) model.
        tokenizer: the Python tokenizer.
        texts: the texts.
        max_length: truncation length.
        batch_size: texts per run (the same batches on both paths, so the padded shapes match).

    Returns:
        ``{"texts", "label_differences", "max_abs_logit_diff"}``.
    """
    import numpy as np

    from edgeprune.onnx.export import ort_session

    e2e, plain = e2e_session(e2e_path), ort_session(model_path)
    names = [i.name for i in plain.get_inputs()]
    n_diff, worst = 0, 0.0
    texts = list(texts)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        out = classify(e2e, chunk)
        enc = _hf_encode(tokenizer, chunk, max_length)
        logits = plain.run(["logits"], {n: enc[n] for n in names})[0]
        n_diff += int((out["label"] != logits.argmax(-1)).sum())
        worst = max(worst, float(np.max(np.abs(out["logits"].astype(np.float64) - logits))))
    return {"texts": len(texts), "label_differences": n_diff, "max_abs_logit_diff": worst}


# ---------------------------------------------------------------------------------------------------------------------
# into the bundle
# ---------------------------------------------------------------------------------------------------------------------
def write_e2e(model_onnx: str | Path, tokenizer: Any, out_dir: str | Path, *, max_length: int,
              texts: Sequence[str] | None = None, pair_task: bool = False, target_platform: str | None = None,
              batch_size: int = 32) -> dict[str, Any]:
    """Write ``model.e2e.onnx``, ``model.e2e.ort`` and ``model.e2e.required_operators.config`` into ``out_dir``,
    checked, or write nothing and say why. Never raises for an unsupported tokenizer or a failed check: the plain
    bundle is still shipped.

    Args:
        model_onnx: the shipped INT8 ``model.onnx`` (``config.json`` next to it gives ``id2label``, if present).
        tokenizer: its transformers tokenizer.
        out_dir: the bundle folder.
        max_length: the profile's sequence length (truncation inside the graph).
        texts: texts the ids and predictions must agree on for the file to be written (the certify split's);
            ``None`` = :data:`DEFAULT_TEXTS`. :data:`STRESS_TEXTS` are run and reported, not gated on.
        pair_task: the task classifies text pairs (the e2e model takes one string per example: skipped).
        target_platform: ``"arm"``/``"amd64"`` for the ``.ort`` conversion (``None`` = this host).
        batch_size: texts per run in the checks.

    Returns:
        A JSON-friendly dict: ``written``, ``skipped_reason``, ``files`` (name -> file), ``ids_parity``,
        ``prediction_parity``, ``stress_ids_parity``, ``ort_vs_onnx_max_abs_diff``, ``custom_ops`` (required-operators lines of the
        custom domain), ``bytes`` (e2e vs plain files), ``max_length``, ``onnxruntime_extensions``.
    """
    out_dir, model_onnx = Path(out_dir), Path(model_onnx)
    result: dict[str, Any] = {"written": False, "skipped_reason": None, "files": {}, "max_length": max_length,
                              "onnxruntime_extensions": None}

    def skip(reason: str) -> dict[str, Any]:
        for name in (E2E_ONNX_FILE, E2E_ORT_FILE, E2E_OPS_CONFIG_FILE):
            (out_dir / name).unlink(missing_ok=True)
        result.update(written=False, skipped_reason=reason, files={})
        return result

    if pair_task:
        return skip("sentence-pair task: the e2e model takes one string per example")
    try:
        import onnxruntime_extensions

        result["onnxruntime_extensions"] = onnxruntime_extensions.__version__
        extensions_library()
    except ImportError as exc:
        return skip(f"onnxruntime-extensions is not installed ({exc}); pip install onnxruntime-extensions==0.15.2")
    cfg = model_onnx.parent / "config.json"
    labels = json.loads(cfg.read_text()).get("id2label") if cfg.is_file() else None
    try:
        e2e = build_e2e_model(model_onnx, tokenizer, max_length=max_length, labels=labels)
    except UnsupportedTokenizer as exc:
        return skip(f"tokenizer not supported by onnxruntime-extensions: {exc}")
    onnx_path = out_dir / E2E_ONNX_FILE
    try:
        import onnx

        onnx.save(e2e, str(onnx_path))
        check_texts = list(texts) if texts else list(DEFAULT_TEXTS)
        ids = token_id_parity(onnx_path, tokenizer, check_texts, max_length=max_length, batch_size=batch_size)
        result["ids_parity"] = ids
        result["ids_parity_source"] = "the given texts (certify split)" if texts else "edgeprune.onnx.e2e.DEFAULT_TEXTS"
        result["stress_ids_parity"] = token_id_parity(onnx_path, tokenizer, STRESS_TEXTS, max_length=max_length,
                                                      batch_size=batch_size, examples=len(STRESS_TEXTS))
        if ids["differences"]:
            return skip(f"{ids['differences']} of {ids['texts']} texts tokenise differently in the graph than in "
                        f"Python (first: {ids['examples'][0]['text'][:80]!r}); a tokenizer that differs is not shipped")
        preds = prediction_parity(onnx_path, model_onnx, tokenizer, check_texts, max_length=max_length,
                                  batch_size=batch_size)
        result["prediction_parity"] = preds
        if preds["label_differences"]:
            return skip(f"{preds['label_differences']} of {preds['texts']} predictions differ from the two-step path")
        from edgeprune.onnx.ort_format import to_ort_format

        with tempfile.TemporaryDirectory(prefix="edgeprune-e2e-ort-") as tmp:
            ort_out = to_ort_format(onnx_path, tmp, target_platform=target_platform,
                                    custom_op_library=extensions_library())
            shutil.copy2(ort_out["ort"], out_dir / E2E_ORT_FILE)
            shutil.copy2(ort_out["required_operators"], out_dir / E2E_OPS_CONFIG_FILE)
        ops = (out_dir / E2E_OPS_CONFIG_FILE).read_text().splitlines()
        result["custom_ops"] = [ln for ln in ops if ln.startswith(CUSTOM_DOMAIN + ";")]
        if not any("BertTokenizer" in ln for ln in result["custom_ops"]):
            return skip(f"{E2E_OPS_CONFIG_FILE} does not list {CUSTOM_DOMAIN};1;BertTokenizer")
        ort_check = prediction_parity(out_dir / E2E_ORT_FILE, model_onnx, tokenizer, check_texts[:256],
                                      max_length=max_length, batch_size=batch_size)
        vs_onnx = _max_diff(onnx_path, out_dir / E2E_ORT_FILE, check_texts[:256], batch_size)
        result["ort_vs_onnx_max_abs_diff"] = vs_onnx
        if ort_check["label_differences"] or not vs_onnx <= ORT_VS_ONNX_ATOL:
            return skip(f"{E2E_ORT_FILE} differs from {E2E_ONNX_FILE} (max |logit diff| {vs_onnx:.3g}, "
                        f"{ort_check['label_differences']} label differences)")
    except Exception as exc:  # noqa: BLE001 - the plain bundle must still ship; the reason goes to the report
        return skip(f"building or checking the e2e model failed: {type(exc).__name__}: {str(exc)[:500]}")
    plain_ort = model_onnx.with_suffix(".ort")
    result["bytes"] = {"e2e_onnx": onnx_path.stat().st_size, "e2e_ort": (out_dir / E2E_ORT_FILE).stat().st_size,
                       "plain_onnx": model_onnx.stat().st_size,
                       "plain_ort": plain_ort.stat().st_size if plain_ort.is_file() else None}
    result.update(written=True, files={"e2e_onnx": E2E_ONNX_FILE, "e2e_ort": E2E_ORT_FILE,
                                       "e2e_required_operators": E2E_OPS_CONFIG_FILE})
    return result


def _max_diff(a: Path, b: Path, texts: Sequence[str], batch_size: int) -> float:
    import numpy as np

    sa, sb = e2e_session(a), e2e_session(b)
    worst = 0.0
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        la, lb = classify(sa, chunk)["logits"], classify(sb, chunk)["logits"]
        worst = max(worst, float(np.max(np.abs(la.astype(np.float64) - lb))))
    return worst


def summary_line(e2e: dict[str, Any] | None) -> str:
    """One line for the CLI / report: written (with the parity counts) or skipped (with the reason)."""
    if not e2e:
        return "e2e model: not attempted"
    if not e2e.get("written"):
        return f"e2e model (string in): SKIPPED - {e2e.get('skipped_reason')}"
    ids, preds, size = e2e["ids_parity"], e2e["prediction_parity"], e2e["bytes"]
    return (f"e2e model (string in): {E2E_ONNX_FILE} + {E2E_ORT_FILE}; token ids differ on {ids['differences']} of "
            f"{ids['texts']} texts, predictions on {preds['label_differences']} of {preds['texts']} (max |logit diff| "
            f"{preds['max_abs_logit_diff']:.2g}); {size['e2e_onnx'] / 1e6:.2f} MB vs {size['plain_onnx'] / 1e6:.2f} MB "
            f"plain; custom ops {', '.join(e2e.get('custom_ops', []))}")


def report_lines(e2e: dict[str, Any]) -> list[str]:
    """Markdown lines for report.md: what was shipped and checked, or why the e2e model was skipped."""
    if not e2e.get("written"):
        return [f"Not shipped: {e2e.get('skipped_reason')}. Use `model.onnx` with the tokenizer files instead."]
    ids, preds, size = e2e["ids_parity"], e2e["prediction_parity"], e2e["bytes"]
    stress = e2e.get("stress_ids_parity") or {}
    lines = [
        f"`model.e2e.onnx` / `model.e2e.ort` take a string tensor `text` and return `logits`, `label` and "
        f"`probabilities` (tokenizer inside the graph: onnxruntime-extensions {e2e.get('onnxruntime_extensions')}, "
        f"truncation at {e2e['max_length']} tokens; docs/mobile.md).",
        "",
        f"- token ids vs the Python tokenizer: **{ids['differences']} differences** on {ids['texts']} texts "
        f"({e2e.get('ids_parity_source', 'given texts')})",
        f"- predictions vs the two-step path (tokenizer + model.onnx): **{preds['label_differences']} differences** "
        f"on {preds['texts']} texts; max |logit diff| {preds['max_abs_logit_diff']:.2g}",
        f"- `model.e2e.ort` vs `model.e2e.onnx`: max |logit diff| {e2e.get('ort_vs_onnx_max_abs_diff', 0.0):.2g}; "
        f"custom ops in the required-operators config: {', '.join(e2e.get('custom_ops', []))}",
        f"- size: e2e {size['e2e_onnx'] / 2**20:.2f} MiB (.ort {size['e2e_ort'] / 2**20:.2f} MiB) vs plain "
        f"{size['plain_onnx'] / 2**20:.2f} MiB",
    ]
    if stress.get("differences"):
        lines.append(f"- stress texts (not the task's data): {stress['differences']} of {stress['texts']} tokenise "
                     "differently in the graph (known onnxruntime-extensions differences, docs/mobile.md): "
                     + "; ".join(repr(x["text"][:40]) for x in stress.get("examples", [])))
    return lines


# ---------------------------------------------------------------------------------------------------------------------
# on emulated aarch64 (edgeprune.arm's qemu-user sysroot, with the aarch64 onnxruntime-extensions wheel)
# ---------------------------------------------------------------------------------------------------------------------
def verify_arm_e2e(bundle_dir: str | Path, profile: Any = "raspberrypi4", *, texts: Sequence[str] | None = None,
                   qemu_cpu: str | None = None, batch: int = 4, threads: int = 1, root: str | Path | None = None,
                   timeout: float = 1800.0) -> dict[str, Any]:
    """Run a bundle's e2e model on emulated aarch64 onnxruntime + onnxruntime-extensions and check it there.

    Three emulated runs on the same texts: the e2e ``.onnx`` with its token tensors exposed (the aarch64 tokenizer
    op's ids vs the Python tokenizer on this host), ``model.e2e.ort`` (what an app loads) and the plain
    ``model.onnx`` fed the Python tokenizer's ids (the two-step path, on the same ARM kernels).

    Args:
        bundle_dir: bundle folder with ``model.e2e.onnx``/``.ort``, ``model.onnx`` and the tokenizer files.
        profile: profile name/path/object (its QEMU CPU model).
        texts: texts to classify (default :data:`DEFAULT_TEXTS`).
        qemu_cpu: override the profile's CPU model (never ``max``).
        batch: texts per run.
        threads: ORT threads in the guest.
        root: sysroot folder (default ``$EDGEPRUNE_ARM_ROOT`` or ``~/.cache/edgeprune/arm64``).
        timeout: seconds per emulated run.

    Returns:
        ``{"passed", "qemu_cpu", "texts", "ids_differences", "label_differences_vs_two_step",
        "max_abs_logit_diff_vs_two_step", "max_abs_logit_diff_ort_vs_onnx", "max_abs_logit_diff_vs_host",
        "guest", "lines"}``; ``passed`` needs 0 id and label differences and logits within
        :data:`ORT_VS_ONNX_ATOL` of the two-step path on ARM.

    Raises:
        EmulationError: no e2e model in the bundle, qemu/sysroot missing, or the emulated run failed.
    """
    import numpy as np

    from edgeprune.onnx.arm import qemu_cpu_for, find_arm_python, run_on_arm
    from edgeprune.errors import EmulationError

    bundle = Path(bundle_dir)
    onnx_path, ort_path, plain = bundle / E2E_ONNX_FILE, bundle / E2E_ORT_FILE, bundle / "model.onnx"
    if not (onnx_path.is_file() and ort_path.is_file()):
        raise EmulationError(f"{bundle} has no {E2E_ONNX_FILE}/{E2E_ORT_FILE} (edgeprune.json checks.e2e says why)")
    prof_name, cpu, _ = qemu_cpu_for(profile, qemu_cpu)
    cpu = qemu_cpu or cpu
    find_arm_python(root)
    meta = json.loads((bundle / "edgeprune.json").read_text()) if (bundle / "edgeprune.json").is_file() else {}
    max_length = int(meta.get("max_length") or 128)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(bundle), local_files_only=True)
    texts = list(texts or DEFAULT_TEXTS)
    chunks = [texts[i:i + batch] for i in range(0, len(texts), batch)]
    string_feeds = [{TEXT_INPUT: np.array(c, dtype=np.str_)} for c in chunks]
    from edgeprune.onnx.export import ort_session

    plain_names = [i.name for i in ort_session(plain).get_inputs()]
    encs = [_hf_encode(tok, c, max_length) for c in chunks]
    id_feeds = [{n: e[n] for n in plain_names} for e in encs]
    model_bytes, tok_names = with_token_outputs(onnx_path)
    with tempfile.TemporaryDirectory(prefix="edgeprune-e2e-arm-") as tmp:
        exposed = Path(tmp) / "model.e2e.ids.onnx"
        exposed.write_bytes(model_bytes)
        ids_outs, info = run_on_arm(exposed, string_feeds, qemu_cpu=cpu, threads=threads, root=root,
                                    timeout=timeout, custom_ops=True)
    ort_outs, _ = run_on_arm(ort_path, string_feeds, qemu_cpu=cpu, threads=threads, root=root, timeout=timeout,
                             custom_ops=True)
    plain_outs, _ = run_on_arm(plain, id_feeds, qemu_cpu=cpu, threads=threads, root=root, timeout=timeout)
    host = e2e_session(ort_path, threads=threads)
    names = info["outputs"]
    ids_diff = label_diff = 0
    d_plain = d_onnx = d_host = 0.0
    for c, enc, io, oo, po in zip(chunks, encs, ids_outs, ort_outs, plain_outs):
        got = dict(zip(names, io))
        for r in range(len(c)):
            n_ref, n_got = int(enc["attention_mask"][r].sum()), int(got["attention_mask"][r].sum())
            if n_ref != n_got or any(not np.array_equal(enc[n][r, :n_ref], got[n][r, :n_got]) for n in tok_names):
                ids_diff += 1
        logits_ort, label_ort, logits_plain = oo[0].astype(np.float64), oo[1], po[0].astype(np.float64)
        label_diff += int((label_ort != logits_plain.argmax(-1)).sum())
        d_plain = max(d_plain, float(np.abs(logits_ort - logits_plain).max()))
        d_onnx = max(d_onnx, float(np.abs(logits_ort - got["logits"]).max()))
        d_host = max(d_host, float(np.abs(logits_ort - classify(host, c)["logits"]).max()))
    passed = ids_diff == 0 and label_diff == 0 and d_plain <= ORT_VS_ONNX_ATOL
    lines = [
        f"e2e model on emulated {cpu} (profile {prof_name}): onnxruntime {info.get('onnxruntime')}, "
        f"onnxruntime-extensions {info.get('onnxruntime_extensions')} on {info.get('machine')}",
        f"token ids (aarch64 tokenizer op vs Python tokenizer on this host): {ids_diff} of {len(texts)} texts differ",
        f"{E2E_ORT_FILE} vs two-step model.onnx on ARM: {label_diff} label differences, max |logit diff| "
        f"{d_plain:.3g} (limit {ORT_VS_ONNX_ATOL:g}); vs {E2E_ONNX_FILE} on ARM {d_onnx:.3g}; vs this host {d_host:.3g}",
        f"result: {'PASS' if passed else 'FAIL'}",
    ]
    return {"passed": passed, "qemu_cpu": cpu, "profile": prof_name, "texts": len(texts), "ids_differences": ids_diff,
            "label_differences_vs_two_step": label_diff, "max_abs_logit_diff_vs_two_step": d_plain,
            "max_abs_logit_diff_ort_vs_onnx": d_onnx, "max_abs_logit_diff_vs_host": d_host, "guest": info,
            "lines": lines}
