"""The embedded tiny CLIP: built on first use through the normal engine, cached, then reused.

The engine builds it (the ``openclip`` factory's ``weights_build`` capability) before it calls
the factory; the plugin never calls the engine."""

from __future__ import annotations

from pathlib import Path

import torch

from tracer_cli.engine.run import backbone_from_options
from tracer_cli.errors import MissingResourceError, UsageError
from tracer_cli.events import Reporter, use_reporter
from tracer_plugins.backbones import embedded
from tracer_plugins.backbones.openclip import make_backbone

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

TINY_PRETRAIN = """
[run]
name = "tiny_pretrain"
[model]
arch = "tracer-tiny-rn"
pretrained = "none"
[data]
train = { name = "synth-world", size = 32 }
[task]
train_text = "captions"
[train]
steps = 2
batch_size = 16
lr = 1e-3
[teacher]
kind = "none"
"""


class _Notices(Reporter):
    def __init__(self):
        self.lines: list[str] = []

    def notice(self, message: str) -> None:
        self.lines.append(message)


def test_the_cache_is_tracer_cache_then_xdg_cache_home_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TRACER_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert embedded.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("TRACER_CACHE")
    assert embedded.cache_dir() == tmp_path / "xdg" / "tracer"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # ignored, as the XDG rules say
    assert embedded.cache_dir() == tmp_path / "home" / ".cache" / "tracer"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert embedded.cache_dir() == tmp_path / "home" / ".cache" / "tracer"


def test_packaged_recipe_is_the_repository_recipe():
    assert embedded.pretrain_recipe_text() == (RECIPES / "tiny_pretrain.toml").read_text()


def test_built_on_first_use_then_reused(tmp_path, monkeypatch):
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(embedded, "pretrain_recipe_text", lambda: TINY_PRETRAIN)
    notices = _Notices()
    with use_reporter(notices):
        backbone = backbone_from_options("openclip", {"arch": "tracer-tiny-rn",
                                                      "pretrained": "embedded"})
    path = embedded.embedded_path("tracer-tiny-rn")
    assert path.is_file() and path.parent == tmp_path / "cache" / "embedded"
    assert path.with_suffix(".lock.toml").is_file()
    assert any("building the embedded tiny CLIP" in n for n in notices.lines)
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert torch.equal(backbone.model.state_dict()["text_projection"], saved["text_projection"])

    again = _Notices()
    with use_reporter(again):
        backbone_from_options("openclip", {"arch": "tracer-tiny-rn", "pretrained": "embedded"})
    assert again.lines == []  # cached: no second build


def test_the_factory_alone_never_trains_and_says_how_to_build(tmp_path, monkeypatch):
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path / "cache"))
    import pytest

    with pytest.raises(MissingResourceError, match="tiny_pretrain.toml"):
        make_backbone({"arch": "tracer-tiny-rn", "pretrained": "embedded"})
    assert not (tmp_path / "cache").exists()


def test_recipe_change_means_new_cache_file(monkeypatch, tmp_path):
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path))
    first = embedded.embedded_path("tracer-tiny-rn")
    monkeypatch.setattr(embedded, "pretrain_recipe_text", lambda: TINY_PRETRAIN)
    assert embedded.embedded_path("tracer-tiny-rn") != first
    assert embedded.embedded_path("tracer-tiny-vit") != embedded.embedded_path("tracer-tiny-rn")


def test_build_version_change_means_new_cache_file(monkeypatch, tmp_path):
    """Engine code that changes what a build computes bumps BUILD_VERSION: a cache built by the
    older code is then never reused."""
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path))
    first = embedded.embedded_path("tracer-tiny-rn")
    monkeypatch.setattr(embedded, "BUILD_VERSION", embedded.BUILD_VERSION + 1)
    assert embedded.embedded_path("tracer-tiny-rn") != first


def test_arch_config_change_means_new_cache_file(monkeypatch, tmp_path):
    """Editing an arch's config (its width, say) changes the digest: weights of the old shape
    are never offered for the new one."""
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path))
    first = embedded.embedded_path("tracer-tiny-rn")
    configs = tmp_path / "configs"
    configs.mkdir()
    text = (embedded.CONFIG_DIR / "tracer-tiny-rn.json").read_text()
    (configs / "tracer-tiny-rn.json").write_text(text)
    monkeypatch.setattr(embedded, "CONFIG_DIR", configs)
    assert embedded.embedded_path("tracer-tiny-rn") == first  # same text, same file
    (configs / "tracer-tiny-rn.json").write_text(text.replace('"layers": 2', '"layers": 3'))
    assert embedded.embedded_path("tracer-tiny-rn") != first


