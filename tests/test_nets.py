"""The zoo: every registered model is built, shaped, counted and stepped once."""

import pytest
import torch

from models.nets import MODELS, UnknownModelError, build, count_params, model_args

pytestmark = pytest.mark.usefixtures("one_thread")

# The book's parameter counts; net_fast is ours and must stay under 100k.
BOOK_PARAMS = {
    "dense": 1_574_402, "dense_deep": 3_737_474, "net": 18_090, "net_width": 38_386,
    "net_dropout": 38_386, "net_batchnorm": 38_482, "net_depth": 16_130, "net_res": 16_130,
    "net_resdeep": 994_530,
}
SMALL = {"net_resdeep": {"n_blocks": 2}}  # same structure, fast enough for a CPU test


@pytest.mark.parametrize("name", sorted(BOOK_PARAMS))
def test_param_counts_match_the_book(name):
    assert count_params(build(name)) == BOOK_PARAMS[name]


def test_fast_model_is_under_100k_params():
    assert count_params(build("net_fast")) <= 100_000


def test_every_book_model_is_registered():
    assert set(BOOK_PARAMS) <= set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shape_and_one_backward_step(name):
    torch.manual_seed(0)
    model = build(name, **SMALL.get(name, {})).train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    logits = model(x)
    assert logits.shape == (4, 2) and logits.dtype == torch.float32
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(logits, y).backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_resdeep_blocks_are_distinct():
    model = build("net_resdeep", n_blocks=3)
    blocks = list(model.resblocks)
    assert len({id(b) for b in blocks}) == 3
    assert len({b.conv.weight.data_ptr() for b in blocks}) == 3


def test_unknown_model_names_the_choices():
    with pytest.raises(UnknownModelError, match="net_fast"):
        model_args("resnet50")
