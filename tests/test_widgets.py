"""The workbench without a browser: cached re-embedding, live quantization, the panels' numbers."""

from __future__ import annotations

import html
import re

import numpy as np
import pytest
import torch
from ipywidgets import HBox

from svlab.evaluate import EvalSet
from svlab.memory import project
from svlab.metrics import format_difference
from svlab.models import ECAPATDNN, ResNet
from svlab.quant import quantize_model
from svlab.quant.binarize import binarize, binary_size
from svlab.quant.packed import model_size
from svlab.workbench.cache import PrefixCache
from svlab.workbench.engine import LiveQuantizer, workbench_trials
from svlab.workbench.figures import DET_LIMITS, DET_POINTS, det_points, probit, set_det
from svlab.workbench.views import PLOTLY_MIME
from svlab.workbench.widgets import MIXED, MemoryPanel, Workbench, bits_option

torch.set_num_threads(1)


def tiny_resnet() -> ResNet:
    torch.manual_seed(0)
    return ResNet([1, 1], 4, feat_dim=16, embed_dim=8, strides=(1, 2)).eval()


def tiny_evalset(feat_dim: int = 16, n_speakers: int = 4, per_speaker: int = 3) -> EvalSet:
    """Random features with a speaker offset, every pair a trial."""
    gen = torch.Generator().manual_seed(1)
    keys = [f"s{s}/u{u}" for s in range(n_speakers) for u in range(per_speaker)]
    offsets = torch.randn(n_speakers, 1, feat_dim, generator=gen)
    feats = [offsets[int(k[1])] + torch.randn(20, feat_dim, generator=gen) for k in keys]
    batches = [torch.stack(feats[:5]), torch.stack(feats[5:])]
    pairs = [(a, b) for i, a in enumerate(keys) for b in keys[i + 1 :]]
    labels = np.array([int(a.split("/")[0] == b.split("/")[0]) for a, b in pairs])
    return EvalSet(keys, batches, torch.zeros(len(keys), feat_dim), pairs, labels)


def full_forward(model, evalset) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(b) for b in evalset.batches])


# ---------------------------------------------------------------- PrefixCache


@pytest.mark.parametrize("make", [tiny_resnet, lambda: ECAPATDNN(feat_dim=16, channels=8,
                                                                   embed_dim=8).eval()])
