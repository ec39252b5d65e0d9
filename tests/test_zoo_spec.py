"""The spec grammar: canonical round trips, the report's spellings, and errors that name a position."""

from __future__ import annotations

import random
import re

import pytest

from crnn_ray.io import CliError
from crnn_ray.zoo import canonical, encode, parse
from crnn_ray.zoo.spec import RECURRENT_OPS, CnnSpec, RecurrentSpec

POSITION = re.compile(r"at position (\d+) \(token '([^']*)'\)$")


def error_of(spec: str) -> tuple[str, int, str]:
    with pytest.raises(CliError) as info:
        parse(spec)
    message = str(info.value)
    assert "\n" not in message
    m = POSITION.search(message)
    assert m, message
    return message, int(m.group(1)), m.group(2)


# -- the report's notation ---------------------------------------------------------------------------------

REPORT_SPELLINGS = [
    ("convGRU(conv+conv)_2layer(layer1(batch:1,kernel:3), layer2(batch:1,kernel:3))",
     "convgru(conv+conv)x2[b1k3,b1k3]"),
    ("convGRU(avg_conv_avg_relu_avg_batchnorm+\n avg_conv_avg_relu_avg)_2layer(layer1(batch:1,kernel:3),\n"
     " layer2(batch:1,kernel:3))", "convgru(avg_conv_avg_relu_avg_batchnorm+avg_conv_avg_relu_avg)x2[b1k3,b1k3]"),
    ("convGRU(conv+conv+conv+conv)_4layer(layer1(batch:n,kernel:1),layer2(batch:n,kernel:1),"
     "layer3(batch:1,kernel:3),layer4(batch:1,kernel:3))", "convgru(conv+conv+conv+conv)x4[bnk1,bnk1,b1k3,b1k3]"),
    ("convLSTM(avg_conv_avg_dropout_batchnorm_relu)_2layer(layer1(batch:1,kernel:3), layer2(batch:1,kernel:3))",
     "convlstm(avg_conv_avg_dropout_batchnorm_relu)x2[b1k3,b1k3]"),
    ("convgru(conv(1, 256)_batchnorm+conv(3, 256)_batchnorm_dropout+conv(1, 256)_avg_relu)x3[bnk1,b1k3,bnk1]",
     "convgru(conv(1,256)_batchnorm+conv(3,256)_batchnorm_dropout+conv(1,256)_avg_relu)x3[bnk1,b1k3,bnk1]"),
    ("cnn1d(CNN1d(5,1)*3+CNN1d(3,1)*2+linear)", "cnn1d(c5s1*3+c3s1*2)"),
    ("cnn1d(CNN1d(5,1)*3+CNN1d(3,1)+down_sample(3,1)+down_sample(3,1)+ CNN1d(3,1)+linear)",
     "cnn1d(c5s1*3+c3s1+down(c3s1)+down(c3s1)+c3s1)"),
    ("cnn1d(CNN1d(5,1)*3+relu+(avg+CNN1d(3,2)+CNN1d(1,1)*1+relu)+down_sample(CNN1d(3,2)+CNN1d(1,1)*3+relu)"
     "+avgpool+CNN1(1,1)+relu+linear)",
     "cnn1d(c5s1*3+relu+(avg+c3s2+c1s1+relu)+down(c3s2+c1s1*3+relu)+avgpool+c1s1+relu)"),
]


@pytest.mark.parametrize("report, expected", REPORT_SPELLINGS)
def test_report_spellings_normalise_to_the_canonical_form(report, expected):
    assert canonical(report) == expected
    assert encode(parse(expected)) == expected
    assert parse(report) == parse(expected)


