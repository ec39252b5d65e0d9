"""Zoo modules: every entry builds and trains one step; the cells are torch's GRU/LSTM equations."""

from __future__ import annotations

import re

import pytest
import torch

from crnn_ray import defaults
from crnn_ray.io import CliError
from crnn_ray.zoo import build_model, canonical, count_params, load_zoo, maybe_compile, resolve_variants

ZOO = load_zoo()


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread (the shared CI box has 2 cores; oversubscribed threads only add noise)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_zoo_has_every_report_row():
    ids = sorted(ZOO)
    assert len(ids) == 46
    assert [i for i in ids if i.startswith("convgru/")] == [f"convgru/m{n:02d}" for n in range(1, 26)]
    assert [i for i in ids if i.startswith("convlstm/")] == [f"convlstm/m{n}" for n in range(1, 8)]
    cnn = [i for i in ids if i.startswith("cnn1d/")]
    assert len(cnn) == 14 and "cnn1d/m09a" in cnn and "cnn1d/m09b" in cnn
    for entry in ZOO.values():
        assert entry.spec.startswith(entry.family + "(")
        assert 0 < entry.seed_ic < 0.1 and 2.0 < entry.seed_pnl < 3.0 and entry.note
    # the report's duplicated row stays a separate id with the same spec
    assert ZOO["convgru/m17"].spec == ZOO["convgru/m18"].spec


@pytest.mark.parametrize("entry_id", sorted(ZOO))
def test_every_entry_builds_round_trips_and_trains_one_step(entry_id):
    spec = ZOO[entry_id].spec
    assert canonical(spec) == spec
    torch.manual_seed(0)
    model = build_model(spec, defaults.N_FEATURES, defaults.LOOKBACK)
    assert model.spec == spec and count_params(model) > 0
    x = torch.randn(4, defaults.LOOKBACK, defaults.N_FEATURES)
    y = model(x)
    assert y.shape == (4,) and torch.isfinite(y).all()
    loss = (y - torch.randn(4)).pow(2).mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # eval mode is deterministic (dropout off, running stats)


def _copy_torch_weights(model, ref):
    with torch.no_grad():
        for n, layer in enumerate(model.layers):
            conv = layer.input_transform[0]
            conv.weight.copy_(getattr(ref, f"weight_ih_l{n}")[:, :, None])
            conv.bias.copy_(getattr(ref, f"bias_ih_l{n}"))
            layer.hidden_transform.weight.copy_(getattr(ref, f"weight_hh_l{n}")[:, :, None])
            layer.hidden_transform.bias.copy_(getattr(ref, f"bias_hh_l{n}"))


@pytest.mark.parametrize("family, reference", [("convgru", torch.nn.GRU), ("convlstm", torch.nn.LSTM)])
def test_pointwise_cell_is_torch_cell(family, reference):
    """bn layout, kernel 1, bare conv == torch.nn.GRU / LSTM with the same weights (the real equations)."""
    torch.manual_seed(3)
    features, hidden, lookback = 7, 12, 9
    model = build_model(f"{family}(conv+conv)x2[bnk1,bnk1]{{w={hidden}}}", features, lookback)
    ref = reference(features, hidden, num_layers=2, batch_first=True)
    _copy_torch_weights(model, ref)
    x = torch.randn(5, lookback, features)
    ours = model.sequence(x)
    theirs = ref(x)[0]
    assert ours.shape == theirs.shape == (5, lookback, hidden)
    assert (ours - theirs).abs().max().item() <= 1e-5
    expected = model.readout(theirs[:, -1]).squeeze(-1)
    assert (model(x) - expected).abs().max().item() <= 1e-5
    # the gradients agree too (the loop is plain autograd)
    model(x).sum().backward()
    model.readout(ref(x)[0][:, -1]).sum().backward()
    assert torch.allclose(model.layers[0].hidden_transform.weight.grad[:, :, 0], ref.weight_hh_l0.grad, atol=1e-5)


def test_b1_layout_slides_along_the_feature_axis():
    """In b1 the conv shares weights across features: with kernel 1, permuting the features permutes the
    hidden map's positions; with kernel 3 neighbouring features mix (and the state keeps F positions)."""
    torch.manual_seed(0)
    model = build_model("convgru(avg(1)_conv+conv)x2[b1k1,b1k1]{w=4}", 6, 5)
    x = torch.randn(3, 5, 6)
    perm = torch.tensor([3, 1, 5, 0, 2, 4])
    seq = model.sequence(x).reshape(3, 5, 4, 6)
    seq_perm = model.sequence(x[:, :, perm]).reshape(3, 5, 4, 6)
    assert torch.allclose(seq[..., perm], seq_perm, atol=1e-6)
    wide = build_model("convgru(conv)x1[b1k3]{w=4}", 6, 5)
    assert wide.layers[0].hidden_transform.weight.shape == (12, 4, 3)
    assert wide.state_size == 4 * 6
    # a bn layer after a b1 layer sees every entry of the [C, F] map as a channel
    mixed = build_model("convgru(conv+conv)x2[b1k3,bnk1]{w=4}", 6, 5)
    assert mixed.layers[1].input_transform[0].in_channels == 4 * 6
    # a b1 layer after a bn layer slides along the previous hidden vector (one channel)
    back = build_model("convgru(conv+conv)x2[bnk1,b1k3]{w=4}", 6, 5)
    assert back.layers[1].input_transform[0].in_channels == 1 and back.layers[1].positions == 4


