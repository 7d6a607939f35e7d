"""Reconstruction and retrieval metrics on hand-computed cases."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vqcausal.eval.metrics import PSNR_CAP_DB, psnr, retrieval_report, ssim

NAMES = ["a+", "a-", "b+", "b-"]


def one_hot_scores(pred: list[int], num_actions: int = 4) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(pred), num_actions).float()


def test_psnr_cap_for_identical_images() -> None:
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(psnr(x, x), torch.full((3,), PSNR_CAP_DB))
    assert PSNR_CAP_DB == 100.0
    assert psnr(x, (x + 0.1).clamp(0, 1)).max() < 40


def test_ssim_identical_and_noise() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=gen)
    # smooth images with structure, so noise really destroys it
    ramp = torch.linspace(0, 1, 32)
    image = (ramp[None, :] * ramp[:, None]).expand(2, 3, 32, 32).contiguous()
    same = ssim(image, image)
    assert same.shape == (2,)
    assert torch.allclose(same, torch.ones(2), atol=1e-5)
    assert (ssim(image, x) < 0.5).all()
    assert ssim(image[:, 0], image[:, 0]).shape == (2,)  # (B, H, W) works too


def test_retrieval_report_hand_computed() -> None:
    # true:  a+ a+ a- a- b+ b+ b+ b-   (actions 0 0 1 1 2 2 2 3)
    # pred:  a+ a- a- b+ b+ b+ a+ b-
    target = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])
    pred = [0, 1, 1, 2, 2, 2, 0, 3]
    scores = one_hot_scores(pred)
    # second choice of each sample, so top-2/top-3 are known
    second = [1, 0, 3, 1, 3, 0, 2, 2]
    scores[torch.arange(8), torch.tensor(second)] = 0.5
    report = retrieval_report(scores, target, NAMES, top_k=(1, 2, 10))

    assert report["confusion"] == [
        [1, 1, 0, 0],
        [0, 1, 1, 0],
        [1, 0, 2, 0],
        [0, 0, 0, 1],
    ]
    assert report["accuracy"] == pytest.approx(5 / 8)
    # per action: 1/2, 1/2, 2/3, 1/1
    assert report["per_action"] == pytest.approx({"a+": 0.5, "a-": 0.5, "b+": 2 / 3, "b-": 1.0})
    assert report["balanced_accuracy"] == pytest.approx((0.5 + 0.5 + 2 / 3 + 1.0) / 4)
    assert report["worst_action_accuracy"] == pytest.approx(0.5)
    # right factor either way: all but sample 3 (a- -> b+) and sample 6 (b+ -> a+)
    assert report["undirected_accuracy"] == pytest.approx(6 / 8)
    # top-2 also hits samples 1 (second a+), 3 (second a-) and 6 (second b+)
    assert report["top_k"] == pytest.approx({"1": 5 / 8, "2": 1.0, "10": 1.0})
    json.dumps(report)


def test_retrieval_report_absent_action_is_none() -> None:
    target = torch.tensor([0, 1, 1])
    report = retrieval_report(one_hot_scores([0, 1, 0]), target, NAMES)
    assert report["per_action"]["b+"] is None and report["per_action"]["b-"] is None
    assert report["balanced_accuracy"] == pytest.approx(0.75)
    assert set(report["top_k"]) == {"1", "3"}
    assert report["confusion"][2] == [0, 0, 0, 0]
    assert not any(isinstance(v, float) and math.isnan(v) for v in report["per_action"].values())
    json.dumps(report, allow_nan=False)


def test_retrieval_report_checks_names() -> None:
    with pytest.raises(ValueError):
        retrieval_report(one_hot_scores([0]), torch.tensor([0]), NAMES[:3])