def test_defaults_are_dropped_and_non_defaults_kept():
    # conv kernel equal to the layer's, width equal to the default, dropout p default: all implicit
    assert canonical("convgru(conv(3,16)_dropout(0.5))x1[b1k3]{w=16}") == "convgru(conv_dropout)x1[b1k3]"
    assert canonical("convgru(conv(1)_featuredropout(0.1))x1[b1k3]{w=24}") == \
        "convgru(conv(1)_featuredropout(0.1))x1[b1k3]{w=24}"
    assert canonical("cnn1d(c3s1*1+dropout(0.5)){pad=same,w=32}") == "cnn1d(c3s1+dropout)"
    assert canonical("cnn1d(c3s1){w=8,pad=valid}") == "cnn1d(c3s1){pad=valid,w=8}"
    spec = parse("convgru(conv(3,64))x2[b1k3,b1k3]")
    assert isinstance(spec, RecurrentSpec) and spec.pipelines[0][0].args == (3, 64)
    assert isinstance(parse("cnn1d(c3s2*2)"), CnnSpec)


# -- errors ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, position, token, words", [
    ("convgru(avg_conf)x1[b1k3]", 12, "conf", "unknown op"),
    ("convgru(conv+conv+conv)x2[b1k3,b1k3]", 23, "x2", "3 pipelines for 2 layers"),
    ("convgru(conv)x3[b1k3,b1k3]", 13, "x3", "layer count 3 but 2"),
    ("gru(conv)x1[b1k3]", 0, "gru", "unknown model family"),
    ("convgru(avg_relu)x1[b1k3]", 8, "avg", "needs a conv"),
    ("convgru(conv_dropout(1.5))x1[b1k3]", 21, "1.5", "drop probability"),
    ("convgru(conv)x1[b2k3]", 17, "2k3", "layout"),
    ("convGRU(conv+conv)_2layer(layer1(batch:1,kernel:3), layer2(batch:,kernel:3))", 65, ",", "batch:1 or batch:n"),
    ("convGRU(conv+conv+conv)_3layer(layer1(batch:n,kernel:1),layer2(batch:1,kernel:3),layer4(batch:n,kernel:1))",
     86, "4", "expected layer3"),
    ("cnn1d(c5s1*3+maxpool)", 13, "maxpool", "unknown CNN1d item"),
    ("cnn1d(c5s1+linear+relu)", 11, "linear", "only come last"),
    ("cnn1d(c5s1){w=8,depth=3}", 16, "depth", "unknown option"),
    ("cnn1d(c5s1) extra", 12, "extra", "unexpected text"),
    ("convlstm(conv)x1[b1k3", 21, "<end>", "expected"),
])
def test_bad_specs_name_token_and_position(spec, position, token, words):
    message, pos, tok = error_of(spec)
    assert (pos, tok) == (position, token), message
    assert words in message


def test_impossible_sizes_fail_at_build_time_with_the_token():
    from crnn_ray.zoo import build_model

    cases = [
        ("cnn1d(c5s1*3+c3s2*3){pad=valid}", 20, 8, "c3s2", "below 1"),  # 20 -> 8 -> 3 -> 1 -> 0
        ("convgru(conv)x1[bnk3]", 20, 8, "bnk3", "larger than the 1 positions"),
        ("convgru(conv)x1[b1k9]", 20, 8, "b1k9", "larger than the 8 positions"),
        ("convgru(conv(5))x1[b1k3]", 20, 4, "conv", "conv kernel 5 is larger than the 4 positions"),
        ("convlstm(conv)x1[b1k2]", 20, 8, "b1k2", "must be odd"),
    ]
    for spec, lookback, features, token, words in cases:
        with pytest.raises(CliError) as info:
            build_model(spec, features, lookback)
        message = str(info.value)
        m = POSITION.search(message)
        assert m and m.group(2) == token and spec[int(m.group(1)):].startswith(token), message
        assert words in message, message
    build_model("cnn1d(c5s1*3+c3s2*2){pad=valid}", 8, 20)  # one fewer stride-2 conv fits


# -- property tests: random specs from the grammar ---------------------------------------------------------