def test_embedded_seed_builds_its_own_pretraining(tmp_path, monkeypatch):
    """``model.embedded_seed`` is a separate pretraining run (its own file, its own weights);
    seed 0 keeps the recipe's file name, and the key is refused for non-embedded weights."""
    import pytest

    from tracer_cli.errors import RecipeError

    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(embedded, "pretrain_recipe_text", lambda: TINY_PRETRAIN)
    with use_reporter(_Notices()):
        zero = backbone_from_options("openclip", {"arch": "tracer-tiny-rn",
                                                  "pretrained": "embedded"})
        one = backbone_from_options("openclip", {"arch": "tracer-tiny-rn",
                                                 "pretrained": "embedded", "embedded_seed": 1})
    assert embedded.embedded_path("tracer-tiny-rn", 0) == embedded.embedded_path("tracer-tiny-rn")
    assert embedded.embedded_path("tracer-tiny-rn", 1).name.endswith("-seed1.pt")
    assert embedded.embedded_path("tracer-tiny-rn", 1).is_file()
    a, b = zero.model.state_dict(), one.model.state_dict()
    assert not torch.equal(a["text_projection"], b["text_projection"])
    assert one.describe()["embedded_seed"] == 1
    with pytest.raises(RecipeError) as err:
        make_backbone({"arch": "tracer-tiny-rn", "pretrained": "none", "embedded_seed": 1})
    assert err.value.key == "model.embedded_seed"


def test_building_twice_gives_identical_weights(tmp_path, monkeypatch):
    """The same build repeated on one machine (two empty caches, same recipe and seed) gives
    bit-identical weights: initialisation, data order, augmentation and the optimizer are seeded.
    Bit-exact comparison is right here, the computation is the same one repeated."""
    monkeypatch.setattr(embedded, "pretrain_recipe_text",
                        lambda: TINY_PRETRAIN.replace("steps = 2", "steps = 4"))
    built = []
    for name in ("first", "second"):
        monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path / name))
        with use_reporter(_Notices()):
            backbone_from_options("openclip", {"arch": "tracer-tiny-rn", "pretrained": "embedded",
                                               "embedded_seed": 3})
        path = embedded.embedded_path("tracer-tiny-rn", 3)
        assert path.parent.parent == tmp_path / name
        built.append(torch.load(path, weights_only=True)["state_dict"])
    first, second = built
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    # The build did train: its lock file records the steps run.
    assert "steps = 4" in path.with_suffix(".lock.toml").read_text()


def _fake_state(rows: int = 50) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    state = {"token_embedding.weight": torch.randn(rows, 8, generator=g) * 0.02,
             "visual.conv1.weight": torch.randn(4, 3, 3, 3, generator=g),
             "visual.bn1.num_batches_tracked": torch.tensor(7)}
    trained = torch.zeros(rows, dtype=torch.bool)
    trained[[1, 4, 9]] = True
    return state, trained


def test_pack_keeps_trained_rows_in_float16_and_redraws_the_rest():
    state, trained = _fake_state()
    packed = embedded.pack(state, trained)
    assert all(v.dtype in (torch.float16, torch.int32, torch.int64) for v in packed.values())
    out = embedded.unpack(packed)
    assert out.keys() == state.keys()
    assert out["visual.bn1.num_batches_tracked"].item() == 7
    torch.testing.assert_close(out["visual.conv1.weight"], state["visual.conv1.weight"],
                               rtol=1e-3, atol=1e-4)  # float16 rounding
    table, original = out["token_embedding.weight"], state["token_embedding.weight"]
    assert table.dtype == torch.float32 and table.shape == original.shape
    torch.testing.assert_close(table[trained], original[trained], rtol=1e-3, atol=1e-6)
    # Untrained rows: redrawn at the measured scale, the same draw every time.
    assert not torch.equal(table[~trained], original[~trained].half().float())
    rms = table[~trained].pow(2).mean().sqrt()
    torch.testing.assert_close(rms, original[~trained].pow(2).mean().sqrt(), rtol=0.1, atol=0)
    assert torch.equal(embedded.unpack(packed)["token_embedding.weight"], table)
    # Values already in float16 pass a second packing unchanged.
    again = embedded.unpack(embedded.pack(out, trained))
    for key in ("visual.conv1.weight", "visual.bn1.num_batches_tracked"):
        assert torch.equal(again[key], out[key]), key
    assert torch.equal(again["token_embedding.weight"][trained], table[trained])