def test_prefix_cache_matches_a_full_forward_after_each_change(make):
    torch.manual_seed(0)
    model, evalset = make(), tiny_evalset()
    cache = PrefixCache(model, evalset.batches)
    assert torch.allclose(cache.embed(), full_forward(model, evalset), atol=1e-6)
    names = [n for n, p in model.named_parameters() if p.dim() > 1]
    for name in [names[-1], names[len(names) // 2], names[0]]:
        with torch.no_grad():
            dict(model.named_parameters())[name].mul_(-1.5)
        assert torch.allclose(cache.embed([name]), full_forward(model, evalset), atol=1e-5)
        owner = next(p for p in cache.order if name.startswith(p + "."))
        assert cache.last_recomputed == cache.order[cache.order.index(owner):]


def test_prefix_cache_rejects_bad_points():
    with pytest.raises(ValueError, match="not submodules"):
        PrefixCache(tiny_resnet(), tiny_evalset().batches, cache_points=["nope"])
    with pytest.raises(ValueError, match="must not nest"):
        PrefixCache(tiny_resnet(), tiny_evalset().batches, cache_points=["stages", "stages.0"])


# ---------------------------------------------------------------- LiveQuantizer


@pytest.mark.parametrize("quantizer,granularity", [("kmeans", "tensor"), ("uniform", "channel")])
def test_live_scores_equal_quantize_model_then_evalset_score(quantizer, granularity):
    model, evalset = tiny_resnet(), tiny_evalset()
    live = LiveQuantizer(model, evalset, quantizer=quantizer, granularity=granularity)
    bit_map = {live.layers[0]: 2, live.layers[3]: 3, live.layers[-1]: 1}
    for layer, bits in bit_map.items():  # one layer at a time, as the sliders do
        live.set_bits(layer, bits)
    reference = quantize_model(model, bit_map, method=quantizer, granularity=granularity)
    expected = evalset.score(reference)
    assert live.current.eer == pytest.approx(expected["eer"], abs=1e-9)
    assert live.current.min_dcf == pytest.approx(expected["min_dcf"], abs=1e-9)
    assert live.size_bytes() == model_size(model, bit_map, method=quantizer,
                                           granularity=granularity)
    live.set_all(None)
    assert live.current.eer == pytest.approx(evalset.score(model)["eer"], abs=1e-9)


@pytest.mark.parametrize("scheme", ["sign", "static"])
def test_binary_quantizer_matches_binarize(scheme):
    model, evalset = tiny_resnet(), tiny_evalset()
    live = LiveQuantizer(model, evalset, quantizer=scheme, granularity="channel")
    live.set_all(1)
    reference = binarize(model, scheme, granularity="channel")
    assert live.current.eer == pytest.approx(evalset.score(reference)["eer"], abs=1e-9)
    assert live.size_bytes() == binary_size(reference)["total"]
    live.set_all(4)  # binary schemes act at 1 bit only: 4 bits is k-means
    assert live.scheme(4) == "kmeans"
    expected = evalset.score(quantize_model(model, 4, granularity="channel"))
    assert live.current.eer == pytest.approx(expected["eer"], abs=1e-9)


def test_delta_eer_and_pick_follow_one_layer_at_a_time():
    model, evalset = tiny_resnet(), tiny_evalset()
    live = LiveQuantizer(model, evalset)
    live.set_bits(live.layers[1], 8)
    deltas = live.delta_eer(1)
    fp32 = evalset.score(model)["eer"]
    for layer in (live.layers[0], live.layers[-1]):
        alone = evalset.score(quantize_model(model, {layer: 1}))["eer"]
        assert deltas[layer] == pytest.approx(alone - fp32, abs=1e-9)
    assert live.bits[live.layers[1]] == 8  # restored
    assert set(live.sensitivity_pick(1, tolerance=1.0).values()) == {1}
    picked = live.sensitivity_pick(1, tolerance=0.0)
    assert picked == {layer: 1 if deltas[layer] <= 0 else None for layer in live.layers}


def test_a_state_seen_lately_is_not_re_embedded_and_later_moves_stay_exact(monkeypatch):
    model, evalset = tiny_resnet(), tiny_evalset()
    live = LiveQuantizer(model, evalset)
    passes = []
    embed = live.cache.embed
    monkeypatch.setattr(live.cache, "embed", lambda changed=None: passes.append(changed)
                        or embed(changed))
    first, last = live.layers[0], live.layers[-1]
    live.set_bits(last, 2)
    live.set_bits(last, None)  # back to fp32: remembered
    assert live.current is live.fp32 and passes == [[last]]
    live.set_bits(last, 2)  # remembered too
    summary = live.summary()
    assert passes == [[last]]
    live.set_bits(first, 3)  # the cache last embedded {last: 2}: only the first layer is stale
    assert passes == [[last], [first]]
    expected = evalset.score(quantize_model(model, {first: 3, last: 2}))
    assert live.current.eer == pytest.approx(expected["eer"], abs=1e-9)
    live.set_all(None)  # seen: no pass, the cache still holds {first: 3, last: 2}
    assert len(passes) == 2 and live.current is live.fp32
    live.set_bits(live.layers[2], 4)  # from the cache's state, three layers differ
    assert passes[-1] == [first, live.layers[2], last]
    expected = evalset.score(quantize_model(model, {live.layers[2]: 4}))
    assert live.current.eer == pytest.approx(expected["eer"], abs=1e-9)
    live.set_bit_map({first: None, live.layers[2]: None, last: 2})
    assert live.summary() == summary  # intervals remembered with the state


def test_mixed_precision_fits_the_budget_and_too_small_a_budget_is_an_error():
    live = LiveQuantizer(tiny_resnet(), tiny_evalset())
    fp32 = live.size_bytes()
    bit_map = live.mixed_precision(fp32 / 5)
    assert live.size_bytes(bit_map) <= fp32 / 5
    assert live.size_bytes(bit_map) > live.size_bytes(dict.fromkeys(live.layers, 1))
    with pytest.raises(ValueError, match="below the smallest possible size"):
        live.mixed_precision(100)


def test_bad_input_names_the_layer_and_changes_nothing():
    live = LiveQuantizer(tiny_resnet(), tiny_evalset())
    layer = live.layers[2]
    with pytest.raises(ValueError, match=re.escape(layer)):
        live.set_bit_map({live.layers[0]: 4, layer: 9})
    with pytest.raises(ValueError, match="unknown layer 'fc'"):
        live.set_bits("fc", 4)
    with pytest.raises(ValueError, match="quantizer must be one of"):
        live.set_quantizer("ternary")
    assert set(live.bits.values()) == {None}


def test_workbench_trials_pairs_kept_utterances_across_sessions(tmp_path):
    (tmp_path / "trials").mkdir()
    lines = [f"1 a/s{i}/1.wav a/s{i}/2.wav" for i in range(3)] + ["0 a/s0/1.wav b/t/1.wav",
                                                                   "0 b/t/2.wav b/t/3.wav"]
    (tmp_path / "trials" / "test.txt").write_text("\n".join(lines) + "\n")
    trials = workbench_trials(tmp_path, per_speaker=3)
    kept = sorted({p for t in trials for p in (t.enroll, t.test)})
    assert kept == ["a/s0/1.wav", "a/s1/1.wav", "a/s2/1.wav", "b/t/1.wav", "b/t/2.wav",
                    "b/t/3.wav"]
    assert len(trials) == 15
    assert all(t.label == (t.enroll[0] == t.test[0]) for t in trials)


# ---------------------------------------------------------------- the widgets


def shown(workbench: Workbench) -> dict[str, str]:
    """The numbers panel as text, by CSS class: what a learner reads."""
    return dict(re.findall(r"class='svlab-(\w+)'>([^<]+)<", workbench.numbers.value))


def test_moving_a_layer_slider_updates_every_panel():
    model, evalset = tiny_resnet(), tiny_evalset()
    wb = Workbench(LiveQuantizer(model, evalset))
    layer = wb.live.layers[-2]
    wb.layer_sliders[layer].value = "2"
    expected = evalset.score(quantize_model(model, {layer: 2}))
    size = model_size(model, {layer: 2})
    numbers = shown(wb)
    assert numbers["eer"] == f"{100 * expected['eer']:.2f}%"
    assert numbers["mindcf"] == f"{expected['min_dcf']:.3f}"
    assert numbers["size"] == f"{size / 1024:.1f} KB"
    assert numbers["ratio"] == f"{model_size(model, {}) / size:.1f}x"
    assert wb.layer_picker.value == layer
    assert len(wb.histogram.data[1].x) == 4 and wb.histogram.layout.title.text.startswith(layer)
    assert int(wb.histogram.data[0].y.sum()) == dict(model.named_parameters())[layer].numel()
    far, frr = wb.live.current.far, wb.live.current.frr
    x, y = det_points(far, frr)
    assert np.allclose(wb.det.data[1].x, x) and np.allclose(wb.det.data[1].y, y)


def test_global_slider_presets_and_quantizer_move_the_sliders():
    model, evalset = tiny_resnet(), tiny_evalset()
    wb = Workbench(LiveQuantizer(model, evalset))
    wb.global_slider.value = "3"
    assert {s.value for s in wb.layer_sliders.values()} == {"3"}
    assert shown(wb)["eer"] == f"{100 * evalset.score(quantize_model(model, 3))['eer']:.2f}%"
    wb.preset_buttons[8].click()
    assert set(wb.live.bits.values()) == {8} and wb.global_slider.value == "8"
    wb.quantizer.value = "static"
    assert {s.value for s in wb.layer_sliders.values()} == {"1"}
    reference = binarize(model, "static", granularity="tensor")
    assert shown(wb)["size"] == f"{binary_size(reference)['total'] / 1024:.1f} KB"
    assert len(wb.histogram.data[1].x) == 2


def test_mixed_and_pick_presets_and_errors_in_the_message_line():
    wb = Workbench(LiveQuantizer(tiny_resnet(), tiny_evalset()))
    wb.budget.value = 0.01
    wb.mixed_button.click()
    assert "below the smallest possible size" in wb.message.value
    assert set(wb.live.bits.values()) == {None}
    wb.budget.value = wb.live.size_bytes() / 1024 / 5
    wb.mixed_button.click()
    assert wb.live.size_bytes() <= wb.budget.value * 1024
    assert [wb.layer_sliders[n].value for n in wb.live.layers] == [
        bits_option(wb.live.bits[n]) for n in wb.live.layers]
    wb.tolerance.value = 100.0
    wb.pick_button.click()
    assert set(wb.live.bits.values()) == {int(wb.pick_bits.value)}
    layers = len(wb.live.layers)
    assert wb.message.value.startswith(f"{layers} of {layers} layers at 2 bits")
    assert "kept fp32" not in wb.message.value
    wb.tolerance.value = -100.0  # no layer can qualify: a short verdict, not a list of names
    wb.pick_button.click()
    assert set(wb.live.bits.values()) == {None}
    assert wb.message.value.startswith(f"no layer stays within +-100.00 points alone: all {layers}")
    assert wb.message.value.count(", ") <= 3 and f"and {layers - 3} more" in wb.message.value


def test_every_control_reads_the_bit_map_applied():
    """After a preset that leaves the layers at different widths, "all layers" reads mixed
    (it read fp32 while every layer was quantized); one width again, it reads that width."""
    wb = Workbench(LiveQuantizer(tiny_resnet(), tiny_evalset()))
    wb.budget.value = wb.live.size_bytes() / 1024 / 5
    wb.mixed_button.click()
    assert len(set(wb.live.bits.values())) > 1 and wb.global_slider.value == MIXED
    assert [wb.layer_sliders[n].value for n in wb.live.layers] == [
        bits_option(wb.live.bits[n]) for n in wb.live.layers]
    wb.preset_buttons[4].click()
    assert wb.global_slider.value == "4"
    wb.layer_sliders[wb.live.layers[0]].value = "fp32"
    assert wb.global_slider.value == MIXED
    wb.global_slider.value = "fp32"  # from mixed to a width: every layer follows
    assert set(wb.live.bits.values()) == {None}
    bits_before = dict(wb.live.bits)
    wb.global_slider.value = MIXED  # a reading only: moving onto it changes nothing
    assert wb.live.bits == bits_before and wb.global_slider.value == "fp32"
    assert "reads mixed" in wb.message.value


def test_the_pick_summary_states_what_the_combination_costs():
    """Each layer's own change is not what the picked layers cost together: the message gives
    the combination's paired difference, the one the numbers panel shows."""
    wb = Workbench(LiveQuantizer(tiny_resnet(), tiny_evalset()))
    wb.tolerance.value = 100.0
    wb.pick_button.click()
    summary = wb.live.summary()
    together = format_difference((summary["delta"], summary["delta_low"], summary["delta_high"]))
    assert f"together {together}" in html.unescape(wb.message.value)
    assert together in shown(wb)["delta"]


def test_the_det_axes_show_a_high_miss_rate_where_it_is_not_at_the_frame():
    """A 45% EER model's curve lies inside the axes, and a miss rate above the top of the frame
    is drawn beyond it (plotly cuts it there), not along the frame as if it were the limit."""
    low, high = probit(DET_LIMITS)
    assert low < probit([0.001])[0] and probit([0.45])[0] < high
    wb = Workbench(LiveQuantizer(tiny_resnet(), tiny_evalset()))
    assert tuple(wb.det.layout.yaxis.range) == (low, high)
    far, frr = np.array([0.0, 0.001, 0.45, 1.0]), np.array([1.0, 0.97, 0.45, 0.0])
    set_det(wb.det, 1, far, frr)
    assert wb.det.data[1].y[1] > high and np.isfinite(wb.det.data[1].y).all()
    assert wb.det.data[1].y[2] == pytest.approx(probit([0.45])[0])


def test_a_thinned_det_curve_keeps_every_point_within_one_step():
    """The browser gets a few hundred points, and no point of the full curve is farther than
    one step (the curve's length in the frame over the points kept) from a point drawn."""
    from svlab.metrics import det_curve

    rng = np.random.default_rng(0)
    labels = rng.random(20_000) < 0.1
    far, frr = det_curve(rng.normal(size=labels.size) + 2 * labels, labels.astype(int))
    x, y = det_points(far, frr)
    assert len(x) <= DET_POINTS < len(far)
    full = np.stack(det_points(far, frr, max_points=len(far)), axis=1)
    kept = np.stack([x, y], axis=1)
    low, high = probit(DET_LIMITS)
    inside = np.clip(full, low, high)
    step = np.linalg.norm(np.diff(inside, axis=0), axis=1).sum() / (DET_POINTS - 2)
    nearest = np.linalg.norm(np.clip(kept, low, high)[None] - inside[:, None], axis=2).min(1)
    assert nearest.max() <= step
    assert (kept[0] == full[0]).all() and (kept[-1] == full[-1]).all()


def test_memory_panel_bars_are_the_projections():
    panel = MemoryPanel(batch_size=8, frames=20, num_classes=10)
    panel.eight_bit.value = True
    panel.optimizer.value = "SGD"
    standard = project("resnet34", batch_size=8, frames=20, optimizer="sgd", num_classes=10)
    eight_bit = project("resnet34", batch_size=8, frames=20, optimizer="sgd8bit", num_classes=10)
    totals = [sum(trace.y[i] for trace in panel.figure.data) for i in range(2)]
    assert totals[0] == pytest.approx(standard["bytes"].sum() / 2**30)
    assert totals[1] == pytest.approx(eight_bit["bytes"].sum() / 2**30)
    assert totals[1] < totals[0]
    assert f"{totals[1]:.2f} GiB" in panel.numbers.value


# ---------------------------------------------------------------- busy state, progress, re-sync


def test_every_action_is_busy_while_it_computes_and_clears_even_when_it_fails(monkeypatch):
    wb = Workbench(LiveQuantizer(tiny_resnet(), tiny_evalset()))
    seen = []
    set_bit_map = wb.live.set_bit_map

    def spy(bit_map):
        seen.append(("svlab-busy" in wb.panel._dom_classes,
                     all(control.disabled for control in wb.controls), wb.status.value))
        return set_bit_map(bit_map)

    monkeypatch.setattr(wb.live, "set_bit_map", spy)
    layer = wb.live.layers[1]
    wb.layer_sliders[layer].value = "3"
    wb.preset_buttons[4].click()
    wb.global_slider.value = "2"
    assert [(busy, disabled) for busy, disabled, _ in seen] == [  # a move only dims
        (True, False), (True, True), (True, True)]
    assert seen[0][2] == f"<i>computing {layer.removesuffix('.weight')} at 3...</i>"
    assert "svlab-busy" not in wb.panel._dom_classes
    assert not any(control.disabled for control in wb.controls)

    def broken(bit_map):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(wb.live, "set_bit_map", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        wb.layer_sliders[layer].value = "5"
    assert "svlab-busy" not in wb.panel._dom_classes
    assert not any(control.disabled for control in wb.controls)
    assert wb.progress.layout.visibility == "hidden"


def test_the_time_shown_runs_from_the_event_to_the_last_figure_sent(monkeypatch):
    wb = Workbench(LiveQuantizer(tiny_resnet(), tiny_evalset()))
    clock = [100.0]
    monkeypatch.setattr("svlab.workbench.widgets.perf_counter", lambda: clock[0])
    for view in (wb.histogram_view, wb.det_view):
        show = view.show

        def slow_show(show=show):  # each figure takes 1.5 s on this clock
            clock[0] += 1.5
            show()

        monkeypatch.setattr(view, "show", slow_show)
    wb.layer_sliders[wb.live.layers[0]].value = "2"
    assert wb.status.value.endswith(": updated in 3.00 s</i>")


def test_long_presets_move_a_progress_bar_step_by_step():
    wb = Workbench(LiveQuantizer(tiny_resnet(), tiny_evalset()))
    steps = []
    wb.progress.observe(lambda change: steps.append((change["new"], wb.progress.max)),
                        names="value")
    labels = []
    wb.progress.observe(lambda change: labels.append(change["new"]), names="description")
    wb.budget.value = wb.live.size_bytes() / 1024 / 4
    wb.mixed_button.click()
    layers = len(wb.live.layers)
    assert steps == [(done, layers + 1) for done in range(1, layers + 2)]
    assert labels[0] == "Hessian trace" and labels[-1] == f"{layers + 1}/{layers + 1}"
    steps.clear()
    wb.pick_button.click()
    assert steps == [(0, layers + 1)] + [(done, layers + 1) for done in range(1, layers + 2)]
    assert wb.progress.layout.visibility == "hidden" and "updated in" in wb.status.value


def bundle(view) -> dict:
    """What a browser view (a reloaded tab included) receives: the Output's stored figure."""
    (output,) = view.output.outputs
    return output["data"][PLOTLY_MIME]


def test_views_hold_the_whole_current_figure_after_every_change():
    model, evalset = tiny_resnet(), tiny_evalset()
    wb = Workbench(LiveQuantizer(model, evalset))
    for layer, bits in [(wb.live.layers[-1], "2"), (wb.live.layers[0], "1")]:
        wb.layer_sliders[layer].value = bits
        histogram, det = bundle(wb.histogram_view), bundle(wb.det_view)
        title = histogram["layout"]["title"]["text"]
        levels = wb.live.quantized(layer, int(bits))[1].unique().numel()
        assert title == f"{layer}: {bits} bit k-means, {levels} levels"
        assert len(wb.histogram.data[1].x) == levels  # the Python figure sent is the same
        assert histogram == wb.histogram.to_plotly_json() | {"config": histogram["config"]}
        assert [t["name"] for t in det["data"]] == ["fp32", "quantized"]
        assert det == wb.det.to_plotly_json() | {"config": det["config"]}
    assert np.allclose(wb.det.data[1].x, det_points(wb.live.current.far, wb.live.current.frr)[0])
    panel = MemoryPanel(batch_size=8, frames=20, num_classes=10)
    panel.batch_size.value = 16
    assert bundle(panel.view) == panel.figure.to_plotly_json() | {"config": {
        "responsive": True, "displaylogo": False}}


def test_layout_flexes_to_the_window_and_labels_are_whole():
    wb = Workbench(LiveQuantizer(tiny_resnet(), tiny_evalset()))
    assert wb.histogram.layout.width is None and wb.det.layout.width is None
    assert MemoryPanel(batch_size=8, frames=20, num_classes=10).figure.layout.width is None
    rows = [box for box in _boxes(wb.panel) if isinstance(box, HBox)]
    assert rows and all(box.layout.flex_flow == "row wrap" for box in rows)
    for control in (wb.quantizer, wb.granularity, wb.layer_picker, wb.budget, wb.pick_bits,
                    wb.tolerance, wb.progress):  # the progress bar's label was cut at 80 px
        assert control.style.description_width == "initial", control.description
    assert wb._repr_mimebundle_()["text/plain"] == f"Workbench({len(wb.live.layers)} layers)"


def _boxes(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _boxes(child)


def test_memory_panel_displays_one_living_widget():
    """Each display shows the same container, still open: one made per display was collected
    and closed, and Voila then had no model to draw the panel with."""
    import gc

    panel = MemoryPanel(batch_size=8, frames=20, num_classes=10)
    first = panel._repr_mimebundle_()["application/vnd.jupyter.widget-view+json"]["model_id"]
    gc.collect()
    second = panel._repr_mimebundle_()["application/vnd.jupyter.widget-view+json"]["model_id"]
    assert first == second and panel.widget.comm is not None


def test_a_model_with_its_own_front_end_opens_in_the_workbench(tmp_path):
    """A SpeechBrain-format model embeds its own features there, as EvalSet.score does."""
    from svlab.data.pairs import LARGE_TRIALS
    from svlab.models import build
    from svlab.profiles import REPO_ROOT

    corpus = REPO_ROOT / "data" / "corpus-ci"
    trials = tmp_path / "few.txt"
    lines = (corpus / "trials" / LARGE_TRIALS).read_text().splitlines(True)
    trials.write_text("".join(lines[:60]))
    torch.manual_seed(0)
    ecapa = build("ecapa_c1024_speechbrain", channels=8, scale=4, mfa_channels=16,
                  embed_dim=8).eval()
    evalset = EvalSet.from_corpus(corpus, trials)
    live = LiveQuantizer(ecapa, evalset)
    assert live.batches[0].shape[-1] == 80 and live.batches is evalset.batches_for("speechbrain")
    expected = evalset.score(ecapa)["eer"]
    assert live.set_bits(live.layers[-1], None).eer == pytest.approx(expected, abs=1e-9)
    quantized = live.set_bits(live.layers[-1], 2).eer
    reference = evalset.score(quantize_model(ecapa, {live.layers[-1]: 2}))["eer"]
    assert quantized == pytest.approx(reference, abs=1e-9)


def test_mixed_precision_opens_on_a_model_without_second_derivatives():
    """A dead ReLU channel before CAM++'s mean-and-std pooling makes the double-backward trace
    NaN; the workbench then takes the same estimate from first-order gradients, and the
    mixed-precision preset applies instead of refusing a NaN table."""
    from svlab.models.campplus import CAMPPlus

    torch.manual_seed(0)
    net = CAMPPlus(feat_dim=16, embed_dim=8, head_width=4, init_channels=16, growth_rate=4,
                   dense_layers=(1, 1, 1)).eval()  # fmt: skip
    with torch.no_grad():
        net.xvector.out_nonlinear.batchnorm.bias[0] = -1e3  # channel 0 is dead after the ReLU
    net.front_end = "kaldi"  # the random features below stand in for its own
    live = LiveQuantizer(net, tiny_evalset(), layers=["head.conv1.weight",
                                                      "xvector.dense.linear.weight"])
    table = live.hessian_table(choices=(2, 4), n_samples=2)
    assert all(np.isfinite(v) for row in table.values() for v in row.values())
    bit_map = live.mixed_precision(live.size_bytes(dict.fromkeys(live.layers, 4)), (2, 4))
    assert set(bit_map) == set(live.layers)