def random_pipeline(rng: random.Random) -> list[str]:
    ops = [rng.choice(["avg", "avg(5)", "batchnorm", "relu", "dropout", "dropout(0.2)", "featuredropout(0.1)"])
           for _ in range(rng.randint(0, 4))]
    conv = rng.choice(["conv", "conv", "conv(1)", "conv(3,24)", "conv(1,8)"])
    ops.insert(rng.randint(0, len(ops)), conv)
    if rng.random() < 0.3:
        ops.insert(rng.randint(0, len(ops)), "conv")
    return ops


def random_recurrent(rng: random.Random) -> str:
    n = rng.randint(1, 4)
    layers = [rng.choice(["b1k3", "b1k1", "bnk1", "b1k5"]) for _ in range(n)]
    shared = rng.random() < 0.3
    pipes = [random_pipeline(rng) for _ in range(1 if shared else n)]
    opts = rng.choice(["", "{w=16}", "{w=8}", "{w=20}"])
    return f"{rng.choice(['convgru', 'convlstm'])}({'+'.join('_'.join(p) for p in pipes)})x{n}[{','.join(layers)}]{opts}"


def random_items(rng: random.Random, depth: int) -> list[str]:
    items = []
    for _ in range(rng.randint(1, 4)):
        r = rng.random()
        if r < 0.5:
            item = f"c{rng.choice([1, 3, 5])}s{rng.choice([1, 1, 2])}"
        elif r < 0.75 or depth >= 2:
            item = rng.choice(["avg", "relu", "batchnorm", "dropout(0.1)", "featuredropout"])
        else:
            inner = "+".join(random_items(rng, depth + 1))
            item = rng.choice([f"down(c3s1+{inner})", f"({inner})"])
        if rng.random() < 0.2:
            item += f"*{rng.randint(1, 3)}"
        items.append(item)
    return items


def random_cnn(rng: random.Random) -> str:
    items = ["c3s1"] + random_items(rng, 0) + (["avgpool"] if rng.random() < 0.5 else [])
    return f"cnn1d({'+'.join(items)}){rng.choice(['', '{w=8}', '{pad=same}'])}"


def spaced(rng: random.Random, s: str) -> str:
    """The same spec with random whitespace around punctuation and upper-case family words."""
    out = re.sub(r"([()+,\[\]{}=*])", lambda m: rng.choice(["", " ", "\n  "]) + m.group(1) + rng.choice(["", " "]), s)
    return out.replace("convgru", "convGRU").replace("convlstm", "ConvLSTM").replace("cnn1d", "CNN1d")


def test_random_specs_round_trip_and_normalise():
    rng = random.Random(1234)
    for _ in range(400):
        s = random_recurrent(rng) if rng.random() < 0.6 else random_cnn(rng)
        c = canonical(s)
        assert encode(parse(c)) == c
        assert canonical(c) == c
        assert parse(s) == parse(c)
        assert canonical(spaced(rng, s)) == c
        assert " " not in c and c == c.strip()


def test_corrupted_specs_fail_with_a_position():
    rng = random.Random(99)
    failed = 0
    for _ in range(400):
        s = canonical(random_recurrent(rng) if rng.random() < 0.6 else random_cnn(rng))
        kind = rng.random()
        if kind < 0.4:  # replace one op/item word by an unknown one: the error must point at it exactly
            words = [m for m in re.finditer(r"[a-z]+", s) if m.group(0) in RECURRENT_OPS + ("avgpool",)
                     and m.start() > 6]
            if not words:
                continue
            m = rng.choice(words)
            bad = s[:m.start()] + "bogus" + s[m.end():]
            message, pos, tok = error_of(bad)
            assert pos == m.start() and tok == "bogus", message
            failed += 1
            continue
        i = rng.randrange(len(s))
        bad = s[:i] + rng.choice(["#", "?", "%", "!"]) + s[i:] if kind < 0.7 else s[:i] + s[i + 1:]
        try:
            parse(bad)
        except CliError as exc:
            m = POSITION.search(str(exc))
            assert m and 0 <= int(m.group(1)) <= len(bad), str(exc)
            failed += 1
    assert failed > 250
