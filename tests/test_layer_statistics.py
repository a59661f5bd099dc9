"""lamb.experiments.layer_statistics: per-layer norms, weight/gradient ratios, step norms, spreads.

Expected values are worked out by hand (norms of small integer arrays) or follow from the algorithms'
mathematics (the step-norm identity of LARS and LAMB), never copied from the module's output.
"""

import math

import numpy as np
import pytest

from lamb import reference as R
from lamb.experiments import layer_statistics as S


def test_named_layers_of_a_nested_pytree_follow_the_path():
    tree = {"dense_0": {"kernel": np.ones((2, 3)), "bias": np.zeros(3)}, "head": [np.ones(4)]}
    names = [name for name, _ in S.named_layers(tree)]
    assert sorted(names) == ["dense_0/bias", "dense_0/kernel", "head/0"]


def test_named_layers_of_a_torch_module_use_named_parameters():
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    layers = S.named_layers(model)
    assert [name for name, _ in layers] == [name for name, _ in model.named_parameters()]
    assert all(a.dtype == np.float64 for _, a in layers)


def test_layer_norms_by_hand():
    tree = {"a": np.array([3.0, -4.0]), "b": np.array([[1.0, -2.0], [2.0, 0.0]])}
    assert S.layer_norms(tree) == {"a": 5.0, "b": 3.0}
    assert S.layer_norms(tree, "l1") == {"a": 7.0, "b": 5.0}
    assert S.layer_norms(tree, "linf") == {"a": 4.0, "b": 2.0}


def test_weight_gradient_ratios_by_hand_and_zero_norm_cases():
    params = {"w": np.array([3.0, 4.0]), "zero_bias": np.zeros(2), "frozen": np.ones(2), "empty": np.zeros(1)}
    grads = {"w": np.array([0.0, 0.5]), "zero_bias": np.ones(2), "frozen": np.zeros(2), "empty": np.zeros(1)}
    ratios = S.weight_gradient_ratios(params, grads)
    assert ratios["w"] == pytest.approx(10.0)
    assert ratios["zero_bias"] == 0.0          # no fallback to the trust ratio's 1
    assert ratios["frozen"] == math.inf
    assert math.isnan(ratios["empty"])


def test_mismatched_trees_are_errors():
    with pytest.raises(ValueError, match="different layers"):
        S.weight_gradient_ratios({"a": np.ones(2)}, {"b": np.ones(2)})
    with pytest.raises(ValueError, match="shape"):
        S.step_norms({"a": np.ones(2)}, {"a": np.ones(3)})
    with pytest.raises(ValueError, match="norm must be one of"):
        S.layer_norms({"a": np.ones(2)}, "l3")


def test_step_norms_equal_lr_times_weight_norm_for_lamb_and_lars():
    # The step-norm identity of Algorithms 1 and 2 (identity phi, every layer adapted, no zero norms).
    rng = np.random.default_rng(1)
    shapes = [(4, 3), (3,), (2, 5)]
    params = [rng.normal(size=s) for s in shapes]
    lr = 0.01
    for algorithm in (R.lamb, R.lars):
        state, x = None, params
        for _ in range(3):
            grads = [rng.normal(size=s) for s in shapes]
            state, new_x = algorithm(state, x, grads, lr=lr)
            steps = S.step_norms(x, new_x)
            norms = S.layer_norms(x)
            for name in norms:
                assert steps[name] == pytest.approx(lr * norms[name], rel=1e-12)
            x = new_x


def test_spread_in_decades():
    assert S.spread_in_decades({"a": 1e-3, "b": 10.0, "c": 0.0, "d": math.inf}) == pytest.approx(4.0)
    assert S.spread_in_decades([2.0]) == 0.0
    with pytest.raises(ValueError, match="no finite positive"):
        S.spread_in_decades([0.0, math.nan])