def test_widths_and_dropout_come_from_the_spec():
    m25 = build_model(ZOO["convgru/m25"].spec, defaults.N_FEATURES, defaults.LOOKBACK)
    drops = [m for m in m25.modules() if isinstance(m, torch.nn.Dropout1d)]
    assert len(drops) == 1 and drops[0].p == pytest.approx(0.1)  # the report's "p=0.9" = keep 0.9
    assert [layer.hidden for layer in m25.layers] == [256, 1, 256]
    m06 = build_model(ZOO["convgru/m06"].spec, defaults.N_FEATURES, defaults.LOOKBACK)
    assert [layer.hidden for layer in m06.layers] == [16, 16]
    two = build_model("convgru(conv_relu_conv(3,24))x1[b1k3]", 8, 20)
    convs = [m for m in two.layers[0].input_transform if isinstance(m, torch.nn.Conv1d)]
    assert [c.out_channels for c in convs] == [16, 3 * 24]


def test_cnn1d_width_and_length_schedule():
    model = build_model(ZOO["cnn1d/m09b"].spec, 8, 20)
    convs = [m for m in model.body if isinstance(m, torch.nn.Conv1d)]
    assert convs[0].in_channels == 8
    # w=32, doubled at each stride-2 conv, halved at each down(...) block's first conv
    assert [c.out_channels for c in convs] == [32, 32, 32, 64, 64, 64, 128, 128, 128] + [128] * 4 * 2 + [128]
    assert model.out_length == 1
    valid = build_model("cnn1d(c5s1*3+c3s2){pad=valid,w=8}", 8, 20)
    assert valid.out_length == 3 and valid.out_channels == 16  # 20 -> 8 -> floor(5/2)+1
    same = build_model("cnn1d(c5s1*3+c3s2+avg){w=8}", 8, 20)
    assert same.out_length == 5  # 20 -> 10 -> avg 5
    x = torch.randn(4, 20, 8)
    assert same.body(x.transpose(1, 2)).shape == (4, 16, 5)


def test_forward_matches_the_sequence_readout():
    model = build_model(ZOO["convlstm/m7"].spec, 8, 20).eval()
    x = torch.randn(4, 20, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), model.readout(model.sequence(x)[:, -1]).squeeze(-1), atol=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit deprecation notes raised by dynamo's import
def test_recurrent_loop_traces_without_graph_breaks():
    """fullgraph=True raises on any graph break: the loop is traceable by torch.compile."""
    model = build_model(ZOO["convgru/m06"].spec, 8, 10).eval()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = torch.randn(3, 10, 8)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-6)
    assert maybe_compile(model, enabled=False) is model
    keys = list(model.state_dict())
    assert maybe_compile(model) is model and list(model.state_dict()) == keys  # in place: checkpoints unchanged


def test_resolve_variants():
    got = resolve_variants(["convgru/m25", "convlstm/*", "convgru/m25", " cnn1d( c5s1 *3 ) "])
    assert got[0] == ("convgru/m25", ZOO["convgru/m25"].spec)
    assert [v for v, _ in got[1:8]] == [f"convlstm/m{n}" for n in range(1, 8)]
    assert got[-1] == ("cnn1d(c5s1*3)", "cnn1d(c5s1*3)")
    assert len(got) == 9
    assert len(resolve_variants(["cnn1d/m09?"])) == 2
    for bad, words in [("convgru/m99", "unknown zoo id 'convgru/m99'"), ("gru/*", "matches no zoo id"),
                       ("convgru(foo)x1[b1k3]", "position 8")]:
        with pytest.raises(CliError, match=re.escape(words)):
            resolve_variants([bad])


def test_load_zoo_rejects_bad_files(tmp_path):
    (tmp_path / "a.yaml").write_text("family: convgru\nentries:\n  - id: convgru/x\n    spec: convgru(cnv)x1[b1k3]\n")
    with pytest.raises(CliError, match=r"a\.yaml: convgru/x\.spec: .*position 8"):
        load_zoo(tmp_path)
    (tmp_path / "a.yaml").write_text("family: convgru\nentries:\n  - id: cnn1d/x\n    spec: cnn1d(c3s1)\n")
    with pytest.raises(CliError, match=r"must start with 'convgru/'"):
        load_zoo(tmp_path)
    (tmp_path / "a.yaml").write_text("family: cnn1d\nentries:\n  - id: cnn1d/x\n    spec: cnn1d(c3s1)\n"
                                     "    seed_ic: high\n")
    with pytest.raises(CliError, match=r"a\.yaml: entries\[0\]\.seed_ic: expected a number, got 'high'"):
        load_zoo(tmp_path)


def test_avg_is_a_length_keeping_true_mean():
    from crnn_ray.zoo.ops import MeanFilter

    for kernel, positions in [(1, 8), (3, 8), (5, 8), (3, 2), (3, 1), (5, 5)]:
        x = torch.randn(3, 4, positions)
        reference = torch.nn.AvgPool1d(kernel, 1, kernel // 2, count_include_pad=False)(x)
        assert torch.allclose(MeanFilter(kernel, positions)(x), reference, atol=1e-6)
