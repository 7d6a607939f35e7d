import json

import pytest
import torch

from vqcausal.data.export import ExportedPairs, export_pairs
from vqcausal.data.transitions import TransitionConfig, TransitionSampler
from vqcausal.errors import DataError


def test_export_round_trip(tmp_path, toy):
    sampler = TransitionSampler(toy, TransitionConfig(seed=1))
    meta = export_pairs(sampler, tmp_path / "out", {"train": 70, "test": 20}, shard_size=32)
    assert meta["shards"]["train"] == [f"train-0000{i}.safetensors" for i in range(3)]
    train = ExportedPairs(tmp_path / "out", "train")
    test = ExportedPairs(tmp_path / "out", "test")
    assert len(train) == 70 and len(test) == 20
    assert train.space == toy.space
    item = train[torch.arange(5)]
    assert torch.equal(item["x"], toy.render(item["values"]))
    assert torch.equal(item["x_next"], toy.render(item["values_next"]))
    assert not list((tmp_path / "out").glob("*.tmp*"))  # no temporary file left behind


def test_export_refuses_to_clobber_and_reports_bad_folders(tmp_path, toy):
    sampler = TransitionSampler(toy)
    out = tmp_path / "out"
    export_pairs(sampler, out, {"train": 4, "test": 0})
    with pytest.raises(DataError, match="not empty"):
        export_pairs(sampler, out, {"train": 4})
    with pytest.raises(DataError, match="no test pairs"):
        ExportedPairs(out, "test")
    with pytest.raises(DataError, match="not found"):
        ExportedPairs(tmp_path / "elsewhere")
    (out / "train-00000.safetensors").write_bytes(b"not a shard")
    with pytest.raises(DataError, match="unreadable shard"):
        ExportedPairs(out)
    meta = json.loads((out / "meta.json").read_text())
    del meta["shards"]
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="malformed"):
        ExportedPairs(out)
