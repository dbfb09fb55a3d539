"""Tests of the exact bit allocation against brute force, and of its errors."""

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from svlab.quant import quantize_model
from svlab.quant.allocate import (
    BudgetError,
    allocate_bits,
    bit_map_size,
    fp32_rest_bytes,
    layer_size_bits,
    layer_sizes,
    plan_bits,
    total_sensitivity,
)
from svlab.quant.packed import model_size


def brute_force(sensitivity, sizes, budget, choices):
    """Every bit map, the cheapest that fits (ties to the smaller): the reference answer."""
    layers = list(sizes)
    best = None
    for combo in itertools.product(choices, repeat=len(layers)):
        bit_map = dict(zip(layers, combo, strict=True))
        size = bit_map_size(bit_map, sizes)
        if size > budget:
            continue
        key = (total_sensitivity(bit_map, sensitivity), size)
        if best is None or key < best[0]:
            best = (key, bit_map)
    return best


def random_problem(rng, n_layers, choices, explicit_sizes):
    sizes, sensitivity = {}, {}
    for i in range(n_layers):
        n = int(rng.integers(5, 400))
        name = f"layer{i}"
        if explicit_sizes:  # arbitrary sizes in bits, not monotone in bits
            sizes[name] = {b: int(rng.integers(8, 4000)) for b in choices}
        else:
            sizes[name] = n
        # random costs, sometimes negative, not monotone in bits
        sensitivity[name] = {b: float(rng.normal()) * 10 ** rng.uniform(-2, 2) for b in choices}
    return sensitivity, sizes


@pytest.mark.parametrize("seed", range(40))
def test_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    choices = (1, 2, 3, 4, 6, 8) if seed % 2 else (1, 2, 4, 8)
    n_layers = int(rng.integers(1, 6 if len(choices) == 4 else 5))
    sensitivity, sizes = random_problem(rng, n_layers, choices, explicit_sizes=seed % 3 == 0)
    smallest = bit_map_size({k: min(choices) for k in sizes}, sizes)
    if seed % 3 == 0:
        smallest = sum(min(v.values()) for v in sizes.values()) / 8
    largest = sum(
        max(v.values()) if isinstance(v, dict) else layer_size_bits(v, max(choices))
        for v in sizes.values()
    ) / 8
    for budget in np.linspace(smallest, largest * 1.1, 7):
        got = allocate_bits(sensitivity, sizes, budget, choices)
        (want_cost, want_size), _ = brute_force(sensitivity, sizes, budget, choices)
        assert bit_map_size(got, sizes) <= budget
        assert math.isclose(total_sensitivity(got, sensitivity), want_cost, abs_tol=1e-9)
        assert bit_map_size(got, sizes) == want_size


def test_monotone_costs_give_more_bits_with_more_budget():
    sizes = {"a": 1000, "b": 5000, "c": 300}
    weight = {"a": 101.0, "b": 1.0, "c": 1.0}
    sensitivity = {k: {b: weight[k] * 4.0**-b for b in (1, 2, 4, 8)} for k in sizes}
    previous = math.inf
    for budget in [850, 1500, 3000, 6000, 10000]:
        bit_map = allocate_bits(sensitivity, sizes, budget, (1, 2, 4, 8))
        assert total_sensitivity(bit_map, sensitivity) <= previous
        previous = total_sensitivity(bit_map, sensitivity)
    assert bit_map == {"a": 8, "b": 8, "c": 8}


def test_sensitive_layer_gets_the_bits():
    sizes = {"a": 1000, "b": 1000}
    sensitivity = {"a": {2: 100.0, 4: 0.0}, "b": {2: 1.0, 4: 0.0}}
    budget = (layer_size_bits(1000, 4) + layer_size_bits(1000, 2)) / 8
    assert allocate_bits(sensitivity, sizes, budget, (2, 4)) == {"a": 4, "b": 2}


def test_budget_below_minimum_names_the_minimum():
    sizes = {"a": 1000, "b": 2000}
    sensitivity = {k: {b: 1.0 / b for b in (1, 2)} for k in sizes}
    minimum = (layer_size_bits(1000, 1) + layer_size_bits(2000, 1)) / 8
    with pytest.raises(BudgetError, match=f"{minimum:g} bytes"):
        allocate_bits(sensitivity, sizes, minimum - 1, (1, 2))
    assert allocate_bits(sensitivity, sizes, minimum, (1, 2)) == {"a": 1, "b": 1}


@pytest.mark.parametrize(
    "sensitivity, sizes, choices, message",
    [
        ({}, {}, (1, 2), "names no layer"),
        ({"a": {1: 1.0}}, {"a": 10}, (1, 2), r"sensitivity\['a'\] has no value for bits \[2\]"),
        ({"a": {1: 1.0}, "z": {1: 1.0}}, {"a": 10}, (1,), "sizes lacks: \\['z'\\]"),
        ({}, {"a": 10}, (1,), "no sensitivity for layer 'a'"),
        ({"a": {1: float("nan")}}, {"a": 10}, (1,), "not finite"),
        ({"a": {9: 1.0}}, {"a": 10}, (9,), "1..8"),
        ({"a": {1: 1.0}}, {"a": 10}, (1, 1), "repeat"),
        ({"a": {1: 1.0, 2: 1.0}}, {"a": {1: 10}}, (1, 2), r"no size for bits \[2\]"),
    ],
)
def test_bad_input(sensitivity, sizes, choices, message):
    with pytest.raises(ValueError, match=message):
        allocate_bits(sensitivity, sizes, 1e9, choices)


def test_bit_map_naming_no_layer():
    with pytest.raises(ValueError, match="names no layer"):
        bit_map_size({}, {"a": 10})
    with pytest.raises(ValueError, match="'nope'"):
        bit_map_size({"nope": 2}, {"a": 10})


def conv_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(4, 16, 3),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Conv1d(16, 32, 3),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4, 8),
    )


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_layer_sizes_agree_with_model_size(granularity):
    net = conv_net()
    sizes = layer_sizes(net, (1, 2, 3), granularity=granularity)
    plan = {"0.weight": 3, "3.weight": 1, "7.weight": 2}
    want = model_size(quantize_model(net, plan, granularity=granularity))
    got = sum(sizes[k][b] for k, b in plan.items()) // 8 + fp32_rest_bytes(net, list(plan))
    assert got == want


def test_plan_bits_fits_the_model_size_and_is_optimal():
    net = conv_net()
    rng = np.random.default_rng(0)
    sensitivity = {
        name: {b: float(rng.uniform(1, 5)) * 4.0**-b for b in (1, 2, 4, 8)}
        for name in ("0.weight", "3.weight", "7.weight")
    }
    smallest = model_size(net, 1)
    for size in np.linspace(smallest, model_size(net, 8), 6):
        plan = plan_bits(net, sensitivity, size, (1, 2, 4, 8))
        assert model_size(quantize_model(net, plan)) <= size
        better = [
            dict(zip(plan, combo, strict=True))
            for combo in itertools.product((1, 2, 4, 8), repeat=3)
        ]
        fitting = [p for p in better if model_size(net, p) <= size]
        best = min(total_sensitivity(p, sensitivity) for p in fitting)
        assert math.isclose(total_sensitivity(plan, sensitivity), best)
    with pytest.raises(BudgetError, match=f"smallest possible, {smallest} bytes"):
        plan_bits(net, sensitivity, smallest - 1, (1, 2, 4, 8))
