"""The ``webdataset`` dataset plugin on tar shards written by webdataset's own ShardWriter: the
index (brace patterns, lists, samples in shard order), labels and captions, retrieval captions,
unreadable samples, one-line errors, and the engine's resumable, rank-sliced stream over it."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch

from tests.layouts import png, write_shards
from tracer_cli.engine.data import TrainStream
from tracer_cli.errors import MissingResourceError, RecipeError
from tracer_cli.sdk.host import PluginHost
from tracer_cli.sdk.contracts import SkippedItem
from tracer_plugins.datasets import wds
from tracer_plugins.datasets.wds import make_webdataset

NAMES = ["circle", "square", "triangle"]


def _sample(i: int, **fields) -> dict:
    """Sample i: an 8 px PNG whose red channel is i (so an item shows which sample it is)."""
    return {"__key__": f"{i:06d}", "png": png(colour=(i, 0, 0)), **fields}


def _labelled(n: int) -> list[dict]:
    return [_sample(i, cls=i % 3, txt=f"photo {i}") for i in range(n)]


def _make(tmp_path: Path, **spec):
    return make_webdataset({"_path": "data.train", **spec}, "train", None)


@pytest.fixture
def shards(tmp_path) -> Path:
    """Ten labelled, captioned samples in shards of four: train-00000{0..2}.tar."""
    write_shards(tmp_path / "shards", _labelled(10), per_shard=4)
    return tmp_path / "shards"


def _red(item) -> int:
    return round(float(item["image"][0, 0, 0]) * 255)


def test_a_brace_pattern_indexes_every_sample_in_shard_order(shards, tmp_path):
    names = tmp_path / "classnames.txt"
    names.write_text("\n".join(NAMES) + "\n")
    bundle = _make(tmp_path, urls=str(shards / "train-{000000..000002}.tar"),
                   classnames_file=str(names))
    assert len(bundle.dataset) == 10
    assert list(bundle.classnames) == NAMES and bundle.has_captions
    items = [bundle.dataset[i] for i in range(10)]
    assert [_red(item) for item in items] == list(range(10))
    assert [item["label"] for item in items] == [i % 3 for i in range(10)]
    assert [item["caption"] for item in items] == [f"photo {i}" for i in range(10)]
    assert items[0]["image"].shape == (3, 8, 8)
    assert bundle.info["shards"] == 3 and bundle.info["num_samples"] == 10


def test_lists_double_colons_and_split_placeholders_name_shards(shards, tmp_path):
    first, second = (str(shards / f"{{split}}-00000{i}.tar") for i in (0, 2))
    for urls in ([first, second], f"{first}::{second}"):
        bundle = _make(tmp_path, urls=urls)
        assert [_red(bundle.dataset[i]) for i in range(len(bundle.dataset))] == [0, 1, 2, 3, 8, 9]
        assert list(bundle.classnames) == ["0", "1", "2"]  # integer labels name themselves


def test_captions_only_shards_train_on_their_captions(tmp_path):
    write_shards(tmp_path, [_sample(i, txt=f"a dog {i}") for i in range(4)], per_shard=2)
    bundle = _make(tmp_path, urls=str(tmp_path / "train-{000000..000001}.tar"))
    assert bundle.has_captions and list(bundle.classnames) == []
    assert bundle.dataset[3]["caption"] == "a dog 3" and bundle.dataset[3]["label"] == -1


def test_text_labels_and_given_classnames(tmp_path):
    write_shards(tmp_path, [_sample(i, cls=NAMES[i % 3]) for i in range(3)], per_shard=3)
    bundle = _make(tmp_path, urls=str(tmp_path / "train-000000.tar"),
                   classnames=["triangle", "square", "circle"])
    assert not bundle.has_captions
    assert [bundle.dataset[i]["label"] for i in range(3)] == [2, 1, 0]


def test_captions_mode_reads_one_caption_per_line(tmp_path):
    samples = [_sample(0, txt="a red dot\nthe dot, red\n"), _sample(1, txt="nothing")]
    write_shards(tmp_path, samples, per_shard=2)
    bundle = _make(tmp_path, urls=str(tmp_path / "train-000000.tar"), mode="captions")
    item = bundle.dataset[0]
    assert item["captions"] == ["a red dot", "the dot, red"] and item["image_id"] == 0
    assert bundle.dataset[1]["captions"] == ["nothing"] and bundle.info["kind"] == "captions"


def test_an_undecodable_image_is_a_skipped_item_named_by_shard_and_key(tmp_path):
    samples = _labelled(2)
    samples[1]["png"] = b"not a png"
    shard = write_shards(tmp_path, samples, per_shard=2)[0]
    bundle = _make(tmp_path, urls=str(shard))
    bad = bundle.dataset[1]
    assert isinstance(bad, SkippedItem) and bad.source == f"{shard}:000001"
    assert _red(bundle.dataset[0]) == 0


@pytest.mark.parametrize("spec, error, message", [
    ({}, RecipeError, "'data.train.urls': is required"),
    ({"urls": "https://host/train-{0..1}.tar"}, RecipeError, "is not a local file"),
    ({"urls": "pipe:aws s3 cp s3://b/x.tar -"}, RecipeError, "is not a local file"),
    ({"urls": "{dir}/nope-{000000..000001}.tar"}, MissingResourceError,
     r"2 of 2 shard\(s\) named by data.train.urls do not exist"),
    ({"urls": "{dir}/train-000000.tar", "labelkey": "cls"}, RecipeError,
     "'data.train.labelkey': unknown key"),
    ({"urls": "{dir}/train-000000.tar", "classnames": NAMES, "classnames_file": "x.txt"},
     RecipeError, "set either 'classnames' or 'classnames_file'"),
    ({"urls": "{dir}/train-000000.tar", "classnames_file": "{dir}/none.txt"}, RecipeError,
     "'data.train.classnames_file': .*none.txt does not exist"),
    ({"urls": "{dir}/train-000000.tar", "classnames": ["a", "b"]}, RecipeError,
     "'data.train.classnames': lists 2 names but webdataset has label 2"),
    ({"urls": "{dir}/train-000000.tar", "mode": "captions", "templates": ["{}"]}, RecipeError,
     "'data.train.templates': is not used with mode"),
])
def test_bad_options_are_one_error_naming_the_key(shards, tmp_path, spec, error, message):
    spec = {k: v.replace("{dir}", str(shards)) if isinstance(v, str) else v
            for k, v in spec.items()}
    with pytest.raises(error, match=message):
        _make(tmp_path, **spec)


def test_samples_missing_a_field_or_an_image_are_errors(tmp_path):
    samples = _labelled(3)
    del samples[1]["cls"]
    write_shards(tmp_path / "a", samples, per_shard=3)
    with pytest.raises(MissingResourceError, match=r"1 of 3 samples have no \.cls.*:000001"):
        _make(tmp_path, urls=str(tmp_path / "a" / "train-000000.tar"))
    write_shards(tmp_path / "b", [{"__key__": "x", "txt": "no image"}], per_shard=1)
    with pytest.raises(MissingResourceError, match="sample 'x' has no image.*it has txt"):
        _make(tmp_path, urls=str(tmp_path / "b" / "train-000000.tar"))
    write_shards(tmp_path / "d", [_sample(0, txt=b"caf\xe9")], per_shard=1)
    with pytest.raises(MissingResourceError, match=r"000000.txt is not UTF-8 text"):
        _make(tmp_path, urls=str(tmp_path / "d" / "train-000000.tar"))
    write_shards(tmp_path / "c", [_sample(0, json=b"{}")], per_shard=1)
    with pytest.raises(MissingResourceError, match=r"neither \.cls \(label_key\) nor \.txt"):
        _make(tmp_path, urls=str(tmp_path / "c" / "train-000000.tar"))


def test_a_file_that_is_not_a_plain_tar_is_named(tmp_path):
    shard = write_shards(tmp_path, _labelled(2), per_shard=2)[0]
    gz = tmp_path / "train.tar.gz"
    with tarfile.open(gz, "w:gz") as out, tarfile.open(shard) as tar:
        for info in tar:
            out.addfile(info, tar.extractfile(info))
    with pytest.raises(MissingResourceError, match=f"cannot read shard {gz}.*uncompressed"):
        _make(tmp_path, urls=str(gz))


def _take(stream: TrainStream, n: int) -> list:
    batches = iter(stream)
    return [next(batches)[0] for _ in range(n)]


def _stream(shards: Path, tmp_path: Path, **kwargs) -> TrainStream:
    """A stream of batches of 4 over a freshly built index of the ten samples."""
    bundle = _make(tmp_path, urls=str(shards / "train-{000000..000002}.tar"))
    return TrainStream(bundle.dataset, 4, seed=5, **kwargs)


def test_a_resumed_stream_continues_with_the_batches_of_an_uninterrupted_one(shards, tmp_path):
    reference = _take(_stream(shards, tmp_path), 7)  # 2 batches an epoch: crosses 3 epochs
    first = _stream(shards, tmp_path)
    _take(first, 3)
    resumed = _stream(shards, tmp_path)  # a new process: the shards indexed again
    resumed.load_state_dict(first.state_dict())
    for expected, batch in zip(reference[3:], _take(resumed, 4)):
        assert batch["label"].tolist() == expected["label"].tolist()
        assert torch.equal(batch["image"], expected["image"])
    # Shuffled: the first epoch is not the shard order.
    assert [_red_of(b) for b in reference[:2]] != [[0, 1, 2, 3], [4, 5, 6, 7]]


def _red_of(batch) -> list[int]:
    return [round(float(v) * 255) for v in batch["image"][:, 0, 0, 0]]


def test_each_rank_reads_its_own_samples_of_every_global_batch(shards, tmp_path):
    single = _take(_stream(shards, tmp_path), 4)
    ranks = [_take(_stream(shards, tmp_path, rank=r, world_size=2), 4) for r in (0, 1)]
    for whole, first, second in zip(single, *ranks):
        assert not set(_red_of(first)) & set(_red_of(second))
        assert _red_of(whole) == _red_of(first) + _red_of(second)


def test_registered_through_the_hook():
    host = PluginHost(load_entry_points=False, plugins=(wds,))
    assert host.datasets.names() == ["webdataset"]
    assert host.datasets.get("webdataset").factory is make_webdataset