def test_trained_rows_read_from_the_optimizer_state():
    state, trained = _fake_state()
    moment = torch.zeros(50, 8)
    moment[trained] = 1e-9
    checkpoint = {"optimizer": {"state": {0: {"exp_avg_sq": moment},
                                          1: {"exp_avg_sq": torch.ones(4, 3, 3, 3)}}}}
    assert torch.equal(embedded.trained_rows(checkpoint, torch.Size([50, 8])), trained)
    # Without an optimizer state that singles the table out, every row counts as trained.
    assert embedded.trained_rows({}, torch.Size([50, 8])).all()


def test_shipped_weights_are_unpacked_instead_of_trained(tmp_path, monkeypatch):
    """The packed file benchmarks/embedded_weights.py writes from a pretraining run unpacks to
    exactly what a build of that run keeps (``finalize``: the same stored numbers through the
    same functions, so bit-exact), and a shipped file means no training at all."""
    import importlib.util

    import pytest

    from tracer_cli import recipe as recipe_mod
    from tracer_cli import rundir
    from tracer_cli.engine import checkpoint
    from tracer_cli.engine.run import finetune

    spec = importlib.util.spec_from_file_location(
        "embedded_weights",
        Path(__file__).resolve().parents[2] / "benchmarks" / "embedded_weights.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(embedded, "pretrain_recipe_text", lambda: TINY_PRETRAIN)
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path / "unused"))
    source = tmp_path / "tiny_pretrain.toml"
    source.write_text(TINY_PRETRAIN)
    overrides = list(embedded.build_overrides("tracer-tiny-rn", 0))
    with use_reporter(_Notices()) as reporter:
        run = finetune(recipe_mod.load(source, overrides), output_dir=tmp_path / "runs",
                       reporter=reporter).run_dir
    last = checkpoint.load(rundir.last_path(run))
    expected = embedded.finalize(last["state_dict"], last)

    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", str(threads))  # the script sets it; restored after
    assert script.main(["--from", str(run), "--out", str(tmp_path / "weights"),
                        "--threads", str(threads)]) == 0
    monkeypatch.setattr(embedded, "WEIGHTS_DIR", tmp_path / "weights")
    shipped = embedded.shipped_path("tracer-tiny-rn")
    assert shipped.is_file() and shipped.stat().st_size < 4_000_000
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path / "shipped"))
    notices = _Notices()
    with use_reporter(notices):
        backbone_from_options("openclip", {"arch": "tracer-tiny-rn", "pretrained": "embedded"})
    assert any("unpacked the weights shipped" in n for n in notices.lines)
    assert not any("building" in n for n in notices.lines)
    path = embedded.embedded_path("tracer-tiny-rn")
    assert path.with_suffix(".lock.toml").read_text().count("steps = 2") == 1
    unpacked = torch.load(path, weights_only=True)["state_dict"]
    assert unpacked.keys() == expected.keys()
    for key in expected:
        assert torch.equal(unpacked[key], expected[key]), key

    # A run of another recipe or seed is refused: it is not this build.
    assert script.main(["--from", str(run), "--seed", "1", "--out",
                        str(tmp_path / "other")]) == 2

    # A damaged file is refused, naming it, before anything is cached.
    shipped.write_bytes(shipped.read_bytes()[:-1] + b"\0")
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path / "damaged"))
    with pytest.raises(UsageError, match="damaged"):
        backbone_from_options("openclip", {"arch": "tracer-tiny-rn", "pretrained": "embedded"})
    assert not embedded.embedded_path("tracer-tiny-rn").exists()
    shipped.with_name(shipped.name + ".sha256").unlink()
    with pytest.raises(UsageError, match="come without .*sha256"):
        backbone_from_options("openclip", {"arch": "tracer-tiny-rn", "pretrained": "embedded"})


def test_a_build_keeps_its_finalized_weights(tmp_path, monkeypatch):
    """Without shipped weights the engine trains, then keeps ``finalize``'s output."""
    calls = []

    def finalize(state, last):
        calls.append(sorted(last))
        return embedded.unpack(embedded.pack(state, torch.ones(len(state[embedded.TOKEN_KEY]),
                                                               dtype=torch.bool)))

    monkeypatch.setattr(embedded, "finalize", finalize)
    monkeypatch.setattr(embedded, "pretrain_recipe_text", lambda: TINY_PRETRAIN)
    monkeypatch.setattr(embedded, "WEIGHTS_DIR", tmp_path / "none")
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path / "cache"))
    with use_reporter(_Notices()):
        backbone_from_options("openclip", {"arch": "tracer-tiny-rn", "pretrained": "embedded"})
    assert len(calls) == 1 and "optimizer" in calls[0]
    saved = torch.load(embedded.embedded_path("tracer-tiny-rn"), weights_only=True)["state_dict"]
    for value in saved.values():  # float16-rounded, stored as float32
        if value.is_floating_point():
            assert value.dtype == torch.float32 and torch.equal(value, value.half().float())


def test_the_repository_ships_the_three_pretraining_seeds_of_the_current_build():
    """Editing the pretraining recipe, the arch config or BUILD_VERSION changes the digest; the
    shipped files must then be rebuilt (python benchmarks/embedded_weights.py --seed P), or every
    newcomer's first run silently pretrains for minutes (seed 0) and the benchmark for longer
    (seeds 1 and 2). Files of an older build are not left behind in the package."""
    expected = set()
    for seed in (0, 1, 2):
        path = embedded.shipped_path("tracer-tiny-rn", seed)
        assert path.is_file(), (f"{path.name} missing: run python benchmarks/embedded_weights.py "
                                f"--seed {seed}")
        recorded = path.with_name(path.name + ".sha256").read_text().split()[0]
        assert embedded.file_sha256(path) == recorded
        assert path.stat().st_size < 4_000_000
        stem = path.name.removesuffix(".safetensors")
        expected |= {path.name, f"{path.name}.sha256", f"{stem}.lock.toml"}
    present = {p.name for p in embedded.WEIGHTS_DIR.iterdir() if p.name.startswith("tracer-")}
    assert present == expected, f"stale shipped weights: {sorted(present - expected)}"


# --------------------------------------------------------------------------- a damaged cache


def _shipped_cache(tmp_path, monkeypatch) -> Path:
    """The cache file of the shipped tracer-tiny-rn weights, unpacked into a private cache."""
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path / "cache"))
    with use_reporter(_Notices()):
        backbone_from_options("openclip", {"arch": "tracer-tiny-rn", "pretrained": "embedded"})
    return embedded.embedded_path("tracer-tiny-rn")


def _flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_damaged_cache_of_shipped_weights_is_unpacked_again(tmp_path, monkeypatch):
    path = _shipped_cache(tmp_path, monkeypatch)
    good = path.read_bytes()
    _flip_bit(path)
    notices = _Notices()
    with use_reporter(notices):
        backbone = backbone_from_options("openclip", {"arch": "tracer-tiny-rn",
                                                      "pretrained": "embedded"})
    assert any(f"'{path}' is damaged (SHA-256" in n and "unpacking" in n for n in notices.lines)
    assert path.read_bytes() == good  # the same bytes again
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert torch.equal(backbone.model.state_dict()["text_projection"], saved["text_projection"])


def test_a_damaged_cache_of_trained_weights_is_reported_not_used(tmp_path, monkeypatch):
    import pytest

    path = _shipped_cache(tmp_path, monkeypatch)
    monkeypatch.setattr(embedded, "WEIGHTS_DIR", tmp_path / "nothing-shipped")
    _flip_bit(path)
    with pytest.raises(UsageError, match=r"cached weights file '.*' is damaged \(SHA-256 .*; "
                                         r"delete it to build the embedded tiny CLIP"):
        backbone_from_options("openclip", {"arch": "tracer-tiny-rn", "pretrained": "embedded"})


def test_an_unreadable_cache_without_checksum_is_one_clear_error(tmp_path, monkeypatch):
    import pytest

    from tracer_cli.errors import RecipeError

    path = _shipped_cache(tmp_path, monkeypatch)
    path.with_name(path.name + ".sha256").unlink()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(RecipeError) as caught:
        backbone_from_options("openclip", {"arch": "tracer-tiny-rn", "pretrained": "embedded"})
    message = str(caught.value)
    assert f"not a safe/readable weights file: {path} (truncated" in message
    assert "delete it" in message and "miniz" not in message and "\n" not in message
